"""Opening a buffer file safely: read-only WAL reader, or a short-lived writer for maintenance.

Every way a file can be wrong (missing, not SQLite, not a buffer, newer schema) becomes one
`BufferUnusable` sentence that the CLI prints without a traceback.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.errors import EdgeError

#: The buffer schema version this inspector understands (edge/schema.sql, PRAGMA user_version).
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
#: How long a writer waits for the agent's write lock before giving up (the agent's commits are short).
WRITE_BUSY_TIMEOUT_MS = 5000
DEFAULT_BUFFER = "./edge-buffer.sqlite"
BUFFER_ENV = "GRIDTOKENX_EDGE_BUFFER"


class BufferUnusable(EdgeError):
    """The buffer cannot be used; the message is one sentence saying why and what to do."""


def default_buffer_path() -> str:
    """The configured buffer: GRIDTOKENX_EDGE_BUFFER, else the agent's default (edge.settings)."""
    env = os.environ.get(BUFFER_ENV)
    if env:
        return env
    try:
        from edge.settings import EdgeSettings
    except ImportError:  # an install without the agent: the inspector still works on copied files
        return DEFAULT_BUFFER
    return str(EdgeSettings().buffer)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise BufferUnusable(f"{path} does not exist; pass the agent's buffer with --db PATH or set {BUFFER_ENV}.")
    if path.is_dir():
        raise BufferUnusable(f"{path} is a directory, not a buffer file; pass the .sqlite file with --db PATH.")


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise BufferUnusable(f"{path} is not an SQLite database (or is corrupt); check the --db path.") from exc
        raise BufferUnusable(f"{path} cannot be read: {exc}.") from exc
    if version > SCHEMA_VERSION:
        raise BufferUnusable(
            f"{path} was written by a newer edge agent (buffer schema version {version}, this inspector "
            f"reads version {SCHEMA_VERSION}); upgrade gridtokenx to inspect it."
        )
    missing = {"readings", "quarantine", "drops", "batches", "counters"} - tables
    if missing:
        raise BufferUnusable(
            f"{path} is an SQLite file but not an edge buffer (no {', '.join(sorted(missing))} table); "
            "check the --db path."
        )


def _connect(uri: str, path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise BufferUnusable(f"{path} cannot be opened: {exc}; check its permissions.") from exc


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A WAL reader: never takes a write lock, so the live agent is never blocked.

    A copied buffer in a read-only directory cannot get its -shm file; it is then opened as immutable.
    """
    path = Path(path)
    _check_file(path)
    conn = _connect(path.resolve().as_uri() + "?mode=ro", path)
    try:
        _check_schema(conn, path)
    except BufferUnusable:
        conn.close()
        if os.access(path.parent, os.W_OK):
            raise
        conn = _connect(path.resolve().as_uri() + "?mode=ro&immutable=1", path)
        try:
            _check_schema(conn, path)
        except BufferUnusable:
            conn.close()
            raise
    return conn


def open_writer(path: str | Path) -> sqlite3.Connection:
    """A connection for `requeue`/`purge`: waits briefly for the agent's lock, commits in small chunks."""
    path = Path(path)
    _check_file(path)
    conn = _connect(path.resolve().as_uri() + "?mode=rw", path)
    try:
        _check_schema(conn, path)
        conn.execute(f"PRAGMA busy_timeout = {WRITE_BUSY_TIMEOUT_MS}")
    except BufferUnusable:
        conn.close()
        raise
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT; the caller keeps each one short so the agent's commits are not delayed."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise BufferUnusable(
            f"the buffer stayed locked for {WRITE_BUSY_TIMEOUT_MS / 1000:.0f} s ({exc}); retry, or stop the agent."
        ) from exc
    try:
        yield conn
    except BaseException:
        # SQLite has already rolled back on some errors (SQLITE_FULL, SQLITE_IOERR): a ROLLBACK then
        # fails with "cannot rollback - no transaction is active" and would hide the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def create_buffer(path: str | Path) -> sqlite3.Connection:
    """A new, empty buffer with the real schema (tests and the benchmark)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA_PATH.read_text())
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn
