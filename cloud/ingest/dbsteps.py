"""Database steps of ingest with a deadline each, and the one place that decides what a failure is.

A *transient* failure is the database being away or busy: the connection was lost or refused, a
deadline passed (no answer, e.g. a black-holed connection), the server cancelled the statement,
a serialization failure or deadlock, the server out of resources or shutting down. Those are
retried with backoff: every write is idempotent. Anything else (a data exception, a constraint
violation, a Python-side encoding error, a bug) is *poison*: retrying it would stall the loop
forever, so the caller isolates it instead (`consumer.IngestConsumer.store`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from cloud.errors import CloudError
from cloud.ingest.store import NoPartition, StaleDecision
from runtime.backoff import Backoff, pause

log = logging.getLogger(__name__)
T = TypeVar("T")

#: SQLSTATE classes of transient faults: 08 connection exception, 40 transaction rollback
#: (serialization failure, deadlock), 53 insufficient resources, 57 operator intervention
#: (query cancelled by statement_timeout, admin shutdown, cannot connect now), 58 system error.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_BACKOFF_START, _BACKOFF_MAX = 0.25, 5.0


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, StaleDecision):
        return True  # rolled back; deciding again from fresh context resolves it
    if isinstance(exc, NoPartition):
        return True  # creating the partitions failed (e.g. a lock wait timed out): try again
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in TRANSIENT_SQLSTATE_CLASSES
    if isinstance(exc, ValueError):
        return False  # asyncpg's client-side DataError and friends: the input, not the database
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError)


class Poison(CloudError):
    """A database step failed for a reason other than a transient fault."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class Abandoned(CloudError):
    """Stopping while the database is unreachable: the batch is left unacked for the edge to re-send."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Ingest runs single statements and never changes session state, so a connection goes back
    to the pool as it is: asyncpg's default reset is a round trip that hangs on a frozen database."""


class Database:
    """The consumer's pool, every use under a deadline, and the truth about the database's health."""

    def __init__(self, dsn: str, *, deadline: float, stop: asyncio.Event,
                 on_health: Callable[[bool], None] = lambda up: None) -> None:
        self.dsn = dsn
        self._on_health = on_health
        self.deadline = deadline
        self._stop = stop
        self._pool: asyncpg.Pool | None = None
        self.problem: str | None = None
        """Why the database is not usable right now, or None."""

    async def open(self) -> None:
        # statement_timeout lets the server cancel a slow statement itself (SQLSTATE 57014); the
        # client-side deadline covers what the server cannot: a connection that no longer answers.
        server_ms = max(100, int(self.deadline * 1000) - 200)
        async with asyncio.timeout(self.deadline * 2):
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=3, timeout=self.deadline, reset=_no_reset,
                server_settings={"statement_timeout": str(server_ms), "idle_in_transaction_session_timeout": "60000"})

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self.problem is not None:
            pool.terminate()  # a graceful close would wait on connections that no longer answer
            return
        try:
            await asyncio.wait_for(pool.close(), self.deadline)
        except TimeoutError:
            pool.terminate()

    async def once(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """One attempt under the deadline. A connection that failed is never handed back as is."""
        assert self._pool is not None, "Database.open() first"
        async with asyncio.timeout(self.deadline):
            conn = await self._pool.acquire()
            try:
                result = await work(conn)
            except BaseException as exc:
                if not isinstance(exc, asyncpg.PostgresError) or is_transient(exc):
                    conn.terminate()  # mid-protocol, timed out or cancelled: unusable
                await self._pool.release(conn)
                raise
            await self._pool.release(conn)
            return result

    async def run(self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`work` until it succeeds; transient faults are retried with backoff (logged once per
        outage), poison raises `Poison`, and stopping during an outage raises `Abandoned`."""
        backoff = Backoff(_BACKOFF_START, _BACKOFF_MAX)
        while True:
            try:
                result = await self.once(work)
            except Exception as exc:
                if not is_transient(exc):
                    raise Poison(exc) from exc
                self.failed(f"{what}: {type(exc).__name__}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}")
                if self._stop.is_set():
                    raise Abandoned(what) from exc
                await pause(self._stop, backoff.next())
                continue
            self.recovered()
            return result

    def failed(self, why: str) -> None:
        if self.problem is None:
            log.error("the database is not answering (%s); ingest waits and retries, /healthz reports 503", why)
            self._on_health(False)
        self.problem = why

    def recovered(self) -> None:
        if self.problem is not None:
            log.warning("the database answers again; ingest resumes")
            self._on_health(True)
        self.problem = None

    async def watch(self, every: float = 2.0) -> None:
        """Probe the database even while no batch arrives, so /healthz tells the truth within
        `every` + deadline seconds of a freeze. Runs until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self.once(lambda conn: conn.fetchval("SELECT 1"))
            except Exception as exc:
                if is_transient(exc):
                    self.failed(f"health probe: {type(exc).__name__}")
            else:
                self.recovered()
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))
