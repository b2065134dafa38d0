"""Signed tracking tokens, the rewriting of a message's links, and send_email applying both."""

from __future__ import annotations

import asyncio
import mailbox
import re
import time
from collections.abc import Callable
from dataclasses import replace
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest
from sqlalchemy import Engine
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, EmailSend
from models.crm import Company, Contact
from models.database import session
from models.flow import EmailSettings, SendEmail
from models.ledger import DeliveryStatus
from models.settings import Settings
from models.tracking_links import (
    BadToken,
    Claims,
    ExpiredToken,
    Purpose,
    TrackingLinks,
    authored_links,
    check_secret,
    rewrite_html,
    rewrite_text,
    with_open_pixel,
)
from testkit.peers import Inbox

LINKS = TrackingLinks(base_url="https://t.example.com", secret="s" * 32)
CLAIMS = Claims(
    contact_id=7,
    flow_id="welcome",
    step_id="mail",
    delivery_key="run-1/mail/1",
    url="https://www.example.com/offer?a=1&b=ö",
)


def marked(url: str) -> str:
    return f"TRACKED[{url}]"


def test_a_token_gives_back_what_was_signed() -> None:
    token = LINKS.sign(Purpose.click, CLAIMS)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)  # URL-safe as it is
    assert LINKS.verify(Purpose.click, token) == CLAIMS
    assert LINKS.verify(Purpose.form, LINKS.form_token(3)) == Claims(contact_id=3)


def test_a_forged_altered_or_misused_token_is_refused() -> None:
    token = LINKS.sign(Purpose.click, CLAIMS)
    payload, signature = token.split(".")
    other = TrackingLinks(base_url=LINKS.base_url, secret="t" * 32)
    forged_payload = LINKS.sign(Purpose.click, Claims(contact_id=8)).split(".")[0]
    for bad in (
        other.sign(Purpose.click, CLAIMS),  # another secret
        f"{forged_payload}.{signature}",  # someone else's payload under this signature
        f"{payload}.{signature[:-2]}xx",  # a changed signature
        payload,  # no signature
        "",
        "..",
        f"{payload}.é",  # not ASCII: refused, not a TypeError from comparing
        f"{payload}.{signature}\udcff",
        f"{payload}.{'A' * 10_000}",
    ):
        with pytest.raises(BadToken):
            LINKS.verify(Purpose.click, bad)
    with pytest.raises(BadToken):  # a click token is no open token
        LINKS.verify(Purpose.open, token)


def test_a_token_expires() -> None:
    token = LINKS.sign(Purpose.open, CLAIMS, expires_at=time.time() + 60)
    assert LINKS.verify(Purpose.open, token).contact_id == 7
    with pytest.raises(ExpiredToken):
        LINKS.verify(Purpose.open, token, now=time.time() + 61)


def test_settings_come_from_the_environment(settings_env: Callable[..., Settings]) -> None:
    assert TrackingLinks.from_settings(settings_env()) is None
    with pytest.raises(ValueError, match="TRACKING_SECRET"):
        TrackingLinks.from_settings(settings_env(TRACKING_BASE_URL="https://t.example.com"))
    with pytest.raises(ValueError, match="at least 16"):
        TrackingLinks.from_settings(
            settings_env(TRACKING_BASE_URL="https://t", TRACKING_SECRET="short")
        )
    links = TrackingLinks.from_settings(
        settings_env(
            TRACKING_BASE_URL="https://t.example.com/",
            TRACKING_SECRET="x" * 16,
            TRACKING_TOKEN_DAYS="30",
        )
    )
    assert links is not None and links.token_days == 30
    assert links is not None and links.base_url == "https://t.example.com"
    assert links.click_url(CLAIMS).startswith("https://t.example.com/t/c/")
    assert re.fullmatch(r"https://t\.example\.com/t/o/[\w-]+\.[\w-]+\.gif", links.open_url(CLAIMS))


def test_every_http_link_in_the_html_is_rewritten() -> None:
    body = (
        '<p><a class="x" href="https://www.example.com/a?x=1&amp;y=2">A</a> '
        "<A HREF='http://example.org/b'>B</A> "
        "<a href=https://example.net/c>C</a> "
        '<a href="mailto:sales@example.com">mail</a> <a href="#top">top</a> '
        '<a href="https://example.com/unsubscribe?c=1">unsubscribe</a> '
        '<area shape="rect" href="https://example.com/map"> '
        '<link href="https://example.com/style.css"> '
        'href="https://example.com/not-a-tag"</p>'
    )
    rewritten = rewrite_html(body, marked, untracked={"https://example.com/unsubscribe?c=1"})
    assert rewritten == (
        '<p><a class="x" href="TRACKED[https://www.example.com/a?x=1&amp;y=2]">A</a> '
        '<A HREF="TRACKED[http://example.org/b]">B</A> '
        '<a href="TRACKED[https://example.net/c]">C</a> '
        '<a href="mailto:sales@example.com">mail</a> <a href="#top">top</a> '
        '<a href="https://example.com/unsubscribe?c=1">unsubscribe</a> '
        '<area shape="rect" href="TRACKED[https://example.com/map]"> '
        '<link href="https://example.com/style.css"> '
        'href="https://example.com/not-a-tag"</p>'
    )


