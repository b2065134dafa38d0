"""Regular expressions written in flow documents: the ``matches`` operator of criteria and the
``regex_replace`` action of update_contact rows.

They run on RE2, whose matching time grows linearly with the text whatever the pattern, so no
pattern can hold a worker (or a participant's workflow task, where form-data splits evaluate
criteria) for seconds; and RE2's answer depends only on the pattern and the text, which keeps
workflow code deterministic (a time limit would not). RE2 takes Python's syntax except what
needs backtracking: backreferences, look-ahead and look-behind, possessive and atomic groups.
A pattern using those is refused by validation with the reason; at run time it never matches
and a row using it fails.

Python's ``\\w``, ``\\d`` and ``\\s`` know every script (``\\w`` matches "Å"); RE2's know ASCII
only, so they are rewritten to the Unicode classes Python means. ``\\b`` stays RE2's: a word
boundary between ASCII letters, digits and ``_`` and anything else.

Texts are capped: a ``matches`` condition searches the first ``MAX_TEXT_LENGTH`` characters, and
a regex_replace row refuses a longer value (or a result that would be longer).
"""

from __future__ import annotations

import functools
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass

import re2

MAX_PATTERN_LENGTH = 1_000
MAX_TEXT_LENGTH = 10_000

# What Python's shorthand classes match in a text (str patterns), as RE2 class contents.
_WORD = r"\p{L}\p{N}_"
_DIGIT = r"\p{Nd}"
_SPACE = (
    r"\t\n\x{0B}\f\r\x{1C}-\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}"
    r"\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
)
_OUTSIDE_CLASS = {
    "w": f"[{_WORD}]",
    "W": f"[^{_WORD}]",
    "d": _DIGIT,
    "D": r"\P{Nd}",
    "s": f"[{_SPACE}]",
    "S": f"[^{_SPACE}]",
    "Z": r"\z",  # Python's end of text; RE2 spells it \z
}
_INSIDE_CLASS = {"w": _WORD, "d": _DIGIT, "D": r"\P{Nd}", "s": _SPACE}

# RE2's own words for what it cannot take, and what they mean to someone who wrote Python.
_UNSUPPORTED = (
    ("(?=", "look-ahead (?=…) is not supported"),
    ("(?!", "look-ahead (?!…) is not supported"),
    ("(?<=", "look-behind (?<=…) is not supported"),
    ("(?<!", "look-behind (?<!…) is not supported"),
    ("(?P=", "backreferences are not supported"),
    ("(?>", "atomic groups are not supported"),
    ("(?x", "verbose mode (?x) is not supported"),
    ("(?#", "comments (?#…) are not supported"),
)


class PatternError(ValueError):
    """A pattern RE2 cannot take, a bad replacement, or a text over the length cap."""


def _escape_char(code: str, escape: str) -> str:
    if not all(c in string.hexdigits for c in code) or int(code, 16) > sys.maxunicode:
        raise PatternError(f"bad escape {escape}")
    return rf"\x{{{code}}}"


def translated(pattern: str) -> str:
    """The pattern in RE2's syntax, meaning what Python's ``re`` means by it."""
    out: list[str] = []
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            escape = pattern[i + 1]
            i += 2
            if escape in "uU":
                width = 4 if escape == "u" else 8
                code = pattern[i : i + width]
                if len(code) < width:
                    raise PatternError(f"incomplete escape \\{escape}{code}")
                out.append(_escape_char(code, f"\\{escape}{code}"))
                i += width
            elif in_class and escape in "WS":
                raise PatternError(
                    f"\\{escape} inside […] is not supported: write (?:[…]|\\{escape}) instead"
                )
            else:
                table = _INSIDE_CLASS if in_class else _OUTSIDE_CLASS
                out.append(table.get(escape, "\\" + escape))
            continue
        if in_class:
            if char == "]":
                in_class = False
            elif pattern.startswith("[:", i):  # a POSIX class such as [:alpha:] inside […]
                end = pattern.find(":]", i + 2)
                if end != -1:
                    out.append(pattern[i : end + 2])
                    i = end + 2
                    continue
            out.append(char)
            i += 1
            continue
        out.append(char)
        i += 1
        if char == "[":
            in_class = True
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):  # a ] first in a class is a literal
                out.append("]")
                i += 1
    return "".join(out)


