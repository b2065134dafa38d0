"""The codec server: Temporal's Web UI and CLI send it a history's encrypted payloads and get them
back decrypted, for an operator who holds its token, and nobody else.

It speaks Temporal's codec server protocol: ``POST …/decode`` and ``POST …/encode`` take
``{"payloads": [...]}`` (Payloads as proto3 JSON) and answer in the same shape, each payload run
through the engine's payload codec (``models.encryption``). The Web UI names the namespace in the
``X-Namespace`` header; the CLI may put it in the path. The keys are the deployment's, the same
for every namespace.

- ``POST /codecs/decode``, ``POST /codecs/{namespace}/decode``; the same for ``encode`` (as the
  protocol asks, only the path's last part counts, wherever the server is mounted below /codecs)
- ``GET /codecs/login``: a form for the token; posting it signs the browser in (a session cookie)
- ``GET /healthz``: liveness

A request is let in with ``Authorization: Bearer <CODEC_SERVER_TOKEN>`` (the CLI's
``--codec-auth``) or with the session cookie, which the Web UI sends when its codec server
setting "Include cross-origin credentials" is on. Anything else gets 401 and nothing decoded.
Browsers may call it from the Web UI's origins only (CORS, ``CODEC_SERVER_ORIGINS``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from models.encryption import Keyring, PayloadEncryption, PayloadKeyError
from models.settings import Settings, get_settings
from worker import payload_keyring

MAX_BODY = 16 * 1024 * 1024  # a page of history's payloads; Temporal allows 2 MB per payload
MAX_LOGIN_BODY = 4096
SESSION_COOKIE = "codec_session"
SESSION_SECONDS = 12 * 3600
_LOGIN_FORM = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Codec server · Marketing flows</title>
<style>
  body {{ font: 15px/1.5 system-ui, sans-serif; background: #f4f5f7; color: #1f2933; margin: 0; }}
  main {{ max-width: 26rem; margin: 4rem auto; background: #fff; padding: 1.5rem 2rem;
         border-radius: 8px; box-shadow: 0 1px 3px rgb(0 0 0 / 0.15); }}
  h1 {{ font-size: 1.2rem; margin: 0 0 0.5rem; }}
  label {{ display: block; margin: 1rem 0 0.3rem; font-weight: 600; }}
  input {{ width: 100%; box-sizing: border-box; padding: 0.5rem; font: inherit;
          border: 1px solid #9aa5b1; border-radius: 4px; }}
  button {{ margin-top: 1rem; padding: 0.5rem 1.2rem; font: inherit; color: #fff;
           background: #2563eb; border: 0; border-radius: 4px; cursor: pointer; }}
</style>
<main>
<h1>Decoded payloads in the Temporal UI</h1>
<p>{message}</p>
<form method="post">
<label for="token">Codec server token</label>
<input id="token" type="password" name="token" autocomplete="off" autofocus>
<button>Sign in</button>
</form>
</main>
</html>
"""


@dataclass(frozen=True)
class CodecServerSettings:
    keyring: Keyring
    token: str
    origins: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8028

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> CodecServerSettings:
        """The payload keys (``PAYLOAD_KEYS``, ``PAYLOAD_KEYS_FILE``), ``CODEC_SERVER_TOKEN``,
        ``CODEC_SERVER_ORIGINS``, ``CODEC_SERVER_HOST`` and ``CODEC_SERVER_PORT``."""
        settings = settings or get_settings()
        keyring = payload_keyring(settings)
        if keyring is None:
            raise ValueError("set PAYLOAD_KEYS: the codec server decrypts with them")
        if settings.codec_server_token is None:
            raise ValueError("set CODEC_SERVER_TOKEN: without it anyone could read the payloads")
        ui = settings.temporal_ui_port
        origins = settings.codec_server_origins or f"http://localhost:{ui},http://127.0.0.1:{ui}"
        return cls(
            keyring=keyring,
            token=settings.codec_server_token.get_secret_value(),
            origins=tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip()),
            host=settings.codec_server_host,
            port=settings.codec_server_port,
        )


class _TooLarge(Exception):
    pass


def create_app(settings: CodecServerSettings) -> Starlette:
    app = Starlette(
        routes=[
            Route("/codecs/login", login, methods=["GET", "POST"]),
            Route("/codecs/{path:path}", codec, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.origins),
                allow_methods=["POST"],
                allow_headers=["Authorization", "Content-Type", "X-Namespace"],
                # The Web UI's "Include cross-origin credentials": the session cookie.
                allow_credentials=True,
            )
        ],
    )
    app.state.codec = PayloadEncryption(settings.keyring)
    app.state.token = settings.token.encode()
    return app


async def codec(request: Request) -> Response:
    """``…/decode`` or ``…/encode``; the namespace, in the path or ``X-Namespace``, changes
    nothing: the keys are the deployment's."""
    action = str(request.path_params["path"]).rstrip("/").rsplit("/", 1)[-1]
    if action not in ("decode", "encode"):
        return JSONResponse({"error": "POST …/decode or …/encode"}, status_code=404)
    return await _apply(request, encrypt=action == "encode")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _apply(request: Request, *, encrypt: bool) -> Response:
    # The token is checked before the body is read: a stranger's request costs nothing.
    if not _authorised(request):
        return JSONResponse(
            {"error": "sign in: a bearer token or the session cookie"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        body = await _body(request, MAX_BODY)
        payloads = json_format.Parse(body, Payloads())
    except _TooLarge:
        return JSONResponse({"error": f"more than {MAX_BODY} bytes"}, status_code=413)
    except json_format.ParseError as error:
        return JSONResponse({"error": f"not a payloads document: {error}"}, status_code=400)
    codec: PayloadEncryption = request.app.state.codec
    try:
        if encrypt:
            done = await codec.encode(payloads.payloads)
        else:
            done = await codec.decode(payloads.payloads)
    except PayloadKeyError as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    answer = json_format.MessageToJson(Payloads(payloads=done))
    return Response(answer, media_type="application/json")


async def login(request: Request) -> Response:
    if request.method == "GET":
        return HTMLResponse(_LOGIN_FORM.format(message="Sign in to see decoded payloads."))
    try:
        body = await _body(request, MAX_LOGIN_BODY)
    except _TooLarge:
        return HTMLResponse("too large", status_code=413)
    given = _form_field(body, "token")
    token: bytes = request.app.state.token
    if not hmac.compare_digest(given.encode(), token):
        page = _LOGIN_FORM.format(message="That is not the token.")
        return HTMLResponse(page, status_code=401)
    response = HTMLResponse(
        _LOGIN_FORM.format(
            message="Signed in. In the Temporal Web UI's codec server settings, tick "
            "&ldquo;Include cross-origin credentials&rdquo;."
        )
    )
    response.set_cookie(
        SESSION_COOKIE,
        _session(token, int(time.time()) + SESSION_SECONDS),
        max_age=SESSION_SECONDS,
        path="/codecs",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _authorised(request: Request) -> bool:
    token: bytes = request.app.state.token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    expires, _, _ = cookie.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(cookie.encode(), _session(token, int(expires)).encode())


def _session(token: bytes, expires: int) -> str:
    """A session cookie's value: its end, signed with the token (changing it signs all out)."""
    mac = hmac.new(token, f"codec-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _form_field(body: bytes, name: str) -> str:
    return parse_qs(body.decode("utf-8", "replace")).get(name, [""])[0]
