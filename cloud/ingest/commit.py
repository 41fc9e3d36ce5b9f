"""The ingest transaction, one for every way a reading arrives (MQTT batches and HTTP submissions).

lock the batch's meters → read their stored context → decide (pure `pipeline.classify`) → write the plan.
The locks are transaction-scoped, so two writers deciding readings of one meter take turns and the
series rules (duplicates, equivocation, registers, overlapping intervals) see everything the other
accepted. The plan written is the plan decided; nothing rewrites it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import asyncpg

from cloud.ingest import partitions
from cloud.ingest.pipeline import Key, Parsed, Plan, classify
from cloud.ingest.registry import MeterRecord
from cloud.ingest.rules import Limits
from cloud.ingest.store import NoPartition, fetch_context, lock_meters, write_plan
from protocol.envelopes import Batch


def _always(_: int) -> bool:
    return True


async def decide_and_write(conn: asyncpg.Connection, batch: Batch, parsed: list[Parsed], verified: Collection[int],
                           lookup: Callable[[str], MeterRecord | None], *, limits: Limits, now: int,
                           admit: Callable[[int], bool] = _always) -> tuple[Plan, int]:
    """One transaction: the plan as committed, and how many rejected payloads the evidence quota left
    out. Raises `store.StaleDecision` (rolled back) only if a writer that skipped the locks raced it."""
    keys = [p.signed.key for p in parsed if p.signed is not None]
    try:
        return await _once(conn, batch, parsed, verified, lookup, keys, limits=limits, now=now, admit=admit)
    except NoPartition:
        # Rolled back; partitions are created outside any ingest transaction (it takes locks a
        # writer must not hold), then the batch is decided and written again from fresh context.
        await partitions.ensure(conn)
        return await _once(conn, batch, parsed, verified, lookup, keys, limits=limits, now=now, admit=admit)


async def _once(conn: asyncpg.Connection, batch: Batch, parsed: list[Parsed], verified: Collection[int],
                lookup: Callable[[str], MeterRecord | None], keys: list[Key], *, limits: Limits, now: int,
                admit: Callable[[int], bool]) -> tuple[Plan, int]:
    async with conn.transaction():
        await lock_meters(conn, sorted({k[0] for k in keys}))
        context = await fetch_context(conn, keys)
        plan = classify(batch, parsed, verified, context, lookup, limits=limits, now=now)
        over = await write_plan(conn, plan, admit=admit)
    return plan, over