def _reason(pattern: str, message: str) -> str:
    for marker, reason in _UNSUPPORTED:
        if marker in pattern:
            return reason
    if "invalid escape sequence: \\" in message and message[-1:].isdigit():
        return "backreferences are not supported"
    return message


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern: search a text, or replace in it as ``re.sub`` does."""

    source: str
    ignore_case: bool
    _regexp: re2._Regexp

    @property
    def groups(self) -> int:
        return int(self._regexp.groups)

    def search(self, text: str) -> bool:
        """Whether the pattern occurs in the text (its first ``MAX_TEXT_LENGTH`` characters)."""
        return self._regexp.search(text[:MAX_TEXT_LENGTH]) is not None

    def sub(self, replacement: str, text: str) -> str:
        """Every match replaced by ``replacement`` (``\\1`` and ``\\g<name>`` for groups)."""
        if len(text) > MAX_TEXT_LENGTH:
            raise PatternError(
                f"a text of {len(text):,} characters is longer than regular expressions read "
                f"({MAX_TEXT_LENGTH:,})"
            )
        expand = self._template(replacement)
        budget = [MAX_TEXT_LENGTH - len(text)]

        def replace(match: re2._Match) -> str:
            piece = expand(match)
            budget[0] -= len(piece) - (match.end() - match.start())
            if budget[0] < 0:
                raise PatternError(
                    f"the replaced text would be longer than {MAX_TEXT_LENGTH:,} characters"
                )
            return piece

        return str(self._regexp.sub(replace, text))

    def check_replacement(self, replacement: str) -> None:
        """Raise PatternError if ``replacement`` is not one ``sub`` can use."""
        self._template(replacement)

    def _template(self, replacement: str) -> Callable[[re2._Match], str]:
        pieces = _template_pieces(replacement, self.groups, dict(self._regexp.groupindex))

        def expand(match: re2._Match) -> str:
            return "".join(
                piece if isinstance(piece, str) else (match.group(piece) or "") for piece in pieces
            )

        return expand


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str, *, ignore_case: bool = False) -> Pattern:
    """The pattern compiled by RE2; PatternError says why one cannot be."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(
            f"a regular expression has at most {MAX_PATTERN_LENGTH:,} characters "
            f"(this one has {len(pattern):,})"
        )
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False
    try:
        regexp = re2.compile(translated(pattern), options)
    except re2.error as error:
        message = error.args[0] if error.args else ""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise PatternError(_reason(pattern, str(message))) from None
    return Pattern(pattern, ignore_case, regexp)


# --- replacement templates, read as re.sub reads them ------------------------------------------

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_OCTAL = "01234567"


def _template_pieces(template: str, groups: int, names: dict[str, int]) -> list[str | int]:
    """Literal text and group numbers, with Python's rules for escapes and group references."""
    pieces: list[str | int] = []
    literal: list[str] = []

    def group(number: int) -> None:
        if number > groups:
            raise PatternError(f"invalid group reference {number}")
        pieces.append("".join(literal))
        literal.clear()
        pieces.append(number)

    i, n = 0, len(template)
    while i < n:
        char = template[i]
        i += 1
        if char != "\\":
            literal.append(char)
            continue
        if i == n:
            raise PatternError("bad escape (end of replacement)")
        escape = template[i]
        i += 1
        if escape == "g":
            if not template.startswith("<", i):
                raise PatternError("missing < after \\g")
            end = template.find(">", i + 1)
            if end == -1:
                raise PatternError("missing >, unterminated group name")
            name = template[i + 1 : end]
            i = end + 1
            if not name:
                raise PatternError("missing group name")
            if name.isidentifier():
                if name not in names:
                    raise PatternError(f"unknown group name {name!r}")
                group(names[name])
            elif name.isascii() and name.isdigit():
                group(int(name))
            else:
                raise PatternError(f"bad character in group name {name!r}")
        elif escape == "0":
            digits = "0"
            while len(digits) < 3 and i < n and template[i] in _OCTAL:
                digits += template[i]
                i += 1
            literal.append(chr(int(digits, 8)))
        elif escape.isascii() and escape.isdigit():
            digits = escape
            if i < n and template[i].isascii() and template[i].isdigit():
                digits += template[i]
                i += 1
                if escape in _OCTAL and digits[1] in _OCTAL and i < n and template[i] in _OCTAL:
                    digits += template[i]
                    i += 1
                    if int(digits, 8) > 0o377:
                        raise PatternError(f"octal escape \\{digits} is beyond 0o377")
                    literal.append(chr(int(digits, 8)))
                    continue
            group(int(digits))
        elif escape in _ESCAPES:
            literal.append(_ESCAPES[escape])
        elif escape == "\\":
            literal.append("\\")
        elif escape.isascii() and escape.isalpha():
            raise PatternError(f"bad escape \\{escape}")
        else:
            literal.append("\\" + escape)
    pieces.append("".join(literal))
    return [piece for piece in pieces if piece != ""]
