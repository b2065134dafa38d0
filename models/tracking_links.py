"""Tracked links in sent emails (spec §5): signed tokens, and rewriting a message's links.

A token is ``<payload>.<signature>``: the payload is compact JSON in URL-safe base64 and the
signature is HMAC-SHA256 over the token's purpose and the payload, so a click token can never be
replayed as a form token. Every token carries an absolute expiry. The stdlib is enough for this:
the whole scheme is the few lines below, with SHA-256 and the expiry stated rather than defaulted.

Rewriting is pure string work: each ``href`` of an ``<a>``/``<area>`` tag in the HTML and each
bare URL in the text becomes a click URL of the tracking service, which records the click and
redirects to the original. Only links the author wrote are tracked: they are picked out of the
template before its merge tags are filled in (``authored_links``), so a URL that arrives with a
contact's data is never signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

from models.settings import Settings, get_settings

T = TypeVar("T")

DEFAULT_TOKEN_DAYS = 365  # links in an email keep working for a year
# A token is a few hundred characters; anything far longer is not one of ours.
MAX_TOKEN_LENGTH = 4_096


class Purpose(StrEnum):
    click = "c"
    open = "o"
    form = "f"


class BadToken(ValueError):
    """A token that was not made with our secret, was altered, or is not of the expected kind."""


class ExpiredToken(BadToken):
    """An authentic token past its expiry."""


@dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    contact_id: int
    flow_id: str | None = None
    step_id: str | None = None
    delivery_key: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class TrackingLinks:
    """Where the tracking service is reached from outside and the secret its tokens carry."""

    base_url: str
    secret: str
    token_days: int = DEFAULT_TOKEN_DAYS

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("TRACKING_SECRET must be at least 16 characters")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> TrackingLinks | None:
        """None when ``TRACKING_BASE_URL`` is unset: links are then sent as written."""
        settings = settings or get_settings()
        if not settings.tracking_base_url:
            return None
        if settings.tracking_secret is None:
            raise ValueError("TRACKING_BASE_URL is set but TRACKING_SECRET is not")
        return cls(
            base_url=settings.tracking_base_url.rstrip("/"),
            secret=settings.tracking_secret.get_secret_value(),
            token_days=settings.tracking_token_days,
        )

    # --- tokens --------------------------------------------------------------------------------

    def sign(self, purpose: Purpose, claims: Claims, *, expires_at: float | None = None) -> str:
        body: dict[str, Any] = {"c": claims.contact_id}
        for key, value in (
            ("f", claims.flow_id),
            ("s", claims.step_id),
            ("d", claims.delivery_key),
            ("u", claims.url),
        ):
            if value is not None:
                body[key] = value
        body["x"] = int(expires_at if expires_at is not None else time.time() + self._lifetime)
        payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def verify(self, purpose: Purpose, token: str, *, now: float | None = None) -> Claims:
        """The token's claims; raises ``BadToken`` (or ``ExpiredToken``) otherwise."""
        # Ours are URL-safe base64 (ASCII); anything else, say a percent-encoded "é", is refused
        # before hashing and comparing, which want bytes.
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise BadToken("not a token")
        payload, dot, signature = token.partition(".")
        expected = self._mac(purpose, payload).encode("ascii")
        if not dot or not hmac.compare_digest(signature.encode("ascii"), expected):
            raise BadToken("bad signature")
        try:
            body = json.loads(_unb64(payload))
            claims = Claims(
                contact_id=_typed(body["c"], int),
                flow_id=_optional(body.get("f"), str),
                step_id=_optional(body.get("s"), str),
                delivery_key=_optional(body.get("d"), str),
                url=_optional(body.get("u"), str),
            )
            expires_at = _typed(body["x"], int)
        except (ValueError, KeyError, TypeError, binascii.Error) as error:
            # Only a holder of the secret can get here: a bug, not an attack, but still no.
            raise BadToken(f"malformed payload: {error}") from None
        if (time.time() if now is None else now) >= expires_at:
            raise ExpiredToken("expired")
        return claims

    @property
    def _lifetime(self) -> float:
        return self.token_days * 86_400

    def _mac(self, purpose: Purpose, payload: str) -> str:
        digest = hmac.new(
            self.secret.encode(), f"{purpose.value}.{payload}".encode(), hashlib.sha256
        ).digest()
        return _b64(digest)

    # --- URLs ----------------------------------------------------------------------------------

    def click_url(self, claims: Claims) -> str:
        return f"{self.base_url}/t/c/{self.sign(Purpose.click, claims)}"

    def open_url(self, claims: Claims) -> str:
        return f"{self.base_url}/t/o/{self.sign(Purpose.open, claims)}.gif"

    def form_token(self, contact_id: int) -> str:
        """The contact token a form carries (hidden field ``_contact`` or query ``c``)."""
        return self.sign(Purpose.form, Claims(contact_id=contact_id))


# --- secrets ---------------------------------------------------------------------------------

MIN_SECRET_LENGTH = 32
# The secret's characters, counted as if drawn at random with their observed frequencies: a
# crude estimate, but it tells a generated secret (32 hex digits: about 90 bits at the least)
# from a word padded with one repeated letter (about 60).
MIN_SECRET_BITS = 80


def check_secret(name: str, value: str) -> str:
    """``value`` if it is long and varied enough to sign or guard with; ``ValueError`` saying
    what is wrong otherwise. Anyone holding the tracking secret mints redirects on our domain."""
    advice = f"set {name} to at least {MIN_SECRET_LENGTH} random characters, e.g. the output of "
    advice += "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"{name} is too short ({len(value)} characters): {advice}")
    counts = Counter(value).values()
    bits = -sum(n * math.log2(n / len(value)) for n in counts)
    repeated = value in (value + value)[1:-1]  # a shorter string over and over
    if bits < MIN_SECRET_BITS or repeated:
        raise ValueError(f"{name} is too easy to guess: {advice}")
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(value: object, kind: type[T]) -> T | None:
    return None if value is None else _typed(value, kind)


