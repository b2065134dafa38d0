"""Scripts that run_script steps start by name, with the participant's context.

A script is an async callable that takes a ``ScriptContext`` and returns something printable
(or None). Register it in any module of this package, which the worker imports on start::

    # scripts/crm_sync.py
    from scripts import ScriptContext, script

    @script("crm_sync", timeout=timedelta(minutes=2), attempts=5)
    async def crm_sync(context: ScriptContext) -> str:
        ...

From another installed package, name it under the entry-point group ``marketing_flows.scripts``
(the entry point's name is the script's name unless the callable was registered with
``@script``)::

    [project.entry-points."marketing_flows.scripts"]
    crm_sync = "my_package.sync:crm_sync"

A webhook is a script too: ``webhook("notify_portal", url="https://...")`` registers one that
POSTs the context as JSON and fails on a non-2xx answer (and is retried like any script).

Each start of a script is its own ``Script`` workflow (``workflows.script``): it shows in the
Temporal UI, retries the script up to ``attempts`` times with each attempt limited to
``timeout``, and its failure never reaches the participant that started it. Scripts may run more
than once (a retry after a timeout): make them idempotent, e.g. with ``context.run_key``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import entry_points

from pydantic import BaseModel

ENTRY_POINT_GROUP = "marketing_flows.scripts"
DEFAULT_TIMEOUT = timedelta(minutes=5)
DEFAULT_ATTEMPTS = 5


class ScriptContext(BaseModel):
    """What a script knows about the participant that started it."""

    run_key: str  # unique per start: participant, step and visit
    flow_id: str
    flow_name: str
    step_id: str
    step_name: str | None
    contact_id: int
    contact: dict[str, object]  # the contact's facts (models.crm.contact_facts) at the start


ScriptFunction = Callable[[ScriptContext], Awaitable[object]]


@dataclass(frozen=True)
class Script:
    name: str
    run: ScriptFunction
    timeout: timedelta = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    kind: str = "python"  # "python" | "webhook"


_REGISTRY: dict[str, Script] = {}


def register(entry: Script) -> Script:
    """Add a script; a second script under the same name is a mistake, refused."""
    existing = _REGISTRY.get(entry.name)
    if existing is not None and existing.run is not entry.run:
        raise ValueError(f"a script named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def script(
    name: str, *, timeout: timedelta = DEFAULT_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS
) -> Callable[[ScriptFunction], ScriptFunction]:
    """Register the decorated async function as the script ``name``."""

    def decorate(function: ScriptFunction) -> ScriptFunction:
        register(Script(name, function, timeout, attempts))
        return function

    return decorate


def webhook(
    name: str,
    url: str,
    *,
    timeout: timedelta = timedelta(seconds=30),
    attempts: int = DEFAULT_ATTEMPTS,
) -> Script:
    """Register a script that POSTs the context as JSON to ``url``."""

    async def post(context: ScriptContext) -> str:
        import aiohttp  # only webhook scripts need it

        client_timeout = aiohttp.ClientTimeout(total=timeout.total_seconds())
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as http,
            http.post(url, json=context.model_dump(mode="json")) as response,
        ):
            body = await response.text()
            if response.status >= 300:
                raise RuntimeError(f"{url} answered {response.status}: {body[:200]}")
            return f"{response.status} {body[:200]}"

    return register(Script(name, post, timeout, attempts, kind="webhook"))


_discovered = False


def discover_scripts() -> None:
    """Import this package's modules and load the entry points; safe to call again (a package
    installed meanwhile is picked up)."""
    global _discovered
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        if isinstance(loaded, Script):
            register(loaded)
        elif not any(s.run is loaded for s in _REGISTRY.values()):
            register(Script(entry_point.name, loaded))
    _discovered = True


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered_scripts() -> dict[str, Script]:
    """Every script: this package's modules and the entry points, discovered on first use."""
    if not _discovered:
        discover_scripts()
    return dict(_REGISTRY)
