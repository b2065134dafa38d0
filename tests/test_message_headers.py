"""The email steps' headers kept as their text are written as the standard library writes them.

``activities.mime`` keeps the headers it writes itself (From, To, Reply-To, Date, Message-ID and
the MIME bookkeeping) as text instead of parsing and refolding them: these tests hold it to the
bytes the standard header classes produce, for plain values and for every kind that falls back
to them (non-ASCII, quoting, lines too long to leave unfolded).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.policy import default as standard_policy
from email.utils import format_datetime

import pytest

from activities.mime import MESSAGE_POLICY, message_id

ADDRESSES = [
    Address("Anna Svensson", addr_spec="anna@example.org"),
    Address("", addr_spec="anna@example.org"),
    Address("Doe, John", addr_spec="john@example.org"),
    Address('News: [the] "best"', addr_spec="news@example.com"),
    Address("back\\slash (c)", addr_spec="b@example.com"),
    Address("Mr. O'Neil", addr_spec="o@example.com"),
    Address("Åsa Öberg", addr_spec="asa@example.se"),
    Address("A" * 60 + " " + "B" * 60, addr_spec="long@example.org"),
    Address("x" * 40, addr_spec="y" * 30 + "@example.org"),
    "Ops <ops@example.com>",
    "a@example.com",
]

WRITTEN = [
    ("Date", format_datetime(datetime.now(UTC))),
    ("Message-ID", message_id("participant/step/1", "flows.local")),
    ("Message-ID", message_id("participant/step/1", "x" * 70 + ".example.com")),
    ("MIME-Version", "1.0"),
    ("Content-Type", 'text/plain; charset="utf-8"'),
    ("Content-Type", 'multipart/alternative; boundary="===============1234567890123456789=="'),
    ("Content-Type", 'application/pdf; name="rapport ü.pdf"'),
    ("Content-Transfer-Encoding", "quoted-printable"),
]


@pytest.mark.parametrize("name", ["From", "To", "Reply-To"])
@pytest.mark.parametrize("value", ADDRESSES, ids=str)
def test_an_address_header_is_written_as_the_standard_class_writes_it(
    name: str, value: Address | str
) -> None:
    assert _folded(MESSAGE_POLICY, name, value) == _folded(standard_policy, name, value)


@pytest.mark.parametrize(("name", "value"), WRITTEN, ids=lambda item: str(item)[:40])
def test_a_header_written_by_the_builder_is_written_as_the_standard_class_writes_it(
    name: str, value: str
) -> None:
    assert _folded(MESSAGE_POLICY, name, value) == _folded(standard_policy, name, value)


def test_a_whole_message_with_alternatives_and_attachments_has_the_standard_bytes() -> None:
    built = [_message(policy) for policy in (MESSAGE_POLICY, standard_policy)]
    ours, standard = (message.as_bytes(policy=SMTP) for message in built)
    assert b"boundary=" in ours and b"filename" in ours
    assert ours == standard


def test_the_kept_headers_still_answer_as_header_objects() -> None:
    message = _message(MESSAGE_POLICY)
    assert [address.addr_spec for address in message["Reply-To"].addresses] == ["sales@example.com"]
    assert message.get_content_type() == "multipart/mixed"
    assert message.get_body(("plain",)) is not None
    with pytest.raises(ValueError, match="at most 1 Message-ID"):
        message["Message-ID"] = "<another@flows.local>"


def _folded(policy: object, name: str, value: Address | str) -> str:
    message = EmailMessage(policy=policy)  # type: ignore[arg-type]
    message[name] = value
    return str(SMTP.fold(name, message[name]))


def _message(policy: object) -> EmailMessage:
    message = EmailMessage(policy=policy)  # type: ignore[arg-type]
    message["From"] = Address('News: [the] "best"', addr_spec="news@example.com")
    message["To"] = Address("Åsa Öberg", addr_spec="asa@example.se")
    message["Reply-To"] = Address("Sales", addr_spec="sales@example.com")
    message["Date"] = "Mon, 30 Nov 2026 23:39:29 +0000"
    message["Message-ID"] = message_id("participant/step/1", "flows.local")
    message.set_content("Hej Åsa,\n.\nA line starting with a dot.\n")
    message.add_alternative("<p>Hej Åsa</p>", subtype="html")
    message.add_attachment(
        bytes(range(256)), maintype="application", subtype="pdf", filename="rapport ü.pdf"
    )
    for number, part in enumerate(message.walk()):
        if part.is_multipart():
            part.set_boundary(f"==============={number:019d}==")
    return message


def test_a_kept_header_takes_text_only() -> None:
    message = EmailMessage(policy=MESSAGE_POLICY)
    with pytest.raises(TypeError, match="takes the header's text"):
        message["Date"] = datetime.now(UTC)
