"""The flow versions a worker's participants travel: one decoded copy of each, shared.

Every participant's input carries its flow document, and decoding it gives each participant its
own copy: at campaign scale the worker's cache would hold thousands of equal flows. A flow version
never changes once deployed, and workflow code only reads it, so participants of one version can
share one object. A flow is shared only when equal to the one already held (tests and dry runs
reuse ids and versions for other content), so a participant always runs exactly what its input
says: replay stays deterministic. Entries are weak: a version leaves once no participant holds it.
"""

from __future__ import annotations

import threading
import weakref

from models.flow import Flow

_held: weakref.WeakValueDictionary[tuple[str, int], Flow] = weakref.WeakValueDictionary()
# Workflow activations run on the SDK's thread pool.
_lock = threading.Lock()


def shared(flow: Flow, version: int) -> Flow:
    """The worker's copy of ``flow`` (version ``version``) if it holds an equal one, else ``flow``
    itself, which becomes the worker's copy when it holds none."""
    key = (flow.id, version)
    with _lock:
        held = _held.get(key)
        if held is None:
            _held[key] = flow
            return flow
    return held if held == flow else flow
