"""The two commands that write: `requeue` (rejected/quarantined → pending) and `purge` (delete by filter).

Both first compute a plan read-only (what matches), then apply it in chunks of CHUNK rows, each its own
BEGIN IMMEDIATE transaction, so the live agent waits at most a few milliseconds for the lock.
"""

from __future__ import annotations

import sqlite3
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from edge.buffer import purge_row, requeue_quarantined, requeue_rejected
from edge.inspect import queries
from edge.inspect.db import write_transaction
from edge.inspect.filters import Filter
from edge.inspect.models import ChangeReport, Row, Source
from edge.integrity import is_full
from edge.reserve import release_reserve

CHUNK = 500
SAMPLE = 10
REQUEUE_SOURCES: tuple[Source, ...] = ("rejected", "quarantined")
#: Deleting a reading the cloud never acked is a drop: it gets a drops row (never silent).
UNACKED: tuple[Source, ...] = ("pending", "inflight")
PURGE_DETAIL = "purged by `gridtokenx edge inspect purge`"


class Keys:
    """The planned rows: ids per source in compact arrays (8 bytes a row, so a 1M-row purge stays small)."""

    def __init__(self) -> None:
        self._ids: dict[Source, array[int]] = {}

    def add(self, source: Source, row_id: int) -> None:
        self._ids.setdefault(source, array("q")).append(row_id)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    def chunks(self) -> Iterator[list[tuple[Source, int]]]:
        for source, ids in self._ids.items():
            for start in range(0, len(ids), CHUNK):
                yield [(source, row_id) for row_id in ids[start:start + CHUNK]]


def plan(conn: sqlite3.Connection, flt: Filter, action: str) -> tuple[ChangeReport, Keys]:
    """What `action` would touch: the report (applied=False) and the rows' keys, in id order per source."""
    keys = Keys()
    by_source: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    total_bytes = 0
    sample: list[Row] = []
    for row, _ in queries.iter_rows(conn, flt):
        keys.add(row.source, row.id)
        by_source[row.source] += 1
        by_reason[row.reason or "-"] += 1
        total_bytes += row.size
        if len(sample) < SAMPLE:
            sample.append(row)
    report = ChangeReport(action=action, applied=False, matched=len(keys), matched_bytes=total_bytes,  # type: ignore[arg-type]
                          by_source=dict(by_source), by_reason=dict(by_reason), changed=0, skipped=0,
                          sample=sample)
    return report, keys


def requeue(conn: sqlite3.Connection, keys: Keys, *, now: float | None = None,
            progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Put rows back to pending; returns (requeued, skipped).

    A rejected reading is re-inserted under a new id (the back of the forwarding queue) with its reason
    cleared, so an agent that forwards by ascending id sees it. A quarantined payload is parsed again; if
    it is now a reading, it moves into `readings`; if not, or its (meter, seq) is already buffered, it stays.
    """
    moved = skipped = 0
    for chunk in keys.chunks():
        with write_transaction(conn):
            for source, row_id in chunk:
                if source == "rejected":
                    moved += requeue_rejected(conn, row_id)
                elif source == "quarantined":
                    ok = requeue_quarantined(conn, row_id, time.time() if now is None else now)
                    moved += ok
                    skipped += not ok
        if progress:
            progress(len(chunk))
    return moved, skipped


def purge(conn: sqlite3.Connection, keys: Keys, *, now: float | None = None,
          progress: Callable[[int], None] | None = None) -> int:
    """Delete the planned rows; unacked readings leave a drops row (reason expired). Returns rows deleted.

    On a full disk (SQLITE_FULL) the reserve file the agent keeps next to the buffer is released
    once and the chunk retried: purging is how a technician frees space, so it must work then."""
    deleted = 0
    released = False
    for chunk in keys.chunks():
        while True:
            try:
                deleted += _purge_chunk(conn, chunk, time.time() if now is None else now)
                break
            except sqlite3.OperationalError as exc:
                if released or not is_full(exc):
                    raise
                released = True
                if not release_reserve(_db_path(conn)):
                    raise
        if progress:
            progress(len(chunk))
    return deleted


def _purge_chunk(conn: sqlite3.Connection, chunk: list[tuple[Source, int]], stamp: float) -> int:
    with write_transaction(conn):
        return sum(purge_row(conn, source, row_id, stamp, detail=PURGE_DETAIL) for source, row_id in chunk)


def _db_path(conn: sqlite3.Connection) -> Path:
    return Path(str(conn.execute("PRAGMA database_list").fetchone()[2]))