def test_the_click_url_gets_the_unescaped_link_and_is_escaped_again() -> None:
    seen: list[str] = []

    def remember(url: str) -> str:
        seen.append(url)
        return "https://t.example.com/t/c/x?y=1&z=2"

    rewritten = rewrite_html('<a href="https://e.com/?a=1&amp;b=&quot;2&quot;">x</a>', remember)
    assert seen == ['https://e.com/?a=1&b="2"']
    assert rewritten == '<a href="https://t.example.com/t/c/x?y=1&amp;z=2">x</a>'


def test_bare_urls_in_the_text_are_rewritten_without_their_punctuation() -> None:
    text = (
        "See https://www.example.com/offer. Or (https://example.org/a_(b)) and "
        "https://example.net/x?y=1, then https://example.com/unsubscribe?c=1\nmailto:x@y.z"
    )
    rewritten = rewrite_text(text, marked, untracked={"https://example.com/unsubscribe?c=1"})
    assert rewritten == (
        "See TRACKED[https://www.example.com/offer]. Or (TRACKED[https://example.org/a_(b)]) and "
        "TRACKED[https://example.net/x?y=1], then https://example.com/unsubscribe?c=1\n"
        "mailto:x@y.z"
    )


def test_the_open_pixel_goes_last_in_the_body() -> None:
    pixel = 'src="https://t.example.com/t/o/a.b.gif"'
    framed = with_open_pixel(
        "<html><body><p>Hi</p></body></html>", "https://t.example.com/t/o/a.b.gif"
    )
    assert framed.startswith("<html><body><p>Hi</p><img ") and framed.endswith("</body></html>")
    assert pixel in framed
    bare = with_open_pixel("<p>Hi</p>", "https://t.example.com/t/o/a.b.gif")
    assert bare.startswith("<p>Hi</p><img ") and pixel in bare


# --- send_email ----------------------------------------------------------------------------------


def _sent(inbox: Inbox) -> EmailMessage:
    box = mailbox.Maildir(inbox.maildir, factory=None, create=False)
    [key] = list(box.iterkeys())
    message = BytesParser(policy=default_policy).parsebytes(box.get_bytes(key))
    assert isinstance(message, EmailMessage)
    return message


