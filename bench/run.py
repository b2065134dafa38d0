"""Run the benchmarks: ``python -m bench`` or ``python bench/run.py`` (same options).

Every part starts the servers it needs and stops them again; all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DEFAULT_TUNING, POSTGRES_SERVER, Options, PartResult, Tuning
from bench.parts import (
    burst,
    console,
    email,
    enrollment,
    history,
    memory,
    rate_limit,
    scaleout,
    simulated,
    throughput,
    tuning,
    waiting,
    waking,
)
from bench.report import (
    PROJECT_ROOT,
    database_description,
    load_average,
    machine,
    part_markdown,
    write,
)

PARTS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        email,
        throughput,
        tuning,
        history,
        enrollment,
        waiting,
        memory,
        simulated,
        burst,
        scaleout,
        waking,
        rate_limit,
        console,
    )
}
# Parts that run only when named in --only: each takes many minutes at its default size.
LONG_PARTS = {burst.NAME, scaleout.NAME, waking.NAME, rate_limit.NAME}
DEFAULT_PARTS = [name for name in PARTS if name not in LONG_PARTS]

TUNINGS: dict[str, Tuning] = {
    tuning.name: tuning
    for tuning in (
        DEFAULT_TUNING,
        Tuning("activities-32", max_concurrent_activities=32),
        Tuning("activities-8", max_concurrent_activities=8),
        Tuning("activities-4", max_concurrent_activities=4),
        Tuning("cache-50", max_cached_workflows=50),
        Tuning("pollers-2", pollers=2),
        Tuning("pollers-10", pollers=10),
    )
}
DEFAULT_TUNINGS = "default,activities-32,cache-50,pollers-2"


def _names(text: str, known: dict[str, object], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated parts to run (default: {','.join(DEFAULT_PARTS)}; "
        f"also known: {','.join(sorted(LONG_PARTS))})",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per part (median)")
    parser.add_argument(
        "--participants",
        type=int,
        default=None,
        help="participants in the email, throughput, tuning, memory, burst and scaleout parts "
        f"(defaults: {email.DEFAULT_PARTICIPANTS}, {throughput.DEFAULT_PARTICIPANTS}, "
        f"{tuning.DEFAULT_PARTICIPANTS}, {memory.DEFAULT_COUNT}, {burst.DEFAULT_PARTICIPANTS}, "
        f"{scaleout.DEFAULT_PARTICIPANTS})",
    )
    parser.add_argument(
        "--enroll-count",
        type=int,
        default=enrollment.DEFAULT_COUNT,
        help="contacts in the selection enrolled by the enrollment part",
    )
    parser.add_argument(
        "--parked",
        type=int,
        default=waiting.DEFAULT_COUNT,
        help="participants parked in a wait step by the waiting and waking parts",
    )
    parser.add_argument(
        "--tunings",
        default=DEFAULT_TUNINGS,
        help=f"worker settings the tuning part compares (known: {','.join(TUNINGS)})",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=PROJECT_ROOT / "bench" / "results",
        help="where the markdown and JSON results go",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="run the in-process parts on this PostgreSQL server instead of SQLite files (a role "
        "that may create databases, e.g. the URL `.ci/postgres.sh` prints); burst, scaleout and "
        "the worker.py processes stay on SQLite",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


async def run_parts(
    names: list[str], options: Options, save: Callable[[list[PartResult]], object]
) -> list[PartResult]:
    """Every part in turn; a part that fails is reported as such and the others still run.
    Results are saved after each part, so an interrupted run keeps what it measured."""
    results: list[PartResult] = []
    for name in names:
        module = PARTS[name]
        print(f"== {module.TITLE}", flush=True)
        started = time.perf_counter()
        try:
            result: PartResult = await module.run(options)
        except Exception as error:
            traceback.print_exc()
            result = PartResult(name, module.TITLE, "-", "-", {}, failed=repr(error))
        result.wall_seconds = time.perf_counter() - started
        print(part_markdown(result), flush=True)
        results.append(result)
        save(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = _names(args.only, dict(PARTS), "part")
    tunings = [TUNINGS[name] for name in _names(args.tunings, dict(TUNINGS), "tuning")]
    command = " ".join(["python -m bench", shlex.join(sys.argv[1:] if argv is None else argv)])
    command = command.strip()
    if args.postgres:
        os.environ[POSTGRES_SERVER] = args.postgres
    info = machine()
    info["database"] = database_description(args.postgres)
    info["load average at start (1/5/15 min)"] = load_average()
    started = time.perf_counter()
    stamp = time.strftime("%Y-%m-%d-%H%M%S")

    def save(results: list[PartResult], final: bool = False) -> tuple[Path, Path]:
        wall = time.perf_counter() - started
        if final:
            info["load average at end (1/5/15 min)"] = load_average()
        shown = command if final else f"{command}  (partial: {len(results)} of {len(names)} parts)"
        return write(results, info, shown, wall, args.results_dir, stamp)

    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        options = Options(
            rounds=args.rounds,
            participants=args.participants,
            enroll_count=args.enroll_count,
            parked_count=args.parked,
            tunings=tunings,
            workdir=Path(workdir),
        )
        results = asyncio.run(run_parts(names, options, save))
    md_path, json_path = save(results, final=True)
    wall = time.perf_counter() - started
    print(md_path.read_text(encoding="utf-8"))
    print(f"Total wall time {wall:.0f} s; results in {md_path} and {json_path}")
    return 1 if any(result.failed for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
