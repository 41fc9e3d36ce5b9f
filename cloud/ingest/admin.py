"""Registry administration (`gridtokenx cloud meters ...`): the SQL behind the admin commands.

Every change bumps `meters.updated_at` and (by trigger) `registry_version`, which is how running
consumers notice it before their next batch (see `registry`). Key rotation never deletes: the old key
gets `valid_until = now()` and stays in `meter_keys` as history. After a routine rotation it still
verifies readings with seq below its watermark `below_seq`; after a compromise it verifies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from cloud.errors import CloudError
from protocol.meters_csv import MeterRow

Status = Literal["active", "suspended", "revoked", "quarantined"]


class AdminError(CloudError):
    """A registry change that cannot be made; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class MeterInfo:
    meter_id: str
    public_key: str
    wallet_address: str
    meter_type: str
    capacity_w: int
    status: str
    status_reason: str | None
    keys: int
    """How many keys the meter has had (1 + rotations)."""
    updated_at: datetime


@dataclass(slots=True)
class UpsertResult:
    inserted: list[str]
    updated: list[str]
    unchanged: list[str]
    conflicts: dict[str, str]
    """meter_id → why the row was not applied."""


async def upsert_meters(conn: asyncpg.Connection, rows: list[MeterRow]) -> UpsertResult:
    """Idempotent: a row equal to the registry changes nothing. A different public key is refused
    (a key change is a rotation, made explicitly with rotate-key)."""
    result = UpsertResult([], [], [], {})
    async with conn.transaction():
        existing = {r["meter_id"]: r for r in await conn.fetch(
            "SELECT meter_id, public_key, wallet_address, meter_type, capacity_w FROM meters"
            " WHERE meter_id = ANY($1::text[]) FOR UPDATE", [r.meter_id for r in rows])}
        new: list[MeterRow] = []
        changed: list[MeterRow] = []
        for row in rows:
            old = existing.get(row.meter_id)
            if old is None:
                new.append(row)
            elif old["public_key"] != row.public_key:
                result.conflicts[row.meter_id] = (
                    "its public_key differs from the registered key; rotate it with "
                    f"`gridtokenx cloud meters rotate-key {row.meter_id} NEW_KEY`")
            elif (old["wallet_address"], old["meter_type"], old["capacity_w"]) != (
                    row.wallet_address, row.meter_type, row.capacity_w):
                changed.append(row)
            else:
                result.unchanged.append(row.meter_id)
        if new:
            await conn.executemany(
                "INSERT INTO meters (meter_id, public_key, wallet_address, meter_type, capacity_w)"
                " VALUES ($1, $2, $3, $4, $5)",
                [(r.meter_id, r.public_key, r.wallet_address, r.meter_type, r.capacity_w) for r in new])
            await conn.executemany(
                "INSERT INTO meter_keys (meter_id, public_key) VALUES ($1, $2)",
                [(r.meter_id, r.public_key) for r in new])
        if changed:
            await conn.executemany(
                "UPDATE meters SET wallet_address = $2, meter_type = $3, capacity_w = $4, updated_at = now()"
                " WHERE meter_id = $1",
                [(r.meter_id, r.wallet_address, r.meter_type, r.capacity_w) for r in changed])
    result.inserted = [r.meter_id for r in new]
    result.updated = [r.meter_id for r in changed]
    return result


async def list_meters(conn: asyncpg.Connection, *, status: str | None = None) -> list[MeterInfo]:
    rows = await conn.fetch(
        "SELECT m.meter_id, m.public_key, m.wallet_address, m.meter_type, m.capacity_w, m.status,"
        " m.status_reason, m.updated_at, (SELECT count(*) FROM meter_keys k WHERE k.meter_id = m.meter_id) AS keys"
        " FROM meters m WHERE $1::text IS NULL OR m.status = $1 ORDER BY m.meter_id", status)
    return [MeterInfo(r["meter_id"], r["public_key"], r["wallet_address"], r["meter_type"], r["capacity_w"],
                      r["status"], r["status_reason"], r["keys"], r["updated_at"]) for r in rows]


