"""Payload encryption and the codec server: every payload a participant hands Temporal is
encrypted (AES-256-GCM, its key named in the payload), key rotation, unencrypted histories read
as they are, and the codec server decoding for whoever holds its token and nobody else; the TLS
settings of the Temporal connection. The dev server, the Temporal CLI, a real database."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from pydantic import ValidationError
from sqlalchemy import Engine
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHistory
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

import worker
from codec_server.app import CodecServerSettings, create_app
from control.enrollment import enroll
from control.flows import deploy_flow
from models.encryption import ENCODING, KEY_ID, Keyring, PayloadKeyError
from models.participant import Enrollment, participant_workflow_id
from models.payloads import DATA_CONVERTER, data_converter
from models.settings import Settings
from testkit.peers import Inbox
from testkit.servers import TEMPORAL_CLI, free_port
from tracking.server import serving
from worker import activities_for, build_worker, payload_keyring, temporal_tls
from workflows.participant import ParticipantWorkflow
from workflows.sandbox import SANDBOXED
from workflows.script import ScriptWorkflow

KARIN = 1
OLD, NEW = Keyring.new_entry("2025-1"), Keyring.new_entry("2026-1")
TOKEN = "codec-token-" + "t" * 20
UI = "http://localhost:8233"
PLAIN = [b"karin.svensson@example.com", b"Svensson", b"Karin"]


def payload(value: Any) -> Payload:
    return DATA_CONVERTER.payload_converter.to_payload(value)


# --- the codec ---------------------------------------------------------------------------------


def test_a_payload_is_encrypted_under_the_first_key_and_named_by_it() -> None:
    keyring = Keyring.parse(f"{NEW},{OLD}")
    plain = payload({"email": "karin.svensson@example.com"})
    sealed = keyring.encrypt(plain)
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID] == b"2026-1"
    assert b"karin" not in sealed.SerializeToString()
    assert keyring.encrypt(plain).data != sealed.data  # a fresh nonce every time
    assert keyring.decrypt(sealed) == plain


def test_rotation_new_key_encrypts_old_keys_still_decrypt() -> None:
    before = Keyring.parse(OLD)
    written_before = before.encrypt(payload("from last year"))
    rotated = Keyring.parse(f"{NEW}, {OLD}")
    assert DATA_CONVERTER.payload_converter.from_payload(rotated.decrypt(written_before)) == (
        "from last year"
    )
    assert rotated.encrypt(payload("x")).metadata[KEY_ID] == b"2026-1"
    retired = Keyring.parse(NEW)  # the old key dropped too soon: said so, not garbage
    with pytest.raises(PayloadKeyError, match="'2025-1', which is not among"):
        retired.decrypt(written_before)


def test_unencrypted_payloads_pass_through_and_altered_ones_are_refused() -> None:
    keyring = Keyring.parse(NEW)
    plain = payload({"contact_id": 1})
    assert keyring.decrypt(plain) is plain
    sealed = keyring.encrypt(plain)
    altered = Payload(
        metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    )
    with pytest.raises(PayloadKeyError, match="does not decrypt"):
        keyring.decrypt(altered)
    # The key id is authenticated: a payload cannot be passed off as another key's.
    other = Keyring.parse(f"{NEW.replace('2026-1', 'other', 1)},{NEW}")
    renamed = Payload(metadata={**sealed.metadata, KEY_ID: b"other"}, data=sealed.data)
    with pytest.raises(PayloadKeyError):
        other.decrypt(renamed)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("", "at least one key"),
        ("no-colon", "id:base64key"),
        ("k1:not base64!", "not base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "5 bytes, not 32"),
        (f"{NEW},{NEW}", "must differ"),
        (f"bad/id:{NEW.split(':')[1]}", "key id"),
    ],
)
def test_malformed_keys_are_refused_when_the_settings_are_read(
    settings_env: Callable[..., Settings], keys: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Keyring.parse(keys)
    if keys:
        with pytest.raises(ValidationError, match=problem):
            settings_env(PAYLOAD_KEYS=keys)


def test_the_keys_come_from_the_setting_or_its_file(
    settings_env: Callable[..., Settings], tmp_path: Path
) -> None:
    keyring = payload_keyring(settings_env(PAYLOAD_KEYS=f"{NEW},{OLD}"))
    assert keyring is not None and keyring.ids == ["2026-1", "2025-1"]
    file = tmp_path / "keys"
    file.write_text(f"{OLD}\n")
    keyring = payload_keyring(settings_env(PAYLOAD_KEYS_FILE=str(file)))
    assert keyring is not None and keyring.ids == ["2025-1"]
    with pytest.raises(FileNotFoundError):  # named, it must be there
        payload_keyring(settings_env(PAYLOAD_KEYS_FILE=str(tmp_path / "missing")))


def test_the_dev_stacks_key_is_used_for_its_server_only(
    settings_env: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = tmp_path / "payload-keys"
    made.write_text(f"{NEW}\n")
    monkeypatch.setattr(worker, "DEV_PAYLOAD_KEYS", made)
    dev_stack = payload_keyring(settings_env())  # localhost:7233, TEMPORAL_PORT 7233
    assert dev_stack is not None and dev_stack.ids == ["2026-1"]
    moved = settings_env(TEMPORAL_ADDRESS="127.0.0.1:17233", TEMPORAL_PORT="17233")
    assert payload_keyring(moved) is not None
    assert payload_keyring(settings_env(TEMPORAL_ADDRESS="127.0.0.1:40123")) is None
    assert payload_keyring(settings_env(TEMPORAL_ADDRESS="temporal.example:7233")) is None
    # A client connecting elsewhere than TEMPORAL_ADDRESS (a test's own server, after `make run`
    # made the key in this checkout) is judged by where it connects.
    assert payload_keyring(settings_env(), "127.0.0.1:40123") is None


async def test_connect_encrypts_only_for_the_dev_stacks_server(
    dev_env: WorkflowEnvironment,
    settings_env: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = tmp_path / "payload-keys"
    made.write_text(f"{NEW}\n")
    monkeypatch.setattr(worker, "DEV_PAYLOAD_KEYS", made)
    settings_env()  # TEMPORAL_ADDRESS localhost:7233: the dev stack's, not this test server's
    client = await worker.connect(dev_env.client.service_client.config.target_host)
    assert client.data_converter.payload_codec is None


async def test_the_replay_corpus_replays_with_the_encrypting_converter() -> None:
    """Histories written before encryption (the whole corpus) are read as they are."""
    folder = Path(__file__).parent / "histories"
    replayer = Replayer(
        workflows=[ParticipantWorkflow, ScriptWorkflow],
        data_converter=data_converter(Keyring.parse(NEW)),
        workflow_runner=SANDBOXED,
    )
    for name in ("event_splits_v2", "crm_steps_v2", "crm_steps_v2_script1"):
        text = (folder / f"{name}.json").read_text()
        result = await replayer.replay_workflow(WorkflowHistory.from_json(name, text))
        assert result.replay_failure is None


# --- TLS -----------------------------------------------------------------------------------------


def test_tls_settings_make_the_connections_tls_config(
    settings_env: Callable[..., Settings], tmp_path: Path
) -> None:
    assert temporal_tls(settings_env()) is False
    assert temporal_tls(settings_env(TEMPORAL_TLS="true")) == TLSConfig()
    files = {name: tmp_path / name for name in ("ca.pem", "client.pem", "client.key")}
    for name, path in files.items():
        path.write_bytes(f"-----{name}-----".encode())
    mutual = temporal_tls(
        settings_env(
            TEMPORAL_TLS_CA_FILE=str(files["ca.pem"]),
            TEMPORAL_TLS_CERT_FILE=str(files["client.pem"]),
            TEMPORAL_TLS_KEY_FILE=str(files["client.key"]),
            TEMPORAL_TLS_SERVER_NAME="temporal.internal.example",
        )
    )
    assert mutual == TLSConfig(
        server_root_ca_cert=b"-----ca.pem-----",
        domain="temporal.internal.example",
        client_cert=b"-----client.pem-----",
        client_private_key=b"-----client.key-----",
    )
    ca_only = temporal_tls(settings_env(TEMPORAL_TLS_CA_FILE=str(files["ca.pem"])))
    assert ca_only == TLSConfig(server_root_ca_cert=b"-----ca.pem-----")
    with pytest.raises(ValidationError, match="go together"):
        settings_env(TEMPORAL_TLS_CERT_FILE=str(files["client.pem"]))


# --- a participant with encryption on, and the codec server ------------------------------------


def _payloads(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(where, payload) for every payload of a history's JSON."""
    if isinstance(node, dict):
        if "metadata" in node and set(node) <= {"metadata", "data", "externalPayloads"}:
            return [(path, node)]
        return [p for key, child in node.items() for p in _payloads(child, f"{path}.{key}")]
    if isinstance(node, list):
        return [p for i, child in enumerate(node) for p in _payloads(child, f"{path}[{i}]")]
    return []


