"""Live events from PostgreSQL to WebSocket clients, in every API process.

Producers are triggers (migrations/040_api.sql): an accepted or rejected reading, a confirmed mint
batch, whichever ingest or minter process wrote it. Each event is a row of `api_events` with an id
that becomes visible in id order, and a NOTIFY on `gridtokenx_events` wakes the hubs.

`EventHub` (one per API process) LISTENs, reads rows after its position and puts each into the
queue of every matching subscription. A subscription that starts with a client's last event id
first gets the stored events between that id and the hub's position (`replay`), then the live
ones; ids at or below what was sent are skipped, so every event reaches the client exactly once.
A client too slow to keep up is dropped (its queue is bounded) and resumes with its last id.
Accepted readings are one event per ingest statement holding reading ids (cheap for the ingest
write); the hub reads those readings' fields once per event and each wallet or meter subscriber
sees only its own readings (`view`).

`AlertWatcher` turns the minter's alert thresholds (`cloud status`) into raised/cleared events,
exactly once across processes (compare-and-swap on `api_alert_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import msgspec

from cloud.minter.status import read_status

log = logging.getLogger(__name__)

CHANNEL = "gridtokenx_events"
TOKENS_CHANNEL = "gridtokenx_tokens"
QUEUE_LIMIT = 10_000
_PAGE = 1000
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class Event(msgspec.Struct, frozen=True):
    """One notification: `kind` is readings.accepted, reading.rejected, batch.minted, alert.raised or
    alert.cleared; `data` holds its fields (readings, reason, signature, slot, ...)."""

    id: int
    kind: str
    at: float
    data: dict[str, Any]
    meters: list[str] = []
    wallets: list[str] = []


FilterKind = Literal["all", "wallet", "meter"]
ViewKey = tuple[str, str | None]


@dataclass(eq=False)
class Subscription:
    kind: FilterKind
    value: str | None = None
    queue: asyncio.Queue[Outgoing] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    dropped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> ViewKey:
        return (self.kind, self.value)

    def matches(self, ev: Event) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "wallet":
            return self.value in ev.wallets
        return self.value in ev.meters


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event as one subscription view sends it: the id and the encoded JSON text."""

    id: int
    text: str


_encode = msgspec.json.Encoder().encode


def view(ev: Event, key: ViewKey) -> Outgoing:
    """The event as seen by a wallet or meter subscriber: other wallets' readings and amounts removed."""
    kind, value = key
    data = ev.data
    if kind != "all" and ev.kind == "readings.accepted":
        field_ = "wallet" if kind == "wallet" else "meter_id"
        readings = [r for r in data.get("readings", []) if r.get(field_) == value]
        data = data | {"readings": readings, "count": len(readings)}
    elif kind == "wallet" and ev.kind == "batch.minted":
        pairs = [(w, a) for w, a in zip(data.get("wallets", []), data.get("amounts", []), strict=False) if w == value]
        data = data | {"wallets": [w for w, _ in pairs], "amounts": [a for _, a in pairs]}
    if data is ev.data and kind == "all":
        return Outgoing(ev.id, _encode(ev).decode())
    return Outgoing(ev.id, _encode(Event(ev.id, ev.kind, ev.at, data,
                                         [value] if kind == "meter" and value else ev.meters,
                                         [value] if kind == "wallet" and value else ev.wallets)).decode())


_SELECT = ("SELECT id, kind, extract(epoch FROM created_at)::float8 AS at, body::text AS body, meters, wallets,"
           " reading_ids FROM api_events")
_READINGS = ("SELECT id AS reading_id, meter_id, seq, wallet_address AS wallet, export_wh, format,"
             " extract(epoch FROM interval_end)::bigint AS interval_end FROM meter_readings"
             " WHERE id = ANY($1::bigint[]) ORDER BY id")


async def _events(conn: asyncpg.Connection | asyncpg.Pool, rows: list[asyncpg.Record]) -> list[Event]:
    """Rows to events; an accepted-readings event gets its readings' fields (one query for all rows)."""
    ids = [i for r in rows if r["kind"] == "readings.accepted" for i in r["reading_ids"]]
    readings: dict[int, dict[str, Any]] = {}
    if ids:
        readings = {r["reading_id"]: dict(r) for r in await conn.fetch(_READINGS, ids)}
    out = []
    for r in rows:
        data = json.loads(r["body"])
        if r["kind"] == "readings.accepted":
            data["readings"] = [readings[i] for i in r["reading_ids"] if i in readings]
        out.append(Event(r["id"], r["kind"], r["at"], data, list(r["meters"]), list(r["wallets"])))
    return out


