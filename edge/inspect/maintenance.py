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

from edge.inspect import queries
from edge.inspect.db import write_transaction
from edge.inspect.filters import Filter, table_of
from edge.inspect.models import ChangeReport, Row, Source
from edge.integrity import is_full
from edge.reserve import release_reserve
from protocol import ProtocolError, Reason, parse_payload

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
                    moved += _requeue_rejected(conn, row_id)
                elif source == "quarantined":
                    ok = _requeue_quarantined(conn, row_id, time.time() if now is None else now)
                    moved += ok
                    skipped += not ok
        if progress:
            progress(len(chunk))
    return moved, skipped


def _requeue_rejected(conn: sqlite3.Connection, row_id: int) -> int:
    # Same row under a new id; attempts and send times stay, so `show` keeps the reading's history.
    cols = "meter_id, seq, payload, size, reading_end, received_at, batch_id, attempts, first_sent_at, last_sent_at"
    row = conn.execute(f"SELECT {cols} FROM readings WHERE id = ? AND state = 'rejected'",
                       (row_id,)).fetchone()
    if row is None:  # the agent or another technician changed it meanwhile
        return 0
    conn.execute("DELETE FROM readings WHERE id = ?", (row_id,))
    conn.execute(f"INSERT INTO readings ({cols}, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                 row)
    return 1


def _requeue_quarantined(conn: sqlite3.Connection, row_id: int, now: float) -> bool:
    row = conn.execute("SELECT payload FROM quarantine WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        return False
    payload = bytes(row[0])
    try:
        reading = parse_payload(payload).reading
    except ProtocolError:
        return False
    # received_at is now: the TTL starts again from the technician's decision, not the first arrival.
    cur = conn.execute(
        "INSERT INTO readings (meter_id, seq, payload, size, reading_end, received_at, state) "
        "VALUES (?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT (meter_id, seq) DO NOTHING",
        (reading.meter_id, reading.seq, payload, len(payload), reading.end, now))
    if cur.rowcount == 0:
        return False
    conn.execute("DELETE FROM quarantine WHERE id = ?", (row_id,))
    return True


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
    deleted = 0
    with write_transaction(conn):
        for source, row_id in chunk:
            if source in UNACKED:
                conn.execute(
                    "INSERT INTO drops (meter_id, seq, size, reason, detail, received_at, dropped_at) "
                    "SELECT meter_id, seq, size, ?, ?, received_at, ? FROM readings WHERE id = ? AND state = ?",
                    (Reason.EXPIRED.value, PURGE_DETAIL, stamp, row_id, source))
            cur = conn.execute(f"DELETE FROM {table_of(source)} WHERE id = ?"
                               + (" AND state = ?" if table_of(source) == "readings" else ""),
                               (row_id, source) if table_of(source) == "readings" else (row_id,))
            deleted += cur.rowcount
    return deleted


def _db_path(conn: sqlite3.Connection) -> Path:
    return Path(str(conn.execute("PRAGMA database_list").fetchone()[2]))
