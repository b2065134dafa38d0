"""A local server speaking Twilio's Messages API, so the real twilio client can be used offline.

It answers ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (form-encoded To/From/Body, HTTP
basic auth) like Twilio: 201 with the message resource, or an error document
``{"code", "message", "more_info", "status"}``. ``GET`` on the same path lists what was accepted
(newest first, optional ``To``/``From`` filters) and ``GET …/Messages/{MessageSid}.json`` fetches
one message. Nothing is ever delivered anywhere.

Tests script it: ``fail_next`` queues error answers for the next POSTs, ``fail_for`` answers every
POST with an error for a while (an outage: 429 for 30 s), ``reject_number`` makes a number always
fail (21211, 21610, …), and ``drop_next`` accepts a message but closes the connection without
answering, the case where the sender cannot know whether it went out.

For the dev stack::

    python -m peers.twilio_api --port 8026 --store .data/outbox/sms.jsonl

appends every accepted message to the JSONL file; ``read_sms_outbox`` reads it back.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import cast
from urllib.parse import parse_qs, urlsplit

from models.settings import get_settings
from models.sms import segments

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
_MESSAGES = re.compile(rf"^/{API_VERSION}/Accounts/(?P<sid>[^/]+)/Messages\.json$")
_MESSAGE = re.compile(rf"^/{API_VERSION}/Accounts/(?P<sid>[^/]+)/Messages/(?P<msid>[^/]+)\.json$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_BODY = 1600

# Twilio's wording for the codes this server produces; "{to}" is filled with the To number.
ERROR_MESSAGES: dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}

Message = dict[str, object]


@dataclass(frozen=True)
class ScriptedError:
    status: int
    code: int
    message: str | None = None


class TwilioApiError(Exception):
    """An error answer: HTTP status plus Twilio's error document."""

    def __init__(self, status: int, code: int, message: str | None = None, to: str = "") -> None:
        self.status, self.code = status, code
        self.message = message or ERROR_MESSAGES.get(code, HTTPStatus(status).phrase).format(to=to)
        super().__init__(f"{status} {code}: {self.message}")

    def document(self) -> Message:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: TwilioApiServer) -> None:
        self.api = api
        super().__init__(address, _Handler)