# --- rewriting a message -----------------------------------------------------------------------

TRACKED_SCHEMES = ("http://", "https://")
_LINK_TAG = re.compile(r"<(?:a|area)\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
# In a template a conditional may follow a URL directly: "…/offer[[ENDIF]]" ends before it.
_CONDITIONAL = r"\[\[\s*(?:IF:|ELSE\s*\]\]|ENDIF\s*\]\])"
_BARE_URL = re.compile(rf"https?://(?:(?!{_CONDITIONAL})[^\s<>\"'])+", re.IGNORECASE)
_TRAILING = ".,;:!?"  # sentence punctuation after a URL is not part of it


def _tracked(url: str, untracked: Collection[str]) -> bool:
    return url.lower().startswith(TRACKED_SCHEMES) and url not in untracked


def rewrite_html(
    body: str, click_url: Callable[[str], str | None], *, untracked: Collection[str] = ()
) -> str:
    """Every http(s) ``href`` of a link tag, replaced by ``click_url(original)`` (None: kept).

    Values are HTML-unescaped before they are handed over and the result escaped again, so
    ``?a=1&amp;b=2`` is tracked as ``?a=1&b=2``. Links in ``untracked`` (unsubscribe, the
    subscription centre) stay as they are: a click there is not engagement.
    """

    def attribute(match: re.Match[str]) -> str:
        raw = next(group for group in match.groups()[1:] if group is not None)
        url = html.unescape(raw).strip()
        replacement = click_url(url) if _tracked(url, untracked) else None
        if replacement is None:
            return match.group(0)
        return f'{match.group(1)}"{html.escape(replacement, quote=True)}"'

    return _LINK_TAG.sub(lambda tag: _HREF.sub(attribute, tag.group(0), count=1), body)


def rewrite_text(
    body: str, click_url: Callable[[str], str | None], *, untracked: Collection[str] = ()
) -> str:
    """Every bare http(s) URL in a plain-text body, replaced by ``click_url(original)`` (None:
    kept)."""

    def url(match: re.Match[str]) -> str:
        found = match.group(0)
        kept = found.rstrip(_TRAILING)
        # A closing parenthesis belongs to the URL only if the URL opened one.
        while kept.endswith(")") and kept.count("(") < kept.count(")"):
            kept = kept[:-1]
        tail = found[len(kept) :]
        replacement = click_url(kept) if _tracked(kept, untracked) else None
        return (kept if replacement is None else replacement) + tail

    return _BARE_URL.sub(url, body)


def with_open_pixel(body: str, pixel_url: str) -> str:
    """The HTML with a one-pixel image that reports the open, placed last in the body."""
    pixel = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px" />'
    )
    end = body.lower().rfind("</body>")
    if end == -1:
        return body + pixel
    return body[:end] + pixel + body[end:]


# --- the links an author wrote -------------------------------------------------------------------
#
# A link is chosen for tracking in the template, before merge tags are filled in: a contact whose
# first name is "https://evil.example/login" must not get a signed redirect there on our domain.
# Each link the author wrote is taken out of the template and a marker put in its place; the rest
# is rendered as usual, and the marker then replaced by the link's click URL, the link's own merge
# tags (a query parameter, a path segment) filled in. A link whose host would come from data
# (a merge tag before its path, a conditional inside it) stays as written, untracked.

_MARKER_KEY = secrets.token_hex(8)  # one per process: no contact data spells a marker


def _marker(index: int) -> str:
    return f"tracked-link-{_MARKER_KEY}-{index}-"


def _origin(url: str) -> tuple[str, str] | None:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "https://[[company.website]]" reads as a broken IPv6 host
        return None
    return parts.scheme.lower(), parts.netloc.lower()


@dataclass(frozen=True)
class AuthoredLinks:
    """A template with the links its author wrote replaced by markers, and those links."""

    template: str
    links: tuple[str, ...]  # as written, merge tags not filled in; a marker's number indexes it

    def filled(
        self,
        rendered: str,
        urls: Sequence[str],
        click_url: Callable[[str], str],
        *,
        html_body: bool,
        untracked: Collection[str] = (),
    ) -> str:
        """The rendered template with each marker replaced: ``urls`` are the links with their
        merge tags filled in, and each goes through ``click_url`` unless filling them in moved
        it to another host (then it is put back untracked, like ``untracked`` ones)."""
        for index, (written, url) in enumerate(zip(self.links, urls, strict=True)):
            same_place = _origin(url) == _origin(written)
            target = click_url(url) if same_place and _tracked(url, untracked) else url
            rendered = rendered.replace(
                _marker(index), html.escape(target, quote=True) if html_body else target
            )
        return rendered


def authored_links(template: str, *, html_body: bool) -> AuthoredLinks:
    """The http(s) links of a template (hrefs of link tags in HTML, bare URLs in text) taken out
    for tracking; see ``AuthoredLinks.filled`` for putting them back once rendered."""
    found: list[str] = []

    def take(url: str) -> str | None:
        origin = _origin(url)
        if origin is None or not origin[1] or "[[" in origin[1] or re.search(_CONDITIONAL, url):
            return None
        found.append(url)
        return _marker(len(found) - 1)

    rewrite = rewrite_html if html_body else rewrite_text
    return AuthoredLinks(template=rewrite(template, take), links=tuple(found))
