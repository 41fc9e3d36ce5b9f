"""PostgreSQL for the ingest path: read the context of a batch, write its plan in one statement.

Per batch there are two round trips: one SELECT for the stored context of every parsed key (the
reading at that key, if any, and its register neighbours), and one INSERT statement whose
data-modifying CTEs write accepted readings, rejected evidence and meter quarantines together. A
single statement is a single transaction, so the batch commits entirely or not at all. Only
when another consumer stored one of the same keys meanwhile (a resend racing a slow consumer) is
there a third, rare, statement to resolve it (see `pipeline.resolve_conflicts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import base58

from cloud.ingest.pipeline import Key, Plan, RejectedRow, StoredContext, resolve_conflicts
from cloud.ingest.rules import RegisterPoint

_CONTEXT = """
SELECT k.meter_id, k.seq, e.payload,
       p.seq AS p_seq, p.export_wh AS p_wh, p.export_register_wh AS p_reg,
       n.seq AS n_seq, n.export_wh AS n_wh, n.export_register_wh AS n_reg
FROM unnest($1::text[], $2::bigint[]) AS k(meter_id, seq)
LEFT JOIN LATERAL (SELECT payload FROM meter_readings r
                   WHERE r.meter_id = k.meter_id AND r.seq = k.seq) e ON TRUE
LEFT JOIN LATERAL (SELECT seq, export_wh, export_register_wh FROM meter_readings r
                   WHERE r.meter_id = k.meter_id AND r.seq < k.seq ORDER BY r.seq DESC LIMIT 1) p ON TRUE
LEFT JOIN LATERAL (SELECT seq, export_wh, export_register_wh FROM meter_readings r
                   WHERE r.meter_id = k.meter_id AND r.seq > k.seq ORDER BY r.seq ASC LIMIT 1) n ON TRUE
WHERE e.payload IS NOT NULL OR p.seq IS NOT NULL OR n.seq IS NOT NULL
"""

_WRITE = """
WITH acc AS (
    INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end, export_wh,
                                export_register_wh, import_wh, import_register_wh, flags, format, payload,
                                signature, gateway_id, batch_id)
    SELECT t.meter_id, t.seq, t.wallet, to_timestamp(t.start_s), to_timestamp(t.end_s), t.export_wh,
           t.export_reg, t.import_wh, t.import_reg, t.flags, t.format, t.payload, t.signature, $16, $17
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                $8::bigint[], $9::bigint[], $10::int[], $11::text[], $12::bytea[], $13::text[])
         AS t(meter_id, seq, wallet, start_s, end_s, export_wh, export_reg, import_wh, import_reg, flags,
              format, payload, signature)
    ON CONFLICT (meter_id, seq) DO NOTHING
    RETURNING meter_id, seq
), rej AS (
    INSERT INTO rejected_readings (meter_id, seq, reason, detail, payload, payload_sha256, gateway_id, batch_id)
    SELECT r.meter_id, r.seq, r.reason, r.detail, r.payload, r.sha, $16, $17
    FROM unnest($18::text[], $19::bigint[], $20::text[], $21::text[], $22::bytea[], $23::bytea[])
         AS r(meter_id, seq, reason, detail, payload, sha)
    ON CONFLICT (payload_sha256, reason) DO NOTHING
), quarantine AS (
    UPDATE meters SET status = 'quarantined', status_reason = q.why, updated_at = now()
    FROM unnest($14::text[], $15::text[]) AS q(meter_id, why)
    WHERE meters.meter_id = q.meter_id AND meters.status IN ('active', 'suspended')
)
SELECT meter_id, seq FROM acc
"""

_REJECT_ONLY = """
WITH rej AS (
    INSERT INTO rejected_readings (meter_id, seq, reason, detail, payload, payload_sha256, gateway_id, batch_id)
    SELECT r.meter_id, r.seq, r.reason, r.detail, r.payload, r.sha, $3, $4
    FROM unnest($5::text[], $6::bigint[], $7::text[], $8::text[], $9::bytea[], $10::bytea[])
         AS r(meter_id, seq, reason, detail, payload, sha)
    ON CONFLICT (payload_sha256, reason) DO NOTHING
)
UPDATE meters SET status = 'quarantined', status_reason = q.why, updated_at = now()
FROM unnest($1::text[], $2::text[]) AS q(meter_id, why)
WHERE meters.meter_id = q.meter_id AND meters.status IN ('active', 'suspended')
"""


async def fetch_context(conn: asyncpg.Connection, keys: Sequence[Key]) -> dict[Key, StoredContext]:
    if not keys:
        return {}
    rows = await conn.fetch(_CONTEXT, [k[0] for k in keys], [k[1] for k in keys])
    out: dict[Key, StoredContext] = {}
    for r in rows:
        prev = RegisterPoint(r["p_seq"], r["p_wh"], r["p_reg"]) if r["p_seq"] is not None else None
        nxt = RegisterPoint(r["n_seq"], r["n_wh"], r["n_reg"]) if r["n_seq"] is not None else None
        out[(r["meter_id"], r["seq"])] = StoredContext(r["payload"], prev, nxt)
    return out


def _rejected_columns(rows: Sequence[RejectedRow]) -> list[list[object]]:
    return [[r.meter_id for r in rows], [r.seq for r in rows], [r.reason.value for r in rows],
            [r.detail[:1000] for r in rows], [r.payload for r in rows], [r.payload_sha256 for r in rows]]


async def write_plan(conn: asyncpg.Connection, plan: Plan) -> None:
    """Persist `plan` atomically; afterwards `plan` describes exactly what Postgres holds for it."""
    acc = plan.accepted
    readings = [a.signed.reading for a in acc]
    quarantine = sorted(plan.quarantine.items())
    batch = plan.batch
    rows = await conn.fetch(
        _WRITE,
        [r.meter_id for r in readings], [r.seq for r in readings], [a.wallet_address for a in acc],
        [r.start for r in readings], [r.end for r in readings], [r.export_wh for r in readings],
        [r.export_register_wh for r in readings], [r.import_wh for r in readings],
        [r.import_register_wh for r in readings], [r.flags for r in readings], [a.signed.format for a in acc],
        [a.signed.payload for a in acc], [base58.b58encode(a.signed.signature).decode() for a in acc],
        [q[0] for q in quarantine], [q[1] for q in quarantine], batch.gateway_id, batch.batch_id,
        *_rejected_columns(plan.rejected),
    )
    inserted = {(r["meter_id"], r["seq"]) for r in rows}
    if len(inserted) == len(acc):
        return
    # Another consumer stored some of these keys between our context read and our insert.
    lost = [a.signed.key for a in acc if a.signed.key not in inserted]
    stored_rows = await conn.fetch(
        "SELECT meter_id, seq, payload FROM meter_readings r"
        " JOIN unnest($1::text[], $2::bigint[]) AS k(m, s) ON r.meter_id = k.m AND r.seq = k.s",
        [k[0] for k in lost], [k[1] for k in lost])
    stored = {(r["meter_id"], r["seq"]): bytes(r["payload"]) for r in stored_rows}
    before = len(plan.rejected)
    resolve_conflicts(plan, inserted, stored)
    new_rejected = plan.rejected[before:]
    if new_rejected:
        quarantine = sorted(plan.quarantine.items())
        await conn.execute(_REJECT_ONLY, [q[0] for q in quarantine], [q[1] for q in quarantine],
                           batch.gateway_id, batch.batch_id, *_rejected_columns(new_rejected))
