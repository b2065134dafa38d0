"""The codec server's sign-in page in a real browser: Debian's Chromium driven by Selenium.

An operator signs in once on the page; the session cookie it sets is what lets the browser's own
requests (the Temporal Web UI's, on another port of the same host) decode payloads.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait
from temporalio.api.common.v1 import Payload, Payloads

from codec_server.app import CodecServerSettings, create_app
from models.encryption import Keyring
from testkit.servers import free_port
from tracking.server import serving

TOKEN = "browser-token-" + "b" * 20
KEYS = Keyring.new_entry("2026-1")


@pytest.fixture
async def codec_url() -> AsyncIterator[str]:
    settings = CodecServerSettings(
        keyring=Keyring.parse(KEYS), token=TOKEN, origins=(), port=free_port()
    )
    async with serving(create_app(settings), host="127.0.0.1", port=settings.port) as url:
        yield f"{url}/codecs"


def _sign_in(driver: webdriver.Chrome, token: str) -> str:
    """The page the form's answer shows: read once the browser has left the form's page (the
    old page's body can still be found for a moment after the submit, and then goes stale)."""
    field = driver.find_element(By.NAME, "token")
    page = driver.find_element(By.TAG_NAME, "body")
    field.clear()
    field.send_keys(token)
    field.submit()
    WebDriverWait(driver, 10).until(staleness_of(page))
    return driver.find_element(By.TAG_NAME, "body").text


# Runs in the page: what the Web UI does when it asks the codec server to decode.
DECODE = """
const [url, body, done] = arguments;
fetch(url, {method: "POST", credentials: "include", body: body,
            headers: {"Content-Type": "application/json", "X-Namespace": "default"}})
  .then(async (answer) => done([answer.status, await answer.text()]))
  .catch((error) => done([0, String(error)]));
"""


async def test_an_operator_signs_in_and_the_browser_decodes_payloads(
    browser: webdriver.Chrome, codec_url: str, tmp_path: Path
) -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"contact_id": 7}')
    sealed = Keyring.parse(KEYS).encrypt(plain)
    body = json_format.MessageToJson(Payloads(payloads=[sealed]))

    def in_the_browser() -> tuple[str, str, str, list[object], list[object]]:
        browser.get(f"{codec_url}/login")
        browser.save_screenshot(str(tmp_path / "codec-sign-in.png"))
        first = browser.find_element(By.TAG_NAME, "body").text
        before: list[object] = browser.execute_async_script(DECODE, f"{codec_url}/decode", body)
        refused = _sign_in(browser, "a guess")
        accepted = _sign_in(browser, TOKEN)
        browser.save_screenshot(str(tmp_path / "codec-signed-in.png"))
        after: list[object] = browser.execute_async_script(DECODE, f"{codec_url}/decode", body)
        return first, refused, accepted, before, after

    first, refused, accepted, before, after = await asyncio.to_thread(in_the_browser)
    assert "Sign in to see decoded payloads." in first
    assert before[0] == 401  # no session yet: the page's own request is refused
    assert "That is not the token." in refused
    assert "Signed in." in accepted
    assert after[0] == 200
    [decoded] = json.loads(str(after[1]))["payloads"]
    assert base64.b64decode(decoded["data"]) == b'{"contact_id": 7}'
    assert (tmp_path / "codec-sign-in.png").stat().st_size > 0