async def set_status(conn: asyncpg.Connection, meter_id: str, status: Status, reason: str | None) -> None:
    done = await conn.fetchval(
        "UPDATE meters SET status = $2, status_reason = $3, updated_at = now() WHERE meter_id = $1"
        " RETURNING meter_id", meter_id, status, reason)
    if done is None:
        raise AdminError(f"meter {meter_id!r} is not registered; list meters with `gridtokenx cloud meters list`")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    public_key: str
    valid_from: datetime
    valid_until: datetime | None
    below_seq: int | None
    compromised_at: datetime | None
    retired_reason: str | None

    @property
    def state(self) -> str:
        if self.valid_until is None:
            return "current"
        if self.compromised_at is not None:
            return "compromised: verifies nothing"
        return f"retired: verifies seq < {self.below_seq}"


async def list_keys(conn: asyncpg.Connection, meter_id: str) -> list[KeyInfo]:
    rows = await conn.fetch(
        "SELECT public_key, valid_from, valid_until, below_seq, compromised_at, retired_reason FROM meter_keys"
        " WHERE meter_id = $1 ORDER BY valid_until DESC NULLS FIRST", meter_id)
    if not rows:
        raise AdminError(f"meter {meter_id!r} is not registered; list meters with `gridtokenx cloud meters list`")
    return [KeyInfo(r["public_key"], r["valid_from"], r["valid_until"], r["below_seq"], r["compromised_at"],
                    r["retired_reason"]) for r in rows]


async def rotate_key(conn: asyncpg.Connection, meter_id: str, public_key: str, *, compromised: bool = False,
                     below_seq: int | None = None) -> int | None:
    """Make `public_key` the meter's key. Routine (default): the old key keeps verifying readings with
    seq < `below_seq` (default: the highest seq stored for the meter + 1, i.e. only gaps already
    behind it). Compromised: the old key verifies nothing from now on, whatever a reading's
    timestamp. Returns the old key's watermark (None after a compromise)."""
    if compromised and below_seq is not None:
        raise AdminError("--compromised retires the old key for every seq; do not also give a watermark")
    if below_seq is not None and below_seq < 0:
        raise AdminError(f"the seq watermark must be 0 or more, not {below_seq}")
    async with conn.transaction():
        current = await conn.fetchval("SELECT public_key FROM meters WHERE meter_id = $1 FOR UPDATE", meter_id)
        if current is None:
            raise AdminError(f"meter {meter_id!r} is not registered; add it with `gridtokenx cloud meters add`")
        known = await conn.fetchval(
            "SELECT 1 FROM meter_keys WHERE meter_id = $1 AND public_key = $2", meter_id, public_key)
        if known:
            raise AdminError(f"meter {meter_id!r} has had this key before; a rotation needs a new key")
        if not compromised and below_seq is None:
            below_seq = int(await conn.fetchval(
                "SELECT coalesce(max(seq) + 1, 0) FROM meter_reading_keys WHERE meter_id = $1", meter_id))
        await conn.execute(
            "UPDATE meter_keys SET valid_until = now(), below_seq = $2,"
            " compromised_at = CASE WHEN $3 THEN now() END, retired_reason = $4"
            " WHERE meter_id = $1 AND valid_until IS NULL", meter_id, None if compromised else below_seq,
            compromised, "compromised" if compromised else "routine rotation")
        await conn.execute("INSERT INTO meter_keys (meter_id, public_key) VALUES ($1, $2)", meter_id, public_key)
        await conn.execute("UPDATE meters SET public_key = $2, updated_at = now() WHERE meter_id = $1",
                           meter_id, public_key)
    return None if compromised else below_seq


async def set_key_watermark(conn: asyncpg.Connection, meter_id: str, public_key: str, below_seq: int) -> None:
    """Move a routinely retired key's seq watermark (up to let buffered readings in, down to stop them)."""
    if below_seq < 0:
        raise AdminError(f"the seq watermark must be 0 or more, not {below_seq}")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT valid_until, compromised_at FROM meter_keys WHERE meter_id = $1"
                                  " AND public_key = $2 FOR UPDATE", meter_id, public_key)
        if row is None:
            raise AdminError(f"meter {meter_id!r} never had key {public_key}; see `gridtokenx cloud meters keys "
                             f"{meter_id}`")
        if row["valid_until"] is None:
            raise AdminError("that is the meter's current key; it verifies every seq and has no watermark")
        if row["compromised_at"] is not None:
            raise AdminError("that key was retired as compromised; it never verifies anything again")
        await conn.execute("UPDATE meter_keys SET below_seq = $3 WHERE meter_id = $1 AND public_key = $2",
                           meter_id, public_key, below_seq)
        await conn.execute("UPDATE meters SET updated_at = now() WHERE meter_id = $1", meter_id)
