"""Event-to-participant latency: a click on a tracked link until the participant's history holds
the ``event`` signal it caused.

    .venv/bin/python bench/event_latency.py [--clicks 100] [--database-url URL]

Starts everything on loopback: the Temporal dev server (in memory), a SQLite database of its own
(or ``--database-url``), the worker and the tracking service. One participant waits in a flow; the
clicks go one after the other over real HTTP, each timed from just before the request to the
server's timestamp on the signal in the history (one clock: same machine), so no polling interval
is in the figure. Also shown: how long the visitor waited for the redirect.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from control.enrollment import enroll
from control.flows import deploy_flow
from models.database import get_engine, migrate, session
from models.demo import SPRING_OFFER_URL, seed_demo
from models.participant import participant_workflow_id
from models.tracking_links import Claims, TrackingLinks
from testkit.servers import free_port, start_dev_server
from testkit.waiting import assert_eventually
from tracking.app import TrackingSettings, create_app
from tracking.server import serving
from worker import build_worker

CONTACT = 1
FLOW = {
    "id": "latency",
    "name": "Latency",
    "start": "wait",
    "steps": [
        {"id": "wait", "type": "wait_time", "amount": 30, "unit": "days", "next": "done"},
        {"id": "done", "type": "finish"},
    ],
}


async def _signal_times(client: Client, workflow_id: str) -> list[float]:
    """The server's time of every signal in the history, as Unix seconds."""
    times: list[float] = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            times.append(event.event_time.seconds + event.event_time.nanos / 1e9)
    return times


def _has_signals(count: int, times: list[float]) -> bool:
    return len(times) >= count


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _describe(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name}: median {statistics.median(ms):.1f} ms, p90 {_percentile(ms, 0.9):.1f} ms, "
        f"min {min(ms):.1f} ms, max {max(ms):.1f} ms"
    )


async def measure(clicks: int, database_url: str | None, folder: Path) -> None:
    engine = get_engine(database_url or f"sqlite:///{folder / 'flows.db'}")
    migrate(engine)
    with session(engine) as db:
        seed_demo(db)
    env = await start_dev_server()
    try:
        client = env.client
        task_queue = f"latency-{uuid.uuid4()}"
        port = free_port()
        links = TrackingLinks(base_url=f"http://127.0.0.1:{port}", secret=uuid.uuid4().hex)
        settings = TrackingSettings(links=links, task_queue=task_queue, port=port)
        flow_id = deploy_flow(engine, dict(FLOW)).flow_id
        workflow_id = participant_workflow_id(flow_id, CONTACT)
        async with (
            build_worker(client, engine, task_queue=task_queue),
            serving(create_app(engine, client, settings), host="127.0.0.1", port=port),
            httpx.AsyncClient() as http,
        ):
            await enroll(client, engine, flow_id, [CONTACT], task_queue=task_queue)
            await asyncio.sleep(1)  # the participant settles into its wait
            to_signal: list[float] = []
            to_redirect: list[float] = []
            for index in range(clicks):
                # A link of its own per click: clicks of one link within the hour are one event.
                url = links.click_url(
                    Claims(
                        contact_id=CONTACT,
                        flow_id=flow_id,
                        step_id="mail",
                        url=f"{SPRING_OFFER_URL}?click={index}",
                    )
                )
                started = time.time()
                response = await http.get(url)
                to_redirect.append(time.time() - started)
                assert response.status_code == 302, response.text
                times = await assert_eventually(
                    lambda: _signal_times(client, workflow_id),
                    timeout=60,
                    interval=0.005,
                    until=functools.partial(_has_signals, index + 1),
                    what=f"click {index + 1}'s signal in the history",
                )
                to_signal.append(times[index] - started)
        print(f"{clicks} clicks, one participant, {engine.url.get_backend_name()}")
        print(_describe("click -> signal in the participant's history", to_signal))
        print(_describe("click -> 302 received by the visitor", to_redirect))
    finally:
        await env.shutdown()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clicks", type=int, default=100)
    parser.add_argument("--database-url", help="default: a new SQLite file in a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(measure(args.clicks, args.database_url, Path(folder)))


if __name__ == "__main__":
    main()
