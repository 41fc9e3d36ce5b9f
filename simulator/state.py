"""The fleet's non-volatile memory: per-meter counters and the unacknowledged outbox, in SQLite.

A meter's interval job writes its new counters *and* the messages it produced in one transaction
before they are published (write-ahead). A crash, even SIGKILL, can then only cause a resend of
identical bytes (a duplicate the system absorbs), never a reused seq or a lower register. Messages
leave the outbox when their PUBACK arrives. This is also the meters' bounded offline buffer.
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from simulator.errors import SimulatorError
from simulator.faults import Fault
from simulator.meter import MeterState, Outgoing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meters (
    meter_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, export_register_wh INTEGER NOT NULL,
    import_register_wh INTEGER NOT NULL, next_start INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, meter_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, fault TEXT, export_wh INTEGER NOT NULL, register_wh INTEGER);
"""


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Inclusive runs of consecutive ids: a replay run's acknowledged rows leave in a few statements."""
    runs: list[tuple[int, int]] = []
    for i in sorted(ids):
        if runs and i <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(i, runs[-1][1]))
        else:
            runs.append((i, i))
    return runs


class StateError(SimulatorError):
    """The state file belongs to an incompatible run; the message says how to proceed."""


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Two runs on one state would reuse seqs (and kick each other's client ids off the broker).
        self._lock = path.with_name(path.name + ".lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise StateError(f"another `sim run` is using {path}: stop it, or give this run its own "
                             "--keys or --state") from exc
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a process crash; only a power cut could lose the last commit.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._next_id = (self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]) + 1

    def close(self) -> None:
        self._db.close()
        self._lock.close()  # releases the flock

    def check_meta(self, wanted: dict[str, str]) -> None:
        """Refuse to continue a state made with another interval or format (seq semantics differ)."""
        have = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        for key, value in wanted.items():
            if key in have and have[key] != value:
                raise StateError(f"the state in {self.path} was made with {key}={have[key]}, not {value}: "
                                 f"run with the same {key}, or use a fresh --state file")
        self._db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", wanted.items())

    def load_meters(self) -> dict[str, MeterState]:
        rows = self._db.execute("SELECT meter_id, seq, export_register_wh, import_register_wh, next_start "
                                "FROM meters").fetchall()
        return {r[0]: MeterState(r[1], r[2], r[3], r[4]) for r in rows}

    def load_outbox(self) -> list[Outgoing]:
        rows = self._db.execute("SELECT id, meter_id, seq, topic, payload, fault, export_wh, register_wh "
                                "FROM outbox ORDER BY id").fetchall()
        return [Outgoing(r[1], r[2], r[3], bytes(r[4]), Fault(r[5]) if r[5] else None, r[6], r[7], id=r[0])
                for r in rows]

    def commit(self, states: Iterable[tuple[str, MeterState]], items: list[Outgoing],
               done_ids: Iterable[int] = ()) -> None:
        """One transaction: new counters, new outbox items (ids assigned here), acked/dropped items out."""
        for item in items:
            item.id = self._next_id
            self._next_id += 1
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO meters VALUES (?, ?, ?, ?, ?)",
                           [(m, s.seq, s.export_register_wh, s.import_register_wh, s.next_start)
                            for m, s in states])
            db.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(i.id, i.meter_id, i.seq, i.topic, i.payload, i.fault.value if i.fault else None,
                             i.export_wh, i.register_wh) for i in items])
            db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", id_ranges(done_ids))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
