"""What a participant's search attributes cost the Temporal server, measured on plain workflows.

    .venv/bin/python bench/search_attributes.py [--workflows 200] [--rounds 4]

Plain workflows that each send one message from a local activity (the email part's local-activity
baseline), three ways: without search attributes; with the five a participant starts with
(``models.search_attributes.at_start``); and with those plus the two it upserts as it leaves
(ParticipantStatus and FlowStep, in the workflow task that completes it). The variants alternate
on one in-memory dev server, in a changed order every round, and the script prints, per variant,
the medians of the server's CPU per workflow (counted until the server is quiet again, so the
visibility records written after the close are in) and of the rate. What is left between the last
variant and the engine's email part is the engine's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio import workflow
from temporalio.worker import Worker

from bench.baseline import PlainEmail, send_plain_email
from bench.harness import Server, dev_server, gather_limited, quiet, results_of, smtp_inbox
from bench.parts.email import SUBJECT, TEXT, email_flow
from models.engine import ParticipantStatus
from models.flow import Flow
from models.search_attributes import FLOW_STEP, PARTICIPANT_STATUS, at_start
from testkit.peers import Inbox

NONE, AT_START, AND_LEAVING = "none", "the five at start", "and the two as it leaves"
VARIANTS = (NONE, AT_START, AND_LEAVING)
# The email part's flow: the attributes are the ones its participants start and leave with.
FLOW = Flow.model_validate(email_flow("bench-attributes"))
FINISH = FLOW.steps[-1].id  # the flow's finish, where its participants leave


@workflow.defn(name="BenchAttributedEmail", sandboxed=False)
class AttributedEmailWorkflow:
    """One message from a local activity; with ``leave``, the participant's upsert at its end."""

    @workflow.run
    async def run(self, email: PlainEmail, leave: bool) -> str:
        reply = await workflow.execute_local_activity(
            send_plain_email, email, start_to_close_timeout=timedelta(seconds=60)
        )
        if leave:
            workflow.upsert_search_attributes(
                [
                    PARTICIPANT_STATUS.value_set(ParticipantStatus.finished.value),
                    FLOW_STEP.value_set(FINISH),
                ]
            )
        return reply


async def _round(
    server: Server, inbox: Inbox, variant: str, index: int, count: int
) -> tuple[float, float]:
    """Server CPU ms per workflow and workflows/s, for ``count`` workflows of ``variant``."""
    client = server.client
    task_queue = f"bench-attributes-{VARIANTS.index(variant)}-{index}"
    ids = [f"{task_queue}-{n}" for n in range(count)]

    def starter(n: int) -> Any:
        email = PlainEmail(
            host=inbox.settings.host,
            port=inbox.port,
            sender="news@bench.example.com",
            recipient=f"contact{n}@bench.example.org",
            display_name=f"Bench{n} Contact",
            subject=SUBJECT,
            text=TEXT,
            message_id=f"<{task_queue}-{n}@flows.local>",
            local=True,
        )
        return lambda: client.start_workflow(
            AttributedEmailWorkflow.run,
            args=[email, variant == AND_LEAVING],
            id=ids[n],
            task_queue=task_queue,
            search_attributes=None if variant == NONE else at_start(FLOW, 1, n),
        )

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[AttributedEmailWorkflow],
        activities=[send_plain_email],
        max_concurrent_activities=32,
    ):
        with server.meter.section() as usage:
            started = time.perf_counter()
            await gather_limited(32, map(starter, range(count)))
            await results_of(client, ids)
            wall = time.perf_counter() - started
            await quiet(server)
    return usage().server_cpu * 1000 / count, count / wall


async def measure(count: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    figures: dict[str, list[tuple[float, float]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch, smtp_inbox(Path(scratch)) as inbox:
        async with dev_server() as server:
            for index in range(rounds):
                shift = index % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    figures[variant].append(await _round(server, inbox, variant, index, count))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.workflows, args.rounds))
    print(f"{args.workflows} workflows x {args.rounds} rounds; search attributes:")
    for variant, rounds in figures.items():
        cpu = statistics.median(ms for ms, _ in rounds)
        rate = statistics.median(per_second for _, per_second in rounds)
        spread = " / ".join(f"{ms:.1f}" for ms, _ in rounds)
        print(f"  {variant:26s} server CPU {cpu:5.1f} ms per workflow ({spread})  {rate:5.1f}/s")


if __name__ == "__main__":
    main()
