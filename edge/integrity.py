"""Is the buffer file damaged? `PRAGMA quick_check`, bounded in time, and one sentence about it.

Used by the agent at start (it refuses to write into a damaged file) and by `edge inspect doctor`.
quick_check reads every page (O(file size), about 1 s per 100-200 MB here): a time bound keeps a
start or a doctor run short on a large file; an unfinished check is reported as such, never as OK.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

#: SQLITE_CORRUPT and SQLITE_NOTADB (primary result codes).
DAMAGE_CODES = frozenset({11, 26})
REPAIR = 'docs/edge-inspect.md, "Repairing a damaged buffer"'


@dataclass(frozen=True, slots=True)
class Integrity:
    ok: bool | None
    """True: no damage found; False: damage (see problems); None: the check did not finish in time."""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def is_damage(exc: BaseException) -> bool:
    """True for SQLite's 'database disk image is malformed' / 'file is not a database'."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in DAMAGE_CODES
    text = str(exc)
    return "malformed" in text or "not a database" in text


def is_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL ('database or disk is full')."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == 13
    return "disk is full" in str(exc)


def quick_check(conn: sqlite3.Connection, *, max_seconds: float = 10.0, max_problems: int = 10) -> Integrity:
    started = time.monotonic()
    deadline = started + max_seconds
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA quick_check({int(max_problems)})")]
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            return Integrity(None, [], time.monotonic() - started)
        if is_damage(exc):
            return Integrity(False, [str(exc)], time.monotonic() - started)
        raise
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return Integrity(False, [str(exc)], time.monotonic() - started)
        raise
    finally:
        conn.set_progress_handler(None, 0)
    took = time.monotonic() - started
    if rows == ["ok"]:
        return Integrity(True, [], took)
    return Integrity(False, rows, took)


def damaged_sentence(path: object, detail: str) -> str:
    return (f"the buffer {path} is damaged ({detail}); the agent will not write into it: stop it, move the "
            f"file aside and salvage it as {REPAIR} says (`gridtokenx edge inspect doctor --db {path}` names "
            "the damage)")
