"""A local SMTP inbox for the dev stack: accepts every message and keeps it in a Maildir.

    python -m peers.smtp_inbox --port 8025 --maildir .data/outbox/mail

Nothing is relayed anywhere. The envelope (which Bcc recipients only show in) is kept in
``X-Envelope-From`` / ``X-Envelope-To`` headers prepended to each stored message.
"""

from __future__ import annotations

import argparse
import mailbox
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from aiosmtpd.controller import Controller

DEFAULT_MAILDIR = Path(".data/outbox/mail")
# Above aiosmtpd's 32 MiB default: 25 MB of attachments grow by a third in base64.
DATA_SIZE_LIMIT = 64 * 1024 * 1024


class MaildirHandler:
    """aiosmtpd handler: store each accepted message as one Maildir file."""

    def __init__(self, maildir: Path) -> None:
        maildir.parent.mkdir(parents=True, exist_ok=True)  # Maildir creates only the last level
        self._maildir = mailbox.Maildir(maildir, create=True)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", errors="surrogateescape")
        envelope_lines = (
            f"X-Envelope-From: <{envelope.mail_from}>\r\n"
            f"X-Envelope-To: {', '.join(f'<{rcpt}>' for rcpt in envelope.rcpt_tos)}\r\n"
        ).encode("utf-8", errors="replace")
        with self._lock:
            key = self._maildir.add(envelope_lines + content)
        return f"250 OK stored as {key}"


def inbox_controller(host: str, port: int, maildir: Path) -> Controller:
    """A not yet started server; ``start()``/``stop()`` it (it runs in its own thread)."""
    return Controller(
        MaildirHandler(maildir),
        hostname=host,
        port=port,
        data_size_limit=DATA_SIZE_LIMIT,
        enable_SMTPUTF8=True,
    )


@dataclass(frozen=True)
class InboxMessage:
    key: str
    date: datetime
    sender: str
    recipients: str
    subject: str
    message_id: str = ""


@dataclass(frozen=True)
class InboxContent:
    """One stored message as a mail client shows it: its headers and its bodies."""

    message: InboxMessage
    html: str | None
    text: str | None
    attachments: list[str]


def read_inbox(maildir: Path | str = DEFAULT_MAILDIR) -> list[InboxMessage]:
    """A summary of every stored message, oldest first (an absent folder is an empty inbox)."""
    folder = Path(maildir)
    if not (folder / "cur").is_dir() and not (folder / "new").is_dir():
        return []
    box = mailbox.Maildir(folder, factory=None, create=False)
    parser = BytesHeaderParser(policy=default_policy)
    summaries: list[InboxMessage] = []
    for key in box.iterkeys():  # iterating a Mailbox itself yields messages
        with box.get_file(key) as handle:
            headers = parser.parse(cast(BinaryIO, handle))  # a file-like proxy
        summaries.append(_summary(box, key, headers))
    return sorted(summaries, key=lambda message: message.date)


def read_message(maildir: Path | str, key: str) -> InboxContent | None:
    """The message stored under ``key`` with its HTML and plain-text bodies, or None."""
    box = mailbox.Maildir(Path(maildir), factory=None, create=False)
    try:
        with box.get_file(key) as handle:
            message = BytesParser(policy=default_policy).parse(cast(BinaryIO, handle))
    except (KeyError, FileNotFoundError):
        return None
    assert isinstance(message, EmailMessage)
    bodies: dict[str, str] = {}
    for subtype in ("html", "plain"):
        part = message.get_body(preferencelist=(subtype,))
        if part is not None and isinstance(part, EmailMessage):
            bodies[subtype] = str(part.get_content())
    summary = _summary(box, key, message)
    names = [part.get_filename() or "attachment" for part in message.iter_attachments()]
    return InboxContent(summary, bodies.get("html"), bodies.get("plain"), names)


def _summary(box: mailbox.Maildir, key: str, headers: Message) -> InboxMessage:
    return InboxMessage(
        key=key,
        date=_date(headers.get("Date")) or _delivered_at(box, key),
        sender=str(headers.get("From", "")),
        recipients=str(headers.get("To") or headers.get("X-Envelope-To") or ""),
        subject=str(headers.get("Subject", "")),
        message_id=str(headers.get("Message-ID", "")).strip(),
    )


def _date(header: object) -> datetime | None:
    if header is None:
        return None
    try:
        parsed = parsedate_to_datetime(str(header))
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _delivered_at(box: mailbox.Maildir, key: str) -> datetime:
    # No usable Date header: fall back to when the message arrived.
    return datetime.fromtimestamp(box.get_message(key).get_date(), UTC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--maildir", type=Path, default=DEFAULT_MAILDIR)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())

    controller = inbox_controller(args.host, args.port, args.maildir)
    controller.start()
    print(f"SMTP inbox on {args.host}:{args.port}, storing in {args.maildir}", flush=True)
    try:
        stop.wait()
    finally:
        controller.stop()
    print("SMTP inbox stopped", flush=True)


if __name__ == "__main__":
    main()
