"""The engine's peers, running on loopback for a test or a benchmark: a real SMTP server that
keeps what it accepts in a Maildir, the local Twilio-compatible Messages API, and a self-signed
certificate for an SMTP server that offers STARTTLS."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from activities.email import SmtpSettings
from activities.sms import TwilioSettings
from peers.smtp_inbox import InboxMessage, inbox_controller, read_inbox
from peers.twilio_api import TwilioApiServer
from testkit.servers import LOOPBACK, free_port

TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "test-token"


@dataclass(frozen=True)
class Inbox:
    """A real SMTP server on loopback (aiosmtpd, in a thread of this process, or in a process of
    its own: ``pid``)."""

    port: int
    maildir: Path
    smtp_timeout: float = SmtpSettings.timeout  # what a sender to it waits per command
    pid: int | None = None

    @property
    def settings(self) -> SmtpSettings:
        """Settings that send to this inbox."""
        return SmtpSettings(host=LOOPBACK, port=self.port, timeout=self.smtp_timeout)

    def messages(self) -> list[InboxMessage]:
        return read_inbox(self.maildir)

    def count(self) -> int:
        """How many messages it holds, without parsing them."""
        return sum(1 for folder in ("new", "cur") for _ in (self.maildir / folder).glob("*"))


@contextmanager
def running_inbox(directory: Path, smtp_timeout: float = SmtpSettings.timeout) -> Iterator[Inbox]:
    """An inbox on a free port, its Maildir under ``directory``; stopped on the way out."""
    inbox = Inbox(free_port(), directory / "mail", smtp_timeout)
    controller = inbox_controller(LOOPBACK, inbox.port, inbox.maildir)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@contextmanager
def inbox_process(directory: Path, smtp_timeout: float = SmtpSettings.timeout) -> Iterator[Inbox]:
    """An inbox on a free port in a process of its own (``python -m peers.smtp_inbox``), as a
    real SMTP server is: its work does not take the sender's interpreter lock. Stopped on the
    way out."""
    port, maildir = free_port(), directory / "mail"
    command = [sys.executable, "-m", "peers.smtp_inbox", "--host", LOOPBACK, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--maildir", str(maildir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # printed once the server accepts connections
        if not ready.startswith("SMTP inbox on"):
            raise RuntimeError(f"the SMTP inbox did not start (exit code {process.wait()})")
        yield Inbox(port, maildir, smtp_timeout, pid=process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def running_twilio_api() -> Iterator[TwilioApiServer]:
    """The Twilio-compatible API on a free port, taking the kit's credentials."""
    with TwilioApiServer(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN) as server:
        yield server


def twilio_settings(server: TwilioApiServer) -> TwilioSettings:
    """Settings that send to ``server``."""
    return TwilioSettings(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, api_base=server.url)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key (PEM files in ``folder``), made with
    openssl; a client trusts it through ``SmtpSettings.ca_file``."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
