"""The meter registry as the consumer sees it: an in-memory cache of `meters` + `meter_keys`.

Loaded once at start, refreshed incrementally (rows whose `updated_at` moved) every
`refresh_secs`, on a miss (a meter not in the cache is fetched before it is called unknown), and
whenever `registry_version` moved (`sync`, once per batch). Every change to `meters` or `meter_keys`
bumps that version in the same transaction (migration 030), so a key rotation, compromise or
suspension is in force for every batch a consumer prepares after the command returned: no cache
window.

Key lifecycle (PROTOCOL.md, "Key lifecycle"): the current key verifies every reading; a key retired
by a routine rotation verifies only readings with ``seq < below_seq``; a key retired as compromised
verifies nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg
import base58

from protocol.reading import Reading
from protocol.wire import verify

ACTIVE = "active"
#: Overlap of incremental refreshes, so a row committed with an older `updated_at` is not missed.
_REFRESH_OVERLAP = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    public_key: bytes
    valid_until: int | None
    """UTC seconds when the key was rotated out; None for the current key."""
    below_seq: int | None = None
    """Retired routinely: readings with seq below this (exclusive) still verify with this key."""
    compromised: bool = False
    """Retired as compromised: verifies nothing."""

    def covers(self, reading: Reading) -> bool:
        """May this key vouch for `reading` at all (before the signature is checked)?"""
        if self.valid_until is None:
            return True
        return not self.compromised and self.below_seq is not None and reading.seq < self.below_seq


@dataclass(frozen=True, slots=True)
class MeterRecord:
    meter_id: str
    wallet_address: str
    meter_type: str
    capacity_w: int
    status: str
    keys: tuple[KeyRecord, ...]
    """Current key first, then retired keys, newest first."""

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def verifies(self, reading: Reading, message: bytes, signature: bytes) -> bool:
        """True when a key valid for this reading signed it: the current key, or a routinely retired
        key whose seq watermark is above the reading's seq. Timestamps never matter (a key holder
        chooses them)."""
        return any(key.covers(reading) and verify(key.public_key, message, signature) for key in self.keys)


_VERSION = "SELECT version FROM registry_version"

_SELECT = """
SELECT m.meter_id, m.wallet_address, m.meter_type, m.capacity_w, m.status, m.updated_at,
       coalesce(array_agg(k.public_key ORDER BY k.valid_until DESC NULLS FIRST)
                FILTER (WHERE k.public_key IS NOT NULL), '{}') AS key_list,
       coalesce(array_agg(extract(epoch FROM k.valid_until)::bigint ORDER BY k.valid_until DESC NULLS FIRST)
                FILTER (WHERE k.public_key IS NOT NULL), '{}') AS until_list,
       coalesce(array_agg(k.below_seq ORDER BY k.valid_until DESC NULLS FIRST)
                FILTER (WHERE k.public_key IS NOT NULL), '{}') AS below_list,
       coalesce(array_agg(k.compromised_at IS NOT NULL ORDER BY k.valid_until DESC NULLS FIRST)
                FILTER (WHERE k.public_key IS NOT NULL), '{}') AS compromised_list
FROM meters m LEFT JOIN meter_keys k ON k.meter_id = m.meter_id
"""


def _record(row: asyncpg.Record) -> MeterRecord:
    keys = tuple(KeyRecord(base58.b58decode(pk), until, below, compromised)
                 for pk, until, below, compromised in zip(row["key_list"], row["until_list"], row["below_list"],
                                                          row["compromised_list"], strict=True))
    return MeterRecord(row["meter_id"], row["wallet_address"], row["meter_type"], row["capacity_w"],
                       row["status"], keys)


class Registry:
    """Cache of meter records; `get` is a dict lookup on the hot path."""

    def __init__(self, *, refresh_secs: float = 5.0) -> None:
        self.refresh_secs = refresh_secs
        self._meters: dict[str, MeterRecord] = {}
        self._watermark: datetime | None = None
        self._refreshed_at = 0.0
        self._version: int | None = None

    def __len__(self) -> int:
        return len(self._meters)

    def get(self, meter_id: str) -> MeterRecord | None:
        return self._meters.get(meter_id)

    def mark(self, meter_id: str, status: str) -> None:
        """Reflect a status change this process made (e.g. quarantine) without waiting for a refresh."""
        record = self._meters.get(meter_id)
        if record is not None:
            self._meters[meter_id] = replace(record, status=status)

    async def load(self, conn: asyncpg.Connection) -> None:
        self._version = await conn.fetchval(_VERSION)
        rows = await conn.fetch(_SELECT + " GROUP BY m.meter_id")
        self._meters = {r["meter_id"]: _record(r) for r in rows}
        self._watermark = max((r["updated_at"] for r in rows), default=None)
        self._refreshed_at = time.monotonic()

    async def sync(self, conn: asyncpg.Connection) -> None:
        """Once per batch: refresh now if any registry change committed since the last look (one
        primary-key read), else only when the periodic refresh is due."""
        version = await conn.fetchval(_VERSION)
        if version != self._version:
            await self.refresh(conn, version)
        else:
            await self.refresh_if_due(conn)

    async def refresh_if_due(self, conn: asyncpg.Connection) -> None:
        if time.monotonic() - self._refreshed_at < self.refresh_secs:
            return
        await self.refresh(conn, await conn.fetchval(_VERSION))

    async def refresh(self, conn: asyncpg.Connection, version: int | None) -> None:
        """Re-read every meter changed since the watermark; `version` was read before, so a change
        committed meanwhile is seen again next time."""
        if self._watermark is None:
            await self.load(conn)
            return
        self._version = version
        rows = await conn.fetch(_SELECT + " WHERE m.updated_at >= $1 GROUP BY m.meter_id",
                                self._watermark - _REFRESH_OVERLAP)
        self._absorb(rows)
        self._refreshed_at = time.monotonic()

    async def ensure(self, conn: asyncpg.Connection, meter_ids: Iterable[str]) -> None:
        """Fetch meters the cache does not know yet (registered since the last refresh)."""
        missing = sorted({m for m in meter_ids if m not in self._meters})
        if missing:
            rows = await conn.fetch(_SELECT + " WHERE m.meter_id = ANY($1::text[]) GROUP BY m.meter_id", missing)
            self._absorb(rows)

    def _absorb(self, rows: list[asyncpg.Record]) -> None:
        for row in rows:
            self._meters[row["meter_id"]] = _record(row)
            if self._watermark is None or row["updated_at"] > self._watermark:
                self._watermark = row["updated_at"]
