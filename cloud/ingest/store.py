"""PostgreSQL for the ingest path: read the context of a batch, write its plan in one statement.

Per batch there are two round trips: one SELECT for the stored context of every parsed key (the
reading at that key, if any, and its register neighbours), and one statement whose
data-modifying CTEs write accepted readings, rejected evidence and meter quarantines together.
The store only persists what it is given: the decision (`pipeline.classify`) is made under the
meters' advisory locks (`lock_meters`, see `cloud.ingest.commit`), so no other writer can store one of
its keys in between. Should one do so anyway (a writer that skipped the locks), the insert finds it,
raises `StaleDecision` and the transaction rolls back; the caller decides again from fresh context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import asyncpg
import msgspec

from cloud.errors import CloudError
from cloud.ingest.boundary import MAX_EVIDENCE_BYTES, BadEnvelope, storable_text
from cloud.ingest.pipeline import AcceptedRow, Key, Plan, RejectedRow, StoredContext
from cloud.ingest.rules import RegisterPoint
from protocol.wire import MAX_PAYLOAD_BYTES

# One index probe of meter_reading_keys finds the stored key or, failing that, its predecessor; a
# second finds the successor (only out-of-order arrivals have one). The keys table is global across
# the readings' partitions (and outlives archived ones), so the readings are not read at all.
_CONTEXT = """
SELECT k.meter_id, k.seq, CASE WHEN p.seq = k.seq THEN p.payload_sha256 END AS sha,
       p.seq AS p_seq, p.export_wh AS p_wh, p.export_register_wh AS p_reg,
       extract(epoch FROM p.interval_start)::bigint AS p_start, extract(epoch FROM p.interval_end)::bigint AS p_end,
       n.seq AS n_seq, n.export_wh AS n_wh, n.export_register_wh AS n_reg,
       extract(epoch FROM n.interval_start)::bigint AS n_start, extract(epoch FROM n.interval_end)::bigint AS n_end
FROM unnest($1::text[], $2::bigint[]) AS k(meter_id, seq)
LEFT JOIN LATERAL (SELECT seq, payload_sha256, export_wh, export_register_wh, interval_start, interval_end
                   FROM meter_reading_keys r
                   WHERE r.meter_id = k.meter_id AND r.seq <= k.seq ORDER BY r.seq DESC LIMIT 1) p ON TRUE
LEFT JOIN LATERAL (SELECT seq, export_wh, export_register_wh, interval_start, interval_end FROM meter_reading_keys r
                   WHERE r.meter_id = k.meter_id AND r.seq > k.seq ORDER BY r.seq ASC LIMIT 1) n ON TRUE
