"""run_script: load the participant's context for a registered script, then run the script.

Both run inside the ``Script`` workflow (``workflows.script``), never in the participant's.
The contact's data travels in neither's input nor result (they are kept in the ``Script``
history): ``prepare_script`` checks the contact exists, and each attempt of ``run_script`` reads
its facts. Scripts prepared before carry the facts in their context, and use those.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel
from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.crm import missing_contact
from models.crm import contact_facts
from models.database import session
from scripts import ScriptContext, registered_scripts


class ScriptStart(BaseModel):
    """What a participant hands the script workflow it starts."""

    script: str
    run_key: str
    flow_id: str
    flow_name: str
    step_id: str
    step_name: str | None
    contact_id: int


class PreparedScript(BaseModel):
    script: str
    timeout_seconds: float
    attempts: int
    context: ScriptContext


def _unknown(name: str) -> ApplicationError:
    # Validation refuses unknown names; a worker deployed without the script still must not
    # retry forever.
    return ApplicationError(f"no script named {name!r}", type="UnknownScript", non_retryable=True)


class ScriptActivities:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @activity.defn
    def prepare_script(self, start: ScriptStart) -> PreparedScript:
        """The script's limits and its context, the contact's data left for ``run_script``."""
        entry = registered_scripts().get(start.script)
        if entry is None:
            raise _unknown(start.script)
        self._facts(start.contact_id)  # a contact deleted meanwhile fails here, for good
        return PreparedScript(
            script=start.script,
            timeout_seconds=entry.timeout.total_seconds(),
            attempts=entry.attempts,
            context=ScriptContext(
                run_key=start.run_key,
                flow_id=start.flow_id,
                flow_name=start.flow_name,
                step_id=start.step_id,
                step_name=start.step_name,
                contact_id=start.contact_id,
                contact={},
            ),
        )

    @activity.defn
    async def run_script(self, prepared: PreparedScript) -> str:
        """One attempt at the script; what it returned, as text."""
        entry = registered_scripts().get(prepared.script)
        if entry is None:
            raise _unknown(prepared.script)
        context = prepared.context
        if not context.contact:
            facts = await asyncio.to_thread(self._facts, context.contact_id)
            context = context.model_copy(update={"contact": facts})
        result = await entry.run(context)
        return "" if result is None else str(result)

    def _facts(self, contact_id: int) -> dict[str, object]:
        with session(self._engine) as db:
            facts = contact_facts(db, contact_id)
        if facts is None:
            raise missing_contact(contact_id)
        return facts