# What the SDK core writes itself (patch and local activity markers' bookkeeping) and search
# attributes (ids and step names, indexed by the server) are not payload-codec payloads.
NOT_ENCODED = (".details.patch-data", ".details.data", "searchAttributes")


@pytest.fixture
async def encrypted(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, smtp_inbox: Inbox
) -> AsyncIterator[tuple[Client, str]]:
    """A participant run by a client and worker with payload keys, to its end: the client, and
    the participant's workflow id."""
    keyring = Keyring.parse(f"{NEW},{OLD}")
    client = await Client.connect(
        dev_env.client.service_client.config.target_host, data_converter=data_converter(keyring)
    )
    document = {
        "id": f"sealed-{uuid.uuid4().hex[:8]}",
        "name": "Sealed",
        "start": "mail",
        "email": {"subscription_type": "newsletter", "from": {"address": "news@example.com"}},
        "steps": [
            {
                "id": "mail",
                "type": "send_email",
                "subject": "Hello",
                "text": "Hello [[customer.fullname]]",
                "next": "tag",
            },
            {
                "id": "tag",
                "type": "update_contact",
                "rows": [{"field": "title", "action": "set", "value": "Head of Sealing"}],
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }
    flow_id = deploy_flow(engine, document).flow_id
    activities = activities_for(engine, smtp_inbox.settings)
    async with build_worker(client, engine, task_queue=task_queue, activities=activities):
        report = await enroll(client, engine, flow_id, [KARIN], task_queue=task_queue)
        assert report.enrolled == [KARIN]
        workflow_id = participant_workflow_id(flow_id, KARIN)
        state = await client.get_workflow_handle_for(ParticipantWorkflow.run, workflow_id).result()
        assert [visit.step for visit in state.trail] == ["mail", "tag", "done"]
    yield client, workflow_id


async def test_with_keys_every_payload_of_a_history_is_encrypted(
    dev_env: WorkflowEnvironment, encrypted: tuple[Client, str]
) -> None:
    _, workflow_id = encrypted
    # Read as anyone with access to the Temporal UI reads it: without the keys.
    history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
    document = json.loads(history.to_json())
    found = _payloads(document)
    sealed = [(where, p) for where, p in found if not any(part in where for part in NOT_ENCODED)]
    assert len(sealed) > 10
    for where, item in sealed:
        metadata = {k: base64.b64decode(v) for k, v in item["metadata"].items()}
        assert metadata["encoding"] == ENCODING, where
        assert metadata[KEY_ID] == b"2026-1", where
    everything = b"".join(base64.b64decode(p.get("data", "")) for _, p in found)
    everything += json.dumps(document).encode()
    assert [text for text in PLAIN if text in everything] == []
    # The participant's summary is a payload too: encrypted.
    assert any(where.endswith("userMetadata.summary") for where, _ in sealed)


@pytest.fixture
async def codec_server(engine: Engine) -> AsyncIterator[str]:
    del engine  # the settings read no database; the fixture order keeps the server short-lived
    settings = CodecServerSettings(
        keyring=Keyring.parse(f"{NEW},{OLD}"), token=TOKEN, origins=(UI,), port=free_port()
    )
    async with serving(create_app(settings), host="127.0.0.1", port=settings.port) as url:
        yield f"{url}/codecs"


async def test_the_codec_server_decodes_for_its_token_only(
    dev_env: WorkflowEnvironment, encrypted: tuple[Client, str], codec_server: str
) -> None:
    client, workflow_id = encrypted
    history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    body = json_format.MessageToJson(started.input)  # {"payloads": [...]}, as the UI sends
    bearer = {"Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"}
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": TOKEN}):
            refused = await http.post(f"{codec_server}/decode", content=body, headers=headers)
            assert refused.status_code == 401
            assert b"Karin" not in refused.content and b"contact_id" not in refused.content
        for path in ("/decode", "/default/decode"):
            answer = await http.post(f"{codec_server}{path}", content=body, headers=bearer)
            assert answer.status_code == 200
            [decoded] = json_format.Parse(answer.content, Payloads()).payloads
            enrollment = DATA_CONVERTER.payload_converter.from_payload(decoded, Enrollment)
            assert enrollment.contact_id == KARIN
        nothing = await http.post(f"{codec_server}/default/compress", content=body, headers=bearer)
        assert nothing.status_code == 404
        # /encode, then /decode: the round trip the UI makes for a signal typed into it.
        plain = Payloads(payloads=[payload({"reason": "typed in the UI"})])
        encoded = await http.post(
            f"{codec_server}/encode", content=json_format.MessageToJson(plain), headers=bearer
        )
        [sealed] = json_format.Parse(encoded.content, Payloads()).payloads
        assert sealed.metadata["encoding"] == ENCODING
        assert await client.data_converter.decode([sealed]) == [{"reason": "typed in the UI"}]
        too_big = await http.post(
            f"{codec_server}/decode", content=b"x" * (17 * 1024 * 1024), headers=bearer
        )
        assert too_big.status_code == 413


async def test_the_web_ui_origin_may_call_it_and_a_signed_in_browser_decodes(
    dev_env: WorkflowEnvironment, encrypted: tuple[Client, str], codec_server: str
) -> None:
    _, workflow_id = encrypted
    history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
    body = json_format.MessageToJson(
        history.events[0].workflow_execution_started_event_attributes.input
    )
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace",
    }
    async with httpx.AsyncClient() as browser:
        allowed = await browser.options(
            f"{codec_server}/decode", headers={**preflight, "Origin": UI}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == UI
        assert allowed.headers["access-control-allow-credentials"] == "true"
        other = await browser.options(
            f"{codec_server}/decode", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        # Not signed in: 401, readable by the UI (it shows the payloads still encoded).
        anonymous = await browser.post(
            f"{codec_server}/decode", content=body, headers={"Origin": UI}
        )
        assert anonymous.status_code == 401
        assert anonymous.headers["access-control-allow-origin"] == UI

        assert (await browser.get(f"{codec_server}/login")).status_code == 200
        wrong = await browser.post(f"{codec_server}/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "codec_session" not in browser.cookies
        signed_in = await browser.post(f"{codec_server}/login", data={"token": TOKEN})
        assert signed_in.status_code == 200
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/codecs" in cookie
        decoded = await browser.post(f"{codec_server}/decode", content=body, headers={"Origin": UI})
        assert decoded.status_code == 200
        assert decoded.headers["access-control-allow-origin"] == UI
        [plain] = json_format.Parse(decoded.content, Payloads()).payloads
        assert plain.metadata["encoding"] == b"json/plain"
        # A cookie that is not the server's own lets nobody in.
        browser.cookies.set("codec_session", "9999999999.forged", path="/codecs")
        forged = await browser.post(f"{codec_server}/decode", content=body)
        assert forged.status_code == 401


async def test_the_temporal_cli_shows_decoded_payloads_through_the_codec_server(
    dev_env: WorkflowEnvironment, encrypted: tuple[Client, str], codec_server: str
) -> None:
    _, workflow_id = encrypted
    address = dev_env.client.service_client.config.target_host

    async def show(*codec: str) -> dict[str, Any]:
        """The participant's input as ``temporal workflow show`` prints it."""
        process = await asyncio.create_subprocess_exec(
            str(TEMPORAL_CLI),
            "workflow",
            "show",
            "--workflow-id",
            workflow_id,
            "--address",
            address,
            "--output",
            "json",
            *codec,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        started = json.loads(out)["events"][0]["workflowExecutionStartedEventAttributes"]
        given: dict[str, Any] = started["input"]
        return given

    endpoint = ["--codec-endpoint", codec_server]
    [given] = (await show(*endpoint, "--codec-auth", f"Bearer {TOKEN}"))["payloads"]
    assert base64.b64decode(given["metadata"]["encoding"]) == b"json/plain"
    assert b"Head of Sealing" in base64.b64decode(given["data"])
    [stored] = (await show())["payloads"]
    assert base64.b64decode(stored["metadata"]["encoding"]) == ENCODING
