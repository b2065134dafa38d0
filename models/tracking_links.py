"""Tracked links in sent emails (spec §5): signed tokens, and rewriting a message's links.

A token is ``<payload>.<signature>``: the payload is compact JSON in URL-safe base64 and the
signature is HMAC-SHA256 over the token's purpose and the payload, so a click token can never be
replayed as a form token. Every token carries an absolute expiry. The stdlib is enough for this:
the whole scheme is the few lines below, with SHA-256 and the expiry stated rather than defaulted.

Rewriting is pure string work on the rendered bodies: each ``href`` of an ``<a>``/``<area>`` tag
in the HTML and each bare URL in the text becomes a click URL of the tracking service, which
records the click and redirects to the original.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from models.settings import Settings, get_settings

T = TypeVar("T")

DEFAULT_TOKEN_DAYS = 365  # links in an email keep working for a year


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
        payload, dot, signature = token.partition(".")
        if not dot or not hmac.compare_digest(signature, self._mac(purpose, payload)):
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
_BARE_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?"  # sentence punctuation after a URL is not part of it


def _tracked(url: str, untracked: Collection[str]) -> bool:
    return url.lower().startswith(TRACKED_SCHEMES) and url not in untracked


def rewrite_html(
    body: str, click_url: Callable[[str], str], *, untracked: Collection[str] = ()
) -> str:
    """Every http(s) ``href`` of a link tag, replaced by ``click_url(original)``.

    Values are HTML-unescaped before they are handed over and the result escaped again, so
    ``?a=1&amp;b=2`` is tracked as ``?a=1&b=2``. Links in ``untracked`` (unsubscribe, the
    subscription centre) stay as they are: a click there is not engagement.
    """

    def attribute(match: re.Match[str]) -> str:
        raw = next(group for group in match.groups()[1:] if group is not None)
        url = html.unescape(raw).strip()
        if not _tracked(url, untracked):
            return match.group(0)
        return f'{match.group(1)}"{html.escape(click_url(url), quote=True)}"'

    return _LINK_TAG.sub(lambda tag: _HREF.sub(attribute, tag.group(0), count=1), body)


def rewrite_text(
    body: str, click_url: Callable[[str], str], *, untracked: Collection[str] = ()
) -> str:
    """Every bare http(s) URL in a plain-text body, replaced by ``click_url(original)``."""

    def url(match: re.Match[str]) -> str:
        found = match.group(0)
        kept = found.rstrip(_TRAILING)
        # A closing parenthesis belongs to the URL only if the URL opened one.
        while kept.endswith(")") and kept.count("(") < kept.count(")"):
            kept = kept[:-1]
        tail = found[len(kept) :]
        return (click_url(kept) if _tracked(kept, untracked) else kept) + tail

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