def _content(message: EmailMessage, kind: str) -> str:
    part = message.get_body(preferencelist=(kind,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize("track_opens", [True, False])
async def test_send_email_tracks_every_link_and_the_open(
    engine: Engine, smtp_inbox: Inbox, track_opens: bool
) -> None:
    unsubscribe = "https://www.example.com/unsubscribe?c={contact_id}"
    smtp = replace(smtp_inbox.settings, tracking=LINKS, list_unsubscribe_url=unsubscribe)
    step = SendEmail(
        id="mail",
        type="send_email",
        next="done",
        subject="Offer",
        html='<p><a href="https://www.example.com/offer?a=1&amp;b=2">Offer</a> '
        '<a href="[[link.unsubscribe]]">Unsubscribe</a></p>',
        text="The offer: https://www.example.com/offer?a=1&b=2.",
        track_opens=track_opens,
    )
    request = EmailSend(
        delivery_key="run-1/mail/1",
        flow_id="welcome",
        flow_name="Welcome",
        contact_id=1,  # Karin, who takes marketing email
        step=step,
        settings=EmailSettings.model_validate(
            {"subscription_type": "newsletter", "from": {"address": "news@example.com"}}
        ),
    )
    send = EmailActivities(engine, smtp).send_email
    outcome = await asyncio.to_thread(ActivityEnvironment().run, send, request)
    assert outcome.status is DeliveryStatus.sent

    message = _sent(smtp_inbox)
    html = _content(message, "html")
    [offer, pixel] = re.findall(r'(?:href|src)="(https://t\.example\.com/t/[co]/[^"]+)"', html) + (
        [] if track_opens else [""]
    )
    expected = Claims(
        contact_id=1,
        flow_id="welcome",
        step_id="mail",
        delivery_key="run-1/mail/1",
        url="https://www.example.com/offer?a=1&b=2",
    )
    assert LINKS.verify(Purpose.click, offer.removeprefix(f"{LINKS.base_url}/t/c/")) == expected
    assert 'href="https://www.example.com/unsubscribe?c=1"' in html  # not engagement: untracked
    if track_opens:
        token = pixel.removeprefix(f"{LINKS.base_url}/t/o/").removesuffix(".gif")
        assert LINKS.verify(Purpose.open, token) == replace(expected, url=None)
    else:
        assert "/t/o/" not in html
    [text_link] = re.findall(r"https://t\.example\.com/t/c/\S+", _content(message, "plain"))
    token = text_link.rstrip(".").removeprefix(f"{LINKS.base_url}/t/c/")
    assert LINKS.verify(Purpose.click, token) == expected


# --- only the links the author wrote ------------------------------------------------------------

EVIL = "https://evil.example/login"


def _click_targets(body: str) -> list[str]:
    tokens = re.findall(r"https://t\.example\.com/t/c/([\w-]+\.[\w-]+)", body)
    return [str(LINKS.verify(Purpose.click, token).url) for token in tokens]


async def test_a_url_in_the_contacts_data_is_never_signed(
    engine: Engine, smtp_inbox: Inbox
) -> None:
    with session(engine) as db:
        contact = db.get(Contact, 1)
        assert contact is not None and contact.company_id is not None
        contact.first_name = EVIL
        company = db.get(Company, contact.company_id)
        assert company is not None
        company.website = "https://evil.example/site"
        db.add_all([contact, company])
    step = SendEmail(
        id="mail",
        type="send_email",
        next="done",
        subject="Offer",
        html="<p>Hi [[customer.firstname]]! <a href='[[company.website]]'>Your site</a>, "
        '<a href="[[customer.firstname]]">you</a>, '
        '<a href="https://[[customer.firstname]]">you again</a> and '
        '<a href="https://www.example.com/offer?name=[[customer.firstname]]">our offer</a></p>',
        text="Hi [[customer.firstname]]! [[company.website]] and https://www.example.com/offer.",
        track_opens=False,
    )
    request = EmailSend(
        delivery_key="run-1/mail/1",
        flow_id="welcome",
        flow_name="Welcome",
        contact_id=1,
        step=step,
        settings=EmailSettings.model_validate(
            {"subscription_type": "newsletter", "from": {"address": "news@example.com"}}
        ),
    )
    smtp = replace(smtp_inbox.settings, tracking=LINKS)
    send = EmailActivities(engine, smtp).send_email
    outcome = await asyncio.to_thread(ActivityEnvironment().run, send, request)
    assert outcome.status is DeliveryStatus.sent

    message = _sent(smtp_inbox)
    html, text = _content(message, "html"), _content(message, "plain")
    # The author's link is tracked, the contact's name filled into its query; nothing else is.
    offer = f"https://www.example.com/offer?name={EVIL}"
    assert _click_targets(html) == [offer]
    assert _click_targets(text) == ["https://www.example.com/offer"]
    assert f"Hi {EVIL}!" in text and "https://evil.example/site and" in text
    assert "href='https://evil.example/site'" in html and f'href="{EVIL}"' in html


def test_links_are_picked_from_the_template_before_merge_tags() -> None:
    template = (
        '<a href="https://example.com/a?n=[[customer.firstname]]">a</a> '
        '<a href="https://[[company.website]]/x">b</a> '
        '<a href="https://example.com[[customer.firstname]]">c</a> '
        '<a href="https://example.com/[[IF:customer.firstname]]x[[ENDIF]]">d</a> '
        '<a href="[[link.unsubscribe]]">e</a>'
    )
    authored = authored_links(template, html_body=True)
    assert authored.links == ("https://example.com/a?n=[[customer.firstname]]",)
    rendered = authored.template.replace("[[customer.firstname]]", "@evil.example")
    urls = ["https://example.com/a?n=@evil.example"]
    filled = authored.filled(rendered, urls, marked, html_body=True)
    assert filled.startswith('<a href="TRACKED[https://example.com/a?n=@evil.example]">a</a>')
    # Filling in that moved the link to another host leaves it untracked.
    moved = authored.filled(rendered, ["https://evil.example/"], marked, html_body=True)
    assert moved.startswith('<a href="https://evil.example/">a</a>')

    text = authored_links("See https://example.com/offer[[ENDIF]]. Or [[x]]", html_body=False)
    assert text.links == ("https://example.com/offer",)
    assert text.template.endswith("[[ENDIF]]. Or [[x]]")


def test_secrets_must_be_long_and_varied() -> None:
    for weak in ("x", "s" * 32, "test-secret-" + "x" * 20, "events-token" * 3):
        with pytest.raises(ValueError, match="TRACKING_SECRET"):
            check_secret("TRACKING_SECRET", weak)
    strong_ones = (
        "0123456789abcdef" + "fedcba9876543210",
        "9c1e5b7f0a3d48e6b2c07f19d5a8e364",
        "correct horse battery staple plus",
    )
    for strong in strong_ones:
        assert check_secret("TRACKING_SECRET", strong) == strong