class TwilioApiServer:
    """A scriptable Twilio Messages API on ``host:port`` (port 0 picks a free one).

    ``account_sid``/``auth_token`` unset: any credentials are accepted, as long as the username
    is the account SID in the path.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        account_sid: str | None = None,
        auth_token: str | None = None,
        store: Path | str | None = None,
    ) -> None:
        self.host, self._port = host, port
        self.account_sid, self.auth_token = account_sid, auth_token
        self.store = Path(store) if store is not None else None
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._failures: deque[ScriptedError] = deque()
        self._outage: tuple[float, ScriptedError] | None = None  # (until, answer)
        self._drops = 0
        self._rejections: dict[str, ScriptedError] = {}
        self._attempts = 0
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._http is not None:
            raise RuntimeError("already started")
        if self.store is not None:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            self._messages = read_sms_outbox(self.store)  # GET lists survive a restart
        self._http = _HttpServer((self.host, self._port), self)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits for one poll: keep it short
            name="twilio-api",
            daemon=True,
        )
        self._thread.start()
        log.info("Twilio Messages API listening on %s", self.url)

    def stop(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http, self._thread = None, None

    def __enter__(self) -> TwilioApiServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("not started")
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to use in place of https://api.twilio.com."""
        return f"http://{self.host}:{self.port}"

    # --- what tests look at -----------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """Accepted messages, oldest first."""
        with self._lock:
            return [dict(message) for message in self._messages]

    @property
    def attempts(self) -> int:
        """Authenticated POSTs to Messages.json, answered or not: shows client-side retries."""
        with self._lock:
            return self._attempts

    # --- scripting --------------------------------------------------------------------------------

    def fail_next(
        self, status: int = 429, code: int = 20429, times: int = 1, message: str | None = None
    ) -> None:
        """Answer the next ``times`` POSTs with this error (queued after earlier scripts)."""
        with self._lock:
            self._failures.extend([ScriptedError(status, code, message)] * times)

    def fail_for(
        self, seconds: float, status: int = 429, code: int = 20429, message: str | None = None
    ) -> None:
        """Answer every POST with this error for the next ``seconds`` (after queued scripts)."""
        with self._lock:
            self._outage = (time.monotonic() + seconds, ScriptedError(status, code, message))

    def drop_next(self, times: int = 1) -> None:
        """Accept the next ``times`` messages, then close the connection without answering."""
        with self._lock:
            self._drops += times

    def reject_number(
        self, number: str, code: int = 21211, status: int = 400, message: str | None = None
    ) -> None:
        """Messages to ``number`` always fail with ``code`` (21211 invalid, 21610 unsubscribed)."""
        with self._lock:
            self._rejections[number] = ScriptedError(status, code, message)

    def reset(self) -> None:
        """Forget messages, attempts and scripts."""
        with self._lock:
            self._messages.clear()
            self._failures.clear()
            self._outage = None
            self._rejections.clear()
            self._drops = self._attempts = 0

    # --- the API ----------------------------------------------------------------------------------

    def check_auth(self, header: str | None, path_sid: str) -> None:
        if header is None or not header.startswith("Basic "):
            raise TwilioApiError(401, 20003)
        try:
            decoded = base64.b64decode(header.removeprefix("Basic "), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TwilioApiError(401, 20003) from None
        username, _, password = decoded.partition(":")
        if username != path_sid:
            raise TwilioApiError(401, 20003)
        if self.account_sid is not None and username != self.account_sid:
            raise TwilioApiError(401, 20003)
        if self.auth_token is not None and password != self.auth_token:
            raise TwilioApiError(401, 20003)

    def create(self, account_sid: str, form: dict[str, str]) -> tuple[Message, bool]:
        """Accept a message; the flag says whether to drop the connection instead of answering."""
        to = form.get("To", "").strip()
        sender = form.get("From", "").strip() or form.get("MessagingServiceSid", "").strip()
        body = form.get("Body", "")
        with self._lock:
            self._attempts += 1
            if self._failures:
                scripted = self._failures.popleft()
                raise TwilioApiError(scripted.status, scripted.code, scripted.message, to)
            if self._outage is not None and time.monotonic() < self._outage[0]:
                scripted = self._outage[1]
                raise TwilioApiError(scripted.status, scripted.code, scripted.message, to)
            if not to:
                raise TwilioApiError(400, 21604)
            if not sender:
                raise TwilioApiError(400, 21603)
            if not body:
                raise TwilioApiError(400, 21602)
            if len(body) > MAX_BODY:
                raise TwilioApiError(400, 21617)
            rejection = self._rejections.get(to)
            if rejection is not None:
                raise TwilioApiError(rejection.status, rejection.code, rejection.message, to)
            if not _E164.match(to):
                raise TwilioApiError(400, 21211, to=to)
            message = _resource(account_sid, to, sender, body)
            self._messages.append(message)
            if self.store is not None:
                with self.store.open("a", encoding="utf-8") as outbox:
                    outbox.write(json.dumps(message, ensure_ascii=False) + "\n")
            drop = self._drops > 0
            self._drops -= int(drop)
        log.info("accepted %s to %s (%s segments)", message["sid"], to, message["num_segments"])
        return message, drop

    def listing(self, account_sid: str, query: dict[str, str]) -> Message:
        with self._lock:
            found = [
                message
                for message in reversed(self._messages)
                if message["account_sid"] == account_sid
                and query.get("To", message["to"]) == message["to"]
                and query.get("From", message["from"]) == message["from"]
            ]
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"
        return {
            "messages": found,
            "uri": uri,
            "first_page_uri": uri,
            "next_page_uri": None,
            "previous_page_uri": None,
            "page": 0,
            "page_size": len(found),
            "start": 0,
            "end": max(len(found) - 1, 0),
        }

    def fetch(self, account_sid: str, message_sid: str) -> Message:
        with self._lock:
            for message in self._messages:
                if message["sid"] == message_sid and message["account_sid"] == account_sid:
                    return dict(message)
        raise TwilioApiError(404, 20404)


def _resource(account_sid: str, to: str, sender: str, body: str) -> Message:
    sid = f"SM{uuid.uuid4().hex}"
    now = format_datetime(datetime.now(UTC), usegmt=True)
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    return {
        "sid": sid,
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": now,
        "date_updated": now,
        "date_sent": None,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender,
        "messaging_service_sid": sender if sender.startswith("MG") else None,
        "num_media": "0",
        "num_segments": str(segments(body).segments),
        "price": None,
        "price_unit": "USD",
        "status": "queued",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": to,
        "uri": f"{uri}.json",
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "TwilioApiPeer/1.0"

    @property
    def api(self) -> TwilioApiServer:
        return cast(_HttpServer, self.server).api

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        form = {name: values[-1] for name, values in parse_qs(raw, keep_blank_values=True).items()}
        try:
            match = _MESSAGES.match(path)
            if match is None:
                raise TwilioApiError(404, 20404)
            self.api.check_auth(self.headers.get("Authorization"), match["sid"])
            message, drop = self.api.create(match["sid"], form)
        except TwilioApiError as error:
            self._answer(error.status, error.document())
            return
        if drop:
            self.close_connection = True  # accepted, but the client never hears about it
            return
        self._answer(201, message)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        try:
            if (match := _MESSAGES.match(parts.path)) is not None:
                self.api.check_auth(self.headers.get("Authorization"), match["sid"])
                self._answer(200, self.api.listing(match["sid"], query))
            elif (match := _MESSAGE.match(parts.path)) is not None:
                self.api.check_auth(self.headers.get("Authorization"), match["sid"])
                self._answer(200, self.api.fetch(match["sid"], match["msid"]))
            else:
                raise TwilioApiError(404, 20404)
        except TwilioApiError as error:
            self._answer(error.status, error.document())

    def _answer(self, status: int, document: Message) -> None:
        payload = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def read_sms_outbox(path: Path | str) -> list[Message]:
    """Messages stored by a server run with ``--store``, oldest first ([] if there is no file)."""
    outbox = Path(path)
    if not outbox.exists():
        return []
    with outbox.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    token = settings.twilio_auth_token
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=settings.sms_port)
    parser.add_argument("--store", type=Path, help="append accepted messages to this JSONL file")
    parser.add_argument("--account-sid", default=settings.twilio_account_sid)
    parser.add_argument("--auth-token", default=token.get_secret_value() if token else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    server = TwilioApiServer(
        args.host,
        args.port,
        account_sid=args.account_sid,
        auth_token=args.auth_token,
        store=args.store,
    )
    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    try:
        stopping.wait()
    finally:
        server.stop()
        log.info("stopped")


if __name__ == "__main__":
    main()