WHERE p.seq IS NOT NULL OR n.seq IS NOT NULL
"""

# Rows travel as one JSON document per table (json_to_recordset): asyncpg would otherwise run
# Python-level checks on every element of every array parameter, ~40 µs per reading.
_WRITE = """
WITH src AS MATERIALIZED (
    SELECT nextval('meter_readings_id_seq') AS id, t.meter_id, t.seq, t.wallet, to_timestamp(t.start_s) AS start_at,
           to_timestamp(t.end_s) AS end_at, t.export_wh, t.export_reg, t.import_wh, t.import_reg, t.flags, t.format,
           decode(t.payload, 'base64') AS payload, t.signature
    FROM json_to_recordset($1::json) AS t(meter_id text, seq bigint, wallet text, start_s bigint, end_s bigint,
         export_wh bigint, export_reg bigint, import_wh bigint, import_reg bigint, flags int, format text,
         payload text, signature text)
), keys AS (
    -- The idempotency key, global across the readings' partitions (migration 060).
    INSERT INTO meter_reading_keys (meter_id, seq, reading_id, payload_sha256, export_wh, export_register_wh,
                                    interval_start, interval_end)
    SELECT s.meter_id, s.seq, s.id, sha256(s.payload), s.export_wh, s.export_reg, s.start_at, s.end_at FROM src s
    ON CONFLICT (meter_id, seq) DO NOTHING
    RETURNING reading_id
), acc AS (
    INSERT INTO meter_readings (id, meter_id, seq, wallet_address, interval_start, interval_end, export_wh,
                                export_register_wh, import_wh, import_register_wh, flags, format, payload,
                                signature, gateway_id, batch_id)
    SELECT s.id, s.meter_id, s.seq, s.wallet, s.start_at, s.end_at, s.export_wh, s.export_reg, s.import_wh,
           s.import_reg, s.flags, s.format, s.payload, s.signature, $4, $5
    FROM src s JOIN keys k ON k.reading_id = s.id
    RETURNING meter_id, seq
), rej AS (
    INSERT INTO rejected_readings (meter_id, seq, reason, detail, payload, payload_sha256, payload_bytes,
                                   gateway_id, batch_id)
    SELECT r.meter_id, r.seq, r.reason, r.detail, decode(r.payload, 'base64'), decode(r.sha, 'base64'), r.size,
           $4, $5
    FROM json_to_recordset($2::json) AS r(meter_id text, seq bigint, reason text, detail text, payload text,
                                          sha text, size int)
    ON CONFLICT (payload_sha256, reason) DO NOTHING
), quarantine AS (
    UPDATE meters SET status = 'quarantined', status_reason = q.why, updated_at = now()
    FROM json_to_recordset($3::json) AS q(meter_id text, why text)
    WHERE meters.meter_id = q.meter_id AND meters.status IN ('active', 'suspended')
)
SELECT meter_id, seq FROM acc
"""


class _AcceptedJson(msgspec.Struct, frozen=True):
    meter_id: str
    seq: int
    wallet: str
    start_s: int
    end_s: int
    export_wh: int
    export_reg: int | None
    import_wh: int | None
    import_reg: int | None
    flags: int
    format: str
    payload: bytes
    signature: str


class _RejectedJson(msgspec.Struct, frozen=True):
    meter_id: str | None
    seq: int | None
    reason: str
    detail: str
    payload: bytes
    sha: bytes
    size: int


class _QuarantineJson(msgspec.Struct, frozen=True):
    meter_id: str
    why: str


_encode = msgspec.json.Encoder().encode


def _accepted_json(rows: Sequence[AcceptedRow]) -> str:
    out = []
    for a in rows:
        r, payload = a.signed.reading, a.signed.payload
        # The payload's last line is the base58 signature as the meter wrote it: no re-encoding.
        signature = payload[payload.rfind(b"\n") + 1:].decode("ascii")
        out.append(_AcceptedJson(r.meter_id, r.seq, a.wallet_address, r.start, r.end, r.export_wh,
                                 r.export_register_wh, r.import_wh, r.import_register_wh, r.flags, a.signed.format,
                                 payload, signature))
    return _encode(out).decode()


def _rejected_json(rows: Sequence[RejectedRow], admit: Callable[[int], bool]) -> tuple[str, int]:
    """The rows as JSON, and how many lost their evidence to the gateway's quota. Evidence is cut to
    the protocol's maximum payload; the hash and length always describe the whole payload."""
    out, dropped = [], 0
    for r in rows:
        evidence = r.payload[:MAX_PAYLOAD_BYTES]
        if evidence and not admit(len(evidence)):
            evidence, dropped = b"", dropped + 1
        out.append(_RejectedJson(r.meter_id, r.seq, r.reason.value, storable_text(r.detail, 1000), evidence,
                                 r.payload_sha256, len(r.payload)))
    return _encode(out).decode(), dropped


def _quarantine_json(plan: Plan) -> str:
    return _encode([_QuarantineJson(m, storable_text(why, 1000))
                    for m, why in sorted(plan.quarantine.items())]).decode()


async def lock_meters(conn: asyncpg.Connection, meter_ids: Sequence[str]) -> None:
    """Transaction-scoped advisory locks on these meters, in one order (no deadlock). Held from the
    context read to the commit, so two consumers deciding readings of one meter take turns and the
    series rules (overlap, registers) always see what the other accepted."""
    if meter_ids:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(m, 16)) FROM"
                           " (SELECT DISTINCT m FROM unnest($1::text[]) AS m ORDER BY m) AS s", list(meter_ids))


