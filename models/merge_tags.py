"""The merge tags a flow's texts may use (spec §4): ``[[customer.firstname]]`` and friends.

The catalogue maps each tag to the contact fact it prints, so validation can reject unknown tags
and rendering can look values up by the same names.
"""

from __future__ import annotations

import re
from functools import lru_cache

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TAG_PATTERN = re.compile(r"\[\[\s*([^\[\]]*?)\s*\]\]")

# tag -> fact name in models.crm.contact_facts (None: produced by the sender, e.g. links)
MERGE_TAGS: dict[str, str | None] = {
    "customer.firstname": "contact.first_name",
    "customer.lastname": "contact.last_name",
    "customer.fullname": "contact.full_name",
    "customer.email": "contact.email",
    "customer.cellphone": "contact.mobile",
    "customer.title": "contact.title",
    "customer.department": "contact.department",
    "customer.position": "contact.position",
    "customer.category": "contact.category",
    "company.name": "company.name",
    "company.category": "company.category",
    "company.business": "company.business",
    "company.country": "company.country",
    "company.phone": "company.phone",
    "company.email": "company.email",
    "company.website": "company.website",
    "ourContact.name": "contact.our_contact.name",
    "ourContact.email": "contact.our_contact.email",
    "ourContact.cellphone": "contact.our_contact.mobile",
    "ourServiceContact.name": "contact.our_service_contact.name",
    "ourServiceContact.email": "contact.our_service_contact.email",
    "link.subscription": None,
    "link.unsubscribe": None,
    "link.webversion": None,
}

_CONTROL = re.compile(r"^(IF:.+|ELSE|ENDIF)$")


def tags_in(text: str) -> list[str]:
    return TAG_PATTERN.findall(text)


def unknown_tags(text: str) -> list[str]:
    """Tags that are neither in the catalogue nor conditionals over a known tag."""
    unknown: list[str] = []
    for tag in tags_in(text):
        if tag in MERGE_TAGS:
            continue
        if _CONTROL.match(tag):
            condition = tag.removeprefix("IF:").strip()
            if tag.startswith("IF:") and condition.lstrip("!") not in MERGE_TAGS:
                unknown.append(tag)
            continue
        unknown.append(tag)
    return unknown


# --- Rendering -----------------------------------------------------------------------------------
#
# Texts are compiled by Jinja2's immutable sandbox with `[[ ]]` as the variable delimiters. Our
# own syntax is translated to Jinja before compiling: a known tag becomes a lookup in the `tag`
# mapping, `[[IF:x]]`/`[[ELSE]]`/`[[ENDIF]]` become `if`/`else`/`endif` blocks, and every piece of
# text between tags is wrapped in a raw block so that `{{…}}`, `{%…%}` or a stray `[[` in it is
# printed as written. Values are data handed to the sandbox, so they are never evaluated.

_BLOCK_START, _BLOCK_END = "[[%", "%]]"


class MergeTagError(ValueError):
    """A text that cannot be rendered: unknown tag, unbalanced conditional, missing link."""


def _finalize(value: object) -> object:
    # Jinja prints None as "None"; a missing fact should leave a gap, not a word.
    return "" if value is None else value


def _environment(html: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string=_BLOCK_START,
        block_end_string=_BLOCK_END,
        # Comments and line statements are not part of our syntax; make them unreachable.
        comment_start_string="[[#",
        comment_end_string="#]]",
        line_statement_prefix=None,
        line_comment_prefix=None,
        undefined=StrictUndefined,
        autoescape=html,
        finalize=_finalize,
        keep_trailing_newline=True,
    )


_ENVIRONMENTS = {False: _environment(False), True: _environment(True)}


def _raw(text: str) -> str:
    # A raw block cannot be closed from inside: its end marker has no brackets, so TAG_PATTERN
    # would have matched it as a (rejected) tag instead of leaving it in the text.
    if not text:
        return ""
    return f"{_BLOCK_START} raw {_BLOCK_END}{text}{_BLOCK_START} endraw {_BLOCK_END}"


def _lookup(tag: str) -> str:
    if tag not in MERGE_TAGS:
        raise MergeTagError(f"unknown merge tag [[{tag}]]")
    return f'tag["{tag}"]'  # safe to inline: tag is a catalogue key, not user text


