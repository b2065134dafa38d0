"""What the contact does during a dry run, and when: events planned at offsets after enrollment."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from models.events import EventKind, FlowEvent


class PlannedEvent(BaseModel):
    """An event to happen ``after`` enrollment: ``KIND@OFFSET[,key=value…]``, e.g.
    ``link_clicked@2d,step=welcome``, ``form_submitted@3h,form=1,data.topic=pricing``.
    Offsets take m, h, d or w. Keys: step (a send_email step of the flow), link, form,
    selection, project, sale, and data.NAME for form fields."""

    after: timedelta
    kind: EventKind
    step_id: str | None = None
    link: str | None = None
    form_id: int | None = None
    selection_id: int | None = None
    project_id: int | None = None
    sale_id: int | None = None
    data: dict[str, str] = {}

    @classmethod
    def parse(cls, spec: str) -> PlannedEvent:
        head, *pairs = spec.split(",")
        kind, at, offset = head.partition("@")
        units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        if not at or offset[-1:] not in units or not offset[:-1].isdigit():
            raise ValueError(f"{spec!r}: write KIND@OFFSET, e.g. link_clicked@2d")
        fields: dict[str, Any] = {"after": timedelta(**{units[offset[-1]]: int(offset[:-1])})}
        names = {"step": "step_id", "link": "link", "form": "form_id", "selection": "selection_id"}
        names |= {"project": "project_id", "sale": "sale_id"}
        data: dict[str, str] = {}
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if key.startswith("data.") and equals:
                data[key.removeprefix("data.")] = value
            elif key in names and equals:
                fields[names[key]] = value
            else:
                raise ValueError(f"{spec!r}: unknown part {pair!r}")
        return cls.model_validate({**fields, "kind": kind, "data": data})

    def event(self, flow_id: str, contact_id: int, at: datetime) -> FlowEvent:
        tracked = self.kind in (EventKind.link_clicked, EventKind.email_opened)
        return FlowEvent(
            event_id=f"dry-run-{uuid.uuid4()}",
            kind=self.kind,
            contact_id=contact_id,
            occurred_at=at,
            flow_id=flow_id if tracked else None,
            **self.model_dump(exclude={"after", "kind"}),
        )