async def fetch_context(conn: asyncpg.Connection, keys: Sequence[Key]) -> dict[Key, StoredContext]:
    if not keys:
        return {}
    rows = await conn.fetch(_CONTEXT, [k[0] for k in keys], [k[1] for k in keys])
    out: dict[Key, StoredContext] = {}
    for r in rows:
        if r["sha"] is not None:  # the key itself is stored: duplicate or equivocation, no rules
            out[(r["meter_id"], r["seq"])] = StoredContext(r["sha"])
            continue
        prev = (RegisterPoint(r["p_seq"], r["p_wh"], r["p_reg"], r["p_start"], r["p_end"])
                if r["p_seq"] is not None else None)
        nxt = (RegisterPoint(r["n_seq"], r["n_wh"], r["n_reg"], r["n_start"], r["n_end"])
               if r["n_seq"] is not None else None)
        out[(r["meter_id"], r["seq"])] = StoredContext(None, prev, nxt)
    return out


def _always(_: int) -> bool:
    return True


async def write_plan(conn: asyncpg.Connection, plan: Plan, *, admit: Callable[[int], bool] = _always) -> int:
    """Persist `plan` atomically; afterwards `plan` describes exactly what Postgres holds for it.

    `admit(n)` says whether n more bytes of rejected evidence fit the gateway's quota. Returns the
    number of rejected rows stored without their payload because they did not."""
    acc = plan.accepted
    batch = plan.batch
    rejected, dropped = _rejected_json(plan.rejected, admit)
    try:
        rows = await conn.fetch(_WRITE, _accepted_json(acc), rejected, _quarantine_json(plan),
                                batch.gateway_id, batch.batch_id)
    except asyncpg.CheckViolationError as exc:
        if "no partition of relation" in str(exc):
            raise NoPartition(str(exc)) from exc
        raise
    if len(rows) != len(acc):
        lost = sorted({a.signed.key for a in acc} - {(r["meter_id"], r["seq"]) for r in rows})
        raise StaleDecision(lost)
    return dropped


class NoPartition(CloudError):
    """The readings' id sequence ran past the last partition (migration 060): the transaction rolls
    back, the caller creates the partitions ahead (`partitions.ensure`) and writes again."""


class StaleDecision(CloudError):
    """Another writer stored some of the plan's keys after its context was read: nothing of the plan may
    be kept (raise inside the transaction), and the batch is decided again from fresh context."""

    def __init__(self, keys: list[Key]) -> None:
        super().__init__(f"{len(keys)} reading(s) were stored by another writer meanwhile, e.g. {keys[0]}; "
                         "deciding again")
        self.keys = keys


_DEAD_LETTER = """
INSERT INTO ingest_dead_letters (kind, reason, detail, gateway_id, batch_id, envelope, envelope_bytes,
                                 envelope_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (envelope_sha256, kind, reason) DO NOTHING
"""


async def record_bad_envelope(conn: asyncpg.Connection, bad: BadEnvelope) -> None:
    """Keep bounded evidence of a bad envelope, once per distinct message and reason."""
    await conn.execute(_DEAD_LETTER, "envelope", bad.reason.value, bad.detail, bad.gateway_id, None,
                       bad.evidence, bad.size, bad.sha256)


async def record_dead_letter(conn: asyncpg.Connection, *, kind: str, detail: str, gateway_id: str, batch_id: str,
                             raw: bytes) -> None:
    """Set aside a batch (kind "batch") or one item's payload (kind "item") that PostgreSQL refused.
    Every text value here passed `boundary` already; the error text is made storable."""
    await conn.execute(_DEAD_LETTER, kind, "unstorable", storable_text(detail, 2000), gateway_id, batch_id,
                       raw[:MAX_EVIDENCE_BYTES], len(raw), hashlib.sha256(raw).digest())
