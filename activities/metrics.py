"""The engine's own Prometheus metrics, next to temporalio's: what the message steps did.

They go through the worker's Temporal runtime (``activity.metric_meter()``), so they are served
on the same endpoint as the SDK's metrics (``worker.py``: ``METRICS_PORT``, default 9464) and
cost nothing when the runtime has no metrics configured.

    flows_messages_total{channel="email"|"sms", status="sent"|"skipped"|"failed"|...}
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar, cast

from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from models.ledger import DeliveryOutcome
from models.settings import get_settings

P = ParamSpec("P")
R = TypeVar("R")

MESSAGES = "flows_messages_total"


def metrics_runtime(port: int | None = None, host: str | None = None) -> Runtime:
    """A Temporal runtime that serves Prometheus metrics on ``host:port`` (``METRICS_HOST``,
    loopback unless told otherwise: the metrics name flows and steps; ``METRICS_PORT``).

    Create one per process: it binds the port."""
    settings = get_settings()
    port = port if port is not None else settings.metrics_port
    host = host if host is not None else settings.metrics_host
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 host in brackets
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


def count_messages(outcomes: Iterable[DeliveryOutcome]) -> None:
    """Count each send's outcome once per completed activity, by channel and status.

    A retry that finds an earlier attempt's outcome in the ledger counts it then: the earlier
    attempt never completed, so it never counted. Outside an activity (a direct call in a test)
    there is nothing to count on."""
    if not activity.in_activity():
        return
    counter = activity.metric_meter().create_counter(
        MESSAGES, "Messages the flow steps handled, by channel and outcome", "messages"
    )
    for outcome in outcomes:
        counter.add(1, {"channel": outcome.channel, "status": outcome.status.value})


def _outcomes(result: object) -> list[DeliveryOutcome]:
    found = result if isinstance(result, list) else [result]
    # A participant that left at the step's entry was not a message.
    return [
        outcome
        for outcome in found
        if isinstance(outcome, DeliveryOutcome) and outcome.leave_reason is None
    ]


def counts_messages(send: Callable[P, R]) -> Callable[P, R]:
    """Count the outcomes a message activity returns; put it under ``@activity.defn``."""
    if inspect.iscoroutinefunction(send):
        asynchronous = cast(Callable[P, Awaitable[object]], send)

        @functools.wraps(send)
        async def counted_async(*args: P.args, **kwargs: P.kwargs) -> object:
            result = await asynchronous(*args, **kwargs)
            count_messages(_outcomes(result))
            return result

        return cast(Callable[P, R], counted_async)

    @functools.wraps(send)
    def counted(*args: P.args, **kwargs: P.kwargs) -> R:
        result = send(*args, **kwargs)
        count_messages(_outcomes(result))
        return result

    return counted