def _to_jinja(template: str) -> str:
    parts: list[str] = []
    position = 0
    for match in TAG_PATTERN.finditer(template):
        parts.append(_raw(template[position : match.start()]))
        position = match.end()
        tag = match.group(1)
        if tag.startswith("IF:"):
            condition = tag.removeprefix("IF:").strip()
            negate = condition.startswith("!")
            test = _lookup(condition.removeprefix("!").strip())
            parts.append(f"{_BLOCK_START} if {'not ' if negate else ''}{test} {_BLOCK_END}")
        elif tag == "ELSE":
            parts.append(f"{_BLOCK_START} else {_BLOCK_END}")
        elif tag == "ENDIF":
            parts.append(f"{_BLOCK_START} endif {_BLOCK_END}")
        else:
            parts.append(f"[[ {_lookup(tag)} ]]")
    parts.append(_raw(template[position:]))
    return "".join(parts)


@lru_cache(maxsize=1024)
def _compile(template: str, html: bool) -> Template:
    try:
        return _ENVIRONMENTS[html].from_string(_to_jinja(template))
    except TemplateSyntaxError as error:
        raise MergeTagError(f"malformed merge tags: {error.message}") from error


MAX_CONDITIONAL_DEPTH = 20


def template_problems(text: str) -> list[str]:
    """Why a text cannot be rendered, besides unknown tags (``unknown_tags``): conditionals that
    do not balance, said in the text's own terms, or whatever else stops it compiling."""
    problems: list[str] = []
    open_ifs: list[tuple[str, bool]] = []  # the [[IF:…]] still open, and whether it had [[ELSE]]
    for tag in tags_in(text):
        if tag.startswith("IF:"):
            open_ifs.append((tag, False))
            if len(open_ifs) == MAX_CONDITIONAL_DEPTH + 1:
                problems.append(f"conditionals nest deeper than {MAX_CONDITIONAL_DEPTH}")
        elif tag == "ELSE":
            if not open_ifs:
                problems.append("[[ELSE]] outside an [[IF:…]]")
            elif open_ifs[-1][1]:
                problems.append(f"a second [[ELSE]] in [[{open_ifs[-1][0]}]]")
            else:
                open_ifs[-1] = (open_ifs[-1][0], True)
        elif tag == "ENDIF":
            if open_ifs:
                open_ifs.pop()
            else:
                problems.append("[[ENDIF]] without an [[IF:…]]")
    problems += [f"[[{tag}]] is not closed by [[ENDIF]]" for tag, _ in open_ifs]
    if not problems and not unknown_tags(text):
        try:
            # Not through the render cache: validation reads texts that may never be sent.
            _ENVIRONMENTS[False].from_string(_to_jinja(text))
        except (TemplateSyntaxError, MergeTagError, RecursionError) as error:
            problems.append(f"malformed merge tags: {error}")
    return problems


def _tag_values(facts: dict[str, object], links: dict[str, str] | None) -> dict[str, object]:
    values: dict[str, object] = {}
    for tag, fact in MERGE_TAGS.items():
        if fact is not None:
            values[tag] = facts.get(fact)  # absent (e.g. no our contact) prints as empty
        elif links is not None and tag.removeprefix("link.") in links:
            values[tag] = links[tag.removeprefix("link.")]
        else:  # using it raises: a mail must not go out with a dead unsubscribe link
            values[tag] = StrictUndefined(hint=f"no link for [[{tag}]]")
    return values


def render(
    template: str,
    facts: dict[str, object],
    *,
    html: bool = False,
    links: dict[str, str] | None = None,
) -> str:
    """Render a text's merge tags from `facts` (as from models.crm.contact_facts).

    `links` maps link names to URLs: {"unsubscribe": "https://…"} fills [[link.unsubscribe]].
    With `html=True` values are HTML-escaped. Raises MergeTagError (a ValueError) for an unknown
    tag, an unbalanced conditional or a link tag without a link.
    """
    compiled = _compile(template, html)
    try:
        return compiled.render(tag=_tag_values(facts, links))
    except UndefinedError as error:
        raise MergeTagError(f"merge tag without a value: {error.message}") from error


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` fit for a header: line breaks, tabs and other control characters become spaces,
    and runs of spaces one. Every value from contact data that goes into a header (a subject,
    a display name) is cleaned this way, rather than the send refused over it."""
    return " ".join(_CONTROL_CHARACTERS.sub(" ", text).split())


def render_header(
    template: str, facts: dict[str, object], *, links: dict[str, str] | None = None
) -> str:
    """Render a one-line text (a subject). Values are cleaned with ``one_line``; a line break
    that the template itself holds is refused (validation reports it before a flow is saved)."""
    cleaned = {name: one_line(v) if isinstance(v, str) else v for name, v in facts.items()}
    rendered = render(template, cleaned, links=links)
    if "\r" in rendered or "\n" in rendered:
        raise MergeTagError("a rendered header contains a line break")
    return rendered.strip()
