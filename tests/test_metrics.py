"""Where the Prometheus metrics listen: on loopback unless an operator says otherwise, since they
name flows and steps and anyone who reaches the port may read them."""

from __future__ import annotations

import socket
from collections.abc import Callable

from activities.metrics import metrics_runtime
from models.settings import Settings
from testkit.servers import free_port

# Linux answers every 127.x.y.z on the loopback device: a socket bound to 0.0.0.0 takes
# connections to 127.0.0.2, one bound to 127.0.0.1 does not. Any other interface would do.
ELSEWHERE = "127.0.0.2"


def _answers(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


def test_metrics_listen_on_loopback_unless_told_otherwise(
    settings_env: Callable[..., Settings],
) -> None:
    settings_env()
    port = free_port()
    runtime = metrics_runtime(port)
    assert _answers("127.0.0.1", port)
    assert not _answers(ELSEWHERE, port)

    settings_env(METRICS_HOST="0.0.0.0")
    everywhere = free_port()
    other_runtime = metrics_runtime(everywhere)
    assert _answers(ELSEWHERE, everywhere)
    del runtime, other_runtime
