"""Preview and test send: a message step as one contact would get it, built by the send
activities' own code; shown without sending, or sent as a test outside the ledger and the
statistics (real SMTP inbox, the local Twilio API, a real database)."""

from __future__ import annotations

import json
import mailbox
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

import starter
from control.flows import deploy_flow, load_flow
from control.preview import (
    TEST_HEADER,
    EmailPreview,
    PreviewError,
    SmsPreview,
    preview,
    send_as_test,
)
from models.database import session
from models.engine import Delivery
from models.flow import Flow
from models.settings import Settings
from peers.twilio_api import TwilioApiServer
from reports.statistics import flow_statistics
from testkit.peers import Inbox, twilio_settings

WELCOME = Path(__file__).resolve().parent.parent / "flows" / "welcome.json"
KARIN = 1


def welcome(engine: Engine) -> Flow:
    deploy_flow(engine, json.loads(WELCOME.read_text()))
    return load_flow(engine, "welcome").flow


def ledger(engine: Engine) -> list[Delivery]:
    with session(engine) as db:
        return list(db.exec(select(Delivery)).all())


def test_an_email_preview_fills_in_the_merge_tags_and_sends_nothing(
    engine: Engine, smtp_inbox: Inbox
) -> None:
    flow = welcome(engine)
    shown = preview(engine, flow, "welcome-email", KARIN, smtp_inbox.settings)
    assert isinstance(shown, EmailPreview)
    assert shown.subject == "Welcome, Karin!"
    assert shown.to.endswith("<karin.svensson@example.com>")
    assert shown.text is not None and shown.text.startswith("Hi Karin,")
    assert shown.html is not None and "We look forward to working with Nordljus" in shown.html
    assert shown.merge_tags["customer.firstname"] == "Karin"
    assert shown.merge_tags["company.name"].startswith("Nordljus")
    assert shown.would_skip is None
    assert smtp_inbox.messages() == [] and ledger(engine) == []


def test_an_sms_preview_counts_segments_and_encoding(engine: Engine, smtp_inbox: Inbox) -> None:
    flow = welcome(engine)
    shown = preview(engine, flow, "thanks-sms", KARIN, smtp_inbox.settings)
    assert isinstance(shown, SmsPreview)
    assert shown.text.startswith("Hej Karin! Thanks for being a Nordljus customer.")
    assert (shown.encoding, shown.segments) == ("GSM-7", 1)
    assert shown.characters == len(shown.text)
    assert shown.sender == "Nordljus"
    assert shown.merge_tags["customer.firstname"] == "Karin"
    with pytest.raises(PreviewError, match="not a message step"):
        preview(engine, flow, "settle-in", KARIN, smtp_inbox.settings)


async def test_a_test_send_is_marked_and_stays_out_of_the_ledger_and_statistics(
    engine: Engine, smtp_inbox: Inbox, twilio_api: TwilioApiServer
) -> None:
    flow = welcome(engine)
    answer = await send_as_test(
        engine,
        flow,
        "welcome-email",
        KARIN,
        "marketer@example.com",
        smtp_inbox.settings,
    )
    assert answer
    (message,) = smtp_inbox.messages()
    assert message.subject == "[TEST] Welcome, Karin!"
    assert message.recipients.endswith("<marketer@example.com>")
    (stored,) = mailbox.Maildir(smtp_inbox.maildir, create=False)
    assert stored[TEST_HEADER] == "true"

    sid = await send_as_test(
        engine,
        flow,
        "thanks-sms",
        KARIN,
        "+46701234567",
        smtp_inbox.settings,
        twilio_settings(twilio_api),
    )
    (sms,) = twilio_api.messages
    assert sms["sid"] == sid and str(sms["body"]).startswith("[TEST] Hej Karin!")

    assert ledger(engine) == []
    stats = flow_statistics(engine, flow, 1)
    assert {s.recipients for s in stats.email_steps} == {0}


def test_starter_preview_writes_the_html_to_a_file(
    engine: Engine,
    smtp_inbox: Inbox,
    settings_env: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    welcome(engine)
    settings_env(
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        SMTP_PORT=str(smtp_inbox.port),
    )
    out = tmp_path / "preview.html"
    code = starter.main(
        ["preview", "welcome", "welcome-email", "--contact", str(KARIN), "--html-out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == starter.DONE
    assert "subject: Welcome, Karin!" in printed
    assert "[[customer.firstname]] = 'Karin'" in printed
    assert f"html: {out}" in printed
    assert "Thanks for your interest in Nordljus." in out.read_text()
