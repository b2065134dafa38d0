"""The benchmark scripts still run: the tiniest email, history and memory parts, figures not judged.

Performance goals live in ``bench/`` (figures against a baseline measured in the same run); this
test only keeps the scripts from rotting, so it checks what they report, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_email_history_and_memory_parts_run_and_report(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--only",
            "email,history,memory",
            "--rounds",
            "1",
            "--participants",
            "5",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard, not a performance goal
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    [results] = tmp_path.glob("*.json")
    document = json.loads(results.read_text())
    assert document["machine"]["nproc"] >= 1
    parts = {part["part"]: part for part in document["parts"]}
    assert set(parts) == {"email", "history", "memory"}
    assert not any(part["failed"] for part in parts.values())

    email = {row["metric"]: row for row in parts["email"]["rows"]}
    rates = [metric for metric in email if metric.startswith("messages/s (baseline: ")]
    assert len(rates) == 3  # the raw loop, plain workflows with an activity, with a local one
    for metric in rates:
        assert len(email[metric]["engine"]) == len(email[metric]["baseline"]) == 1
        assert email[metric]["engine_median"] > 0 and email[metric]["ratio"] > 0
    assert parts["email"]["notes"] == []  # every participant's message was delivered

    history = {row["metric"]: row for row in parts["history"]["rows"]}
    for kind in ("send_email", "send_sms", "wait_time", "split", "add_to_list", "finish"):
        assert history[f"{kind}: events"]["engine"][0] > 0
    assert history["send_email: events"]["baseline"] == [6.0]  # one activity: 3 + 3 task events
    assert history["plain workflow with one activity: events"]["baseline"] == [11.0]

    # Each side in a process of its own: readings came back from both.
    memory = {row["metric"]: row for row in parts["memory"]["rows"]}
    for metric in ("worker RSS per cached workflow", "server RSS per parked workflow"):
        assert len(memory[metric]["engine"]) == len(memory[metric]["baseline"]) == 1
    for metric in ("worker RSS with all parked", "server RSS with all parked"):
        assert min(memory[metric]["engine"] + memory[metric]["baseline"]) > 0
    # Every side ran again with a cache of ten, plain workflows with the participant's commands too.
    net = "worker RSS per cached workflow, less the growth with a cache of ten"
    for metric in (net, f"{net}: against plain workflows with the participant's commands"):
        assert len(memory[metric]["engine"]) == len(memory[metric]["baseline"]) == 1

    [markdown] = tmp_path.glob("*.md")
    assert "| messages/s (baseline: plain workflows, one activity each) | msg/s |" in (
        markdown.read_text()
    )
