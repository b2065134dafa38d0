"""Faults the fault suite and the bench's burst part inject beside a running worker."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine


def hold_write_lock(engine: Engine, seconds: float, held: threading.Event) -> None:
    """Another writer: SQLite's write lock taken and kept (readers go on, writers wait)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        connection.rollback()