def _where(sub: Subscription) -> tuple[str, list[Any]]:
    if sub.kind == "wallet":
        return " AND $3 = ANY(wallets)", [sub.value]
    if sub.kind == "meter":
        return " AND $3 = ANY(meters)", [sub.value]
    return "", []


async def replay(pool: asyncpg.Pool, sub: Subscription, after: int, upto: int) -> list[Outgoing]:
    """Stored events with after < id <= upto that match `sub`, oldest first, as `sub` sees them."""
    where, args = _where(sub)
    rows = await pool.fetch(_SELECT + " WHERE id > $1 AND id <= $2" + where + " ORDER BY id", after, upto, *args)
    return [view(e, sub.key) for e in await _events(pool, rows)]


class EventHub:
    def __init__(self, dsn: str, *, poll_secs: float = 1.0,
                 on_tokens_changed: Callable[[], None] | None = None) -> None:
        self.dsn = dsn
        self.on_tokens_changed = on_tokens_changed
        self.poll_secs = poll_secs
        self.position = 0
        self.subscriptions: set[Subscription] = set()
        self.connected = False
        self.delivered = 0
        self._wake = asyncio.Event()

    def subscribe(self, sub: Subscription) -> int:
        """Register `sub`; returns the hub's position: every event after it will be queued."""
        self.subscriptions.add(sub)
        return self.position

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        first = True
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(CHANNEL, self._notified)
                await conn.add_listener(TOKENS_CHANNEL, self._tokens_changed)
                self._tokens_changed()  # anything may have changed while we were not listening
                if first:
                    self.position = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM api_events"))
                    first = False
                self.connected = True
                backoff = 0.5
                while not stop.is_set():
                    await self._drain(conn)
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_secs)
            except _DB_ERRORS as exc:
                log.warning("event hub lost PostgreSQL (%s); reconnecting in %.1f s", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 15.0)
            finally:
                self.connected = False
                if conn is not None:
                    with contextlib.suppress(*_DB_ERRORS):
                        await conn.close(timeout=2)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def _tokens_changed(self, *_: object) -> None:
        if self.on_tokens_changed is not None:
            self.on_tokens_changed()

    async def _drain(self, conn: asyncpg.Connection) -> None:
        while True:
            rows = await conn.fetch(_SELECT + " WHERE id > $1 ORDER BY id LIMIT $2", self.position, _PAGE)
            if not self.subscriptions:
                if rows:
                    self.position = rows[-1]["id"]  # nobody to tell; replays read the table
            else:
                for ev in await _events(conn, rows):
                    self.dispatch(ev)
            if len(rows) < _PAGE:
                return

    def dispatch(self, ev: Event) -> None:
        self.position = ev.id
        views: dict[ViewKey, Outgoing] = {}
        for sub in list(self.subscriptions):
            if not sub.matches(ev):
                continue
            out = views.get(sub.key)
            if out is None:
                out = views[sub.key] = view(ev, sub.key)
            try:
                sub.queue.put_nowait(out)
                self.delivered += 1
            except asyncio.QueueFull:
                self.subscriptions.discard(sub)
                sub.dropped.set()


async def insert_event(conn: asyncpg.Connection, kind: str, body: dict[str, Any], *,
                       meters: list[str] | None = None, wallets: list[str] | None = None) -> None:
    """Write one event from Python (alerts), under the same ordering lock as the triggers."""
    async with conn.transaction():
        await conn.execute("SELECT api_events_lock()")
        await conn.execute("INSERT INTO api_events (kind, meters, wallets, body) VALUES ($1, $2, $3, $4::jsonb)",
                           kind, meters or [], wallets or [], json.dumps(body, default=str))
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)


class AlertWatcher:
    """Every `interval` s: read the four key metrics; raise or clear each alert exactly once."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 10.0, retention_days: float = 7.0) -> None:
        self.pool = pool
        self.interval = interval
        self.retention_days = retention_days

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except _DB_ERRORS as exc:
                log.warning("alert check failed (%s); next try in %.0f s", exc, self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def check(self) -> None:
        async with self.pool.acquire() as conn:
            status = await read_status(conn)
            metrics = status.to_json()
            for name, firing in status.alerts.items():
                changed = await conn.fetchrow(
                    "INSERT INTO api_alert_state (name, firing) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE"
                    " SET firing = EXCLUDED.firing, changed_at = now() WHERE api_alert_state.firing <> EXCLUDED.firing"
                    " RETURNING (xmax = 0) AS inserted", name, firing)
                if changed is None or (changed["inserted"] and not firing):
                    continue
                await insert_event(conn, "alert.raised" if firing else "alert.cleared",
                                   {"alert": name, "firing": firing, "status": metrics})
            await conn.execute("DELETE FROM api_events WHERE created_at < now() - make_interval(secs => $1)",
                               self.retention_days * 86400)
