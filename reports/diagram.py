"""A flow's graph as a picture: Graphviz (SVG or PNG, through the ``dot`` program) and Mermaid.

Every step is a box with its name, its kind and two live counts: participants *at* it now
(active participants whose current step it is, from the participants table) and participants
that went *through* it (entered it at least once, from the step visits every step's entry record
writes: ``models.engine.StepVisit``).
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import graphviz
from sqlalchemy import Engine, func
from sqlmodel import col, select

from models.database import session
from models.engine import Participant, ParticipantStatus, StepVisit
from models.flow import Flow, SendSms, Split, Step, StepGroup, WaitForAction, successors

# Fill colours by the product's five step groups (spec §3), plus finish.
GROUP_COLOURS: dict[StepGroup, str] = {
    StepGroup.send_message: "#dbeafe",
    StepGroup.flow_control: "#fef3c7",
    StepGroup.update_participant: "#dcfce7",
    StepGroup.create_activity: "#ede9fe",
    StepGroup.internal_action: "#e5e7eb",
    StepGroup.finish: "#d1d5db",
}
SPLIT_COLOUR = "#fde68a"  # the one step that branches stands out from the waits of its group
START = "__start__"
LEAVE = "__leave__"
FONT = "DejaVu Sans"


@dataclass(frozen=True)
class StepCounts:
    at: Counter[str] = field(default_factory=Counter)
    through: Counter[str] | None = None  # None: not asked


def participants_at(engine: Engine, flow_id: str) -> Counter[str]:
    """Active participants per current step, from the participants table."""
    with session(engine) as db:
        steps = db.exec(
            select(Participant.current_step).where(
                Participant.flow_id == flow_id,
                Participant.status == ParticipantStatus.active.value,
            )
        ).all()
    return Counter(step for step in steps if step is not None)


def participants_through(engine: Engine, flow_id: str) -> Counter[str]:
    """Participants that entered each step at least once (each enrollment counts), from the step
    visits."""
    with session(engine) as db:
        rows = db.exec(
            select(StepVisit.step_id, func.count(func.distinct(StepVisit.participant_id)))
            .where(StepVisit.flow_id == flow_id)
            .group_by(col(StepVisit.step_id))
        ).all()
    return Counter(dict(rows))


def _count_text(step_id: str, counts: StepCounts) -> str:
    if counts.through is None:  # not asked: say what is known
        return f"at {counts.at[step_id]}"
    return f"at {counts.at[step_id]} · through {counts.through[step_id]}"


def _exits(step: Step) -> list[str]:
    """Labels of the ways a step can leave the flow other than finish (spec §7)."""
    if isinstance(step, Split) and step.everyone_else.next is None:
        return ["everyone else"]
    if isinstance(step, SendSms) and step.exit_if_no_mobile:
        return ["no mobile"]
    if isinstance(step, WaitForAction) and step.exit_on_timeout:
        return ["no response"]
    return []


def _edges(step: Step) -> list[tuple[str, str]]:
    """(target step id, label) for each way on from a step, in branch order."""
    if isinstance(step, Split):
        edges = [(branch.next, branch.name) for branch in step.branches]
        if step.everyone_else.next is not None:
            edges.append((step.everyone_else.next, "everyone else"))
        return edges
    return [(target, "") for target in successors(step)]


def to_graphviz(flow: Flow, version: int, counts: StepCounts, note: str = "") -> graphviz.Digraph:
    """The flow as a Graphviz graph: steps in flow order, branches labelled, exits dashed, and
    the steps that hold participants now outlined in blue."""
    graph = graphviz.Digraph(name=flow.id)
    title = f"{flow.name} ({flow.id}) v{version}" + (f"\n{note}" if note else "")
    graph.attr(label=title, labelloc="t", fontsize="18", fontname=FONT, rankdir="TB", dpi="110")
    graph.attr("node", shape="box", style="rounded,filled", fontname=FONT, margin="0.2")
    graph.attr("edge", fontname=FONT, fontsize="11", color="#4b5563")
    graph.node(
        START,
        "start",
        shape="circle",
        style="filled",
        fillcolor="#111827",
        fontcolor="white",
        fontsize="10",
        width="0.5",
        fixedsize="true",
    )
    graph.edge(START, flow.start)
    leaves = False
    for step in flow.steps:
        held = counts.at[step.id] > 0
        label = (
            f"<<b>{html.escape(step.label)}</b><br/>"
            f'<font point-size="10" color="#374151">{step.type}</font><br/>'
            f'<font point-size="11">{html.escape(_count_text(step.id, counts))}</font>>'
        )
        graph.node(
            step.id,
            label,
            fillcolor=SPLIT_COLOUR if isinstance(step, Split) else GROUP_COLOURS[step.group],
            penwidth="2.5" if held else "1",
            color="#1d4ed8" if held else "#6b7280",
        )
        for target, edge_label in _edges(step):
            graph.edge(step.id, target, label=f" {edge_label} " if edge_label else "")
        for exit_label in _exits(step):
            leaves = True
            graph.edge(step.id, LEAVE, label=f" {exit_label} ", style="dashed")
    if leaves:
        graph.node(LEAVE, "leaves the flow", shape="box", style="dashed", fontsize="11")
    return graph


def _mermaid_text(text: str) -> str:
    return html.escape(text).replace("|", "&#124;")


def to_mermaid(flow: Flow, version: int, counts: StepCounts) -> str:
    """Mermaid flowchart text (for a Markdown code block or any Mermaid renderer)."""
    ids = {step.id: f"s{index}" for index, step in enumerate(flow.steps)}
    lines = [
        "---",
        f"title: {_mermaid_text(flow.name)} ({flow.id}) v{version}",
        "---",
        "flowchart TD",
        "  start((start))",
        f"  start --> {ids[flow.start]}",
    ]
    leaves = False
    for step in flow.steps:
        node = ids[step.id]
        label = (
            f"<b>{_mermaid_text(step.label)}</b><br/>{step.type}<br/>"
            f"{_mermaid_text(_count_text(step.id, counts))}"
        )
        lines.append(f'  {node}["{label}"]')
        for target, edge_label in _edges(step):
            arrow = f'-->|"{_mermaid_text(edge_label)}"|' if edge_label else "-->"
            lines.append(f"  {node} {arrow} {ids.get(target, target)}")
        for exit_label in _exits(step):
            leaves = True
            lines.append(f'  {node} -.->|"{exit_label}"| leave')
    if leaves:
        lines.append("  leave[/leaves the flow/]")
    return "\n".join(lines) + "\n"


class DrawingUnavailable(RuntimeError):
    """Graphviz's ``dot`` program is not installed."""


def live_note(flow: Flow, through: bool = True) -> str:
    now = datetime.now(ZoneInfo(flow.time_zone)).strftime("%Y-%m-%d %H:%M")
    counted = "at and through each step" if through else "at each step"
    return f"participants {counted}, {now} {flow.time_zone}"


def write_picture(graph: graphviz.Digraph, path: Path) -> Path:
    """Render to ``path`` in the format its suffix names (.svg, .png, .pdf)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        graph.render(outfile=path, format=path.suffix.lstrip("."), cleanup=True)
    except graphviz.ExecutableNotFound:
        raise DrawingUnavailable(
            "drawing needs Graphviz's dot program (apt-get install graphviz); "
            "--mermaid needs nothing"
        ) from None
    return path
