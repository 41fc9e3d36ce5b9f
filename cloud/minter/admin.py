"""What the admin commands do (the click layer in cloud/mint_cli.py only parses and prints)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from cloud.chain.embedded import ChainBusy
from cloud.chain.factory import open_backend
from cloud.minter import economics, store
from cloud.minter.reconcile import FOREIGN_NOTE, ReconcileReport, reconcile
from cloud.minter.status import (
    BACKLOG_ALERT,
    LATENCY_ALERT_SECS,
    RETRY_QUEUE_ALERT,
    SUCCESS_ALERT_PCT,
    MintStatus,
)
from cloud.settings import CloudSettings
from protocol.units import base_units_to_tokens_text


# -- manual mint -----------------------------------------------------------------------------
@dataclass(slots=True)
class ManualMintResult:
    mode: str  # "direct" (this process drove the chain) or "request" (the running minter did)
    batches: dict[int, str] = field(default_factory=dict)
    readings_total: int = 0
    readings_minted: int = 0
    signatures: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def complete(self) -> bool:
        return self.readings_total > 0 and self.readings_minted == self.readings_total

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "batches": self.batches, "readings_total": self.readings_total,
                "readings_minted": self.readings_minted, "signatures": self.signatures,
                "complete": self.complete, "note": self.note}

    def describe(self) -> str:
        lines = [f"{b}: {s}" for b, s in sorted(self.batches.items())]
        head = f"minted {self.readings_minted} of {self.readings_total} readings"
        body = ("\n  batch " + "\n  batch ".join(lines)) if lines else ""
        return head + body + (f"\n{self.note}" if self.note else "")


async def manual_mint(settings: CloudSettings, *, reading_ids: Sequence[int] | None, meter_id: str | None,
                      wait_secs: float) -> ManualMintResult:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    assert pool is not None
    try:
        targets = await _target_ids(pool, reading_ids, meter_id)
        try:
            backend = await open_backend(settings)
        except ChainBusy:
            result = await _via_running_minter(pool, reading_ids, meter_id, wait_secs)
        else:
            from cloud.minter.service import MANUAL_LIMIT, Minter

            try:
                economics.check_config(settings.tokenization)
                await economics.ensure_recorded(pool, backend.identity, settings.tokenization)
                minter = Minter(pool, backend, settings)
                ids = await minter.plan(reading_ids=reading_ids, meter_id=meter_id, manual=True,
                                        limit=MANUAL_LIMIT)
                result = ManualMintResult("direct", await minter.wait_for(ids, wait_secs=wait_secs))
            finally:
                await backend.close()
        rows = await pool.fetch("SELECT minted, mint_tx_signature FROM meter_readings WHERE id = ANY($1)", targets)
        result.readings_total = len(targets)
        result.readings_minted = sum(1 for r in rows if r["minted"])
        result.signatures = sorted({r["mint_tx_signature"] for r in rows if r["mint_tx_signature"]})
        if not targets:
            result.note = "no such readings (check the ids / meter id with `gridtokenx cloud why`)"
        elif not result.complete:
            result.note = ("some readings are not minted yet: `gridtokenx cloud why ID` says why (a batch for "
                           "the meter may be in flight; run the command again shortly)")
        return result
    finally:
        await pool.close()


async def _target_ids(pool: asyncpg.Pool, reading_ids: Sequence[int] | None, meter_id: str | None) -> list[int]:
    if reading_ids:
        rows = await pool.fetch("SELECT id FROM meter_readings WHERE id = ANY($1)", list(reading_ids))
    else:
        rows = await pool.fetch("SELECT r.id FROM meter_reading_keys k JOIN meter_readings r ON r.id = k.reading_id"
                                " WHERE k.meter_id = $1 AND (NOT r.minted OR r.minted_at >= now() - interval '1 hour')",
                                meter_id)
    return [r["id"] for r in rows]


async def _via_running_minter(pool: asyncpg.Pool, reading_ids: Sequence[int] | None, meter_id: str | None,
                              wait_secs: float) -> ManualMintResult:
    request = await store.request_mint(pool, reading_ids=reading_ids, meter_id=meter_id)
    deadline = time.monotonic() + wait_secs
    result = ManualMintResult("request")
    while time.monotonic() < deadline:
        row = await pool.fetchrow("SELECT served_at, batch_ids FROM mint_requests WHERE id = $1", request)
        if row["served_at"] is not None:
            states = await pool.fetch("SELECT id, status FROM mint_batches WHERE id = ANY($1)", row["batch_ids"])
            result.batches = {r["id"]: r["status"] for r in states}
            if all(s not in ("planned", "sent") for s in result.batches.values()):
                return result
        await asyncio.sleep(0.2)
    result.note = f"timed out after {wait_secs:.0f}s waiting for the running minter (request {request})"
    return result


# -- why -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Explanation:
    state: str  # rejected | waiting | in_batch | minted | retry | dead_letter | unknown
    text: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "text": self.text, **self.detail}


async def explain(settings: CloudSettings, reading: str) -> Explanation:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await _with_equivocation(conn, await _explain(conn, settings, reading))
    finally:
        await conn.close()


async def _with_equivocation(conn: asyncpg.Connection, found: Explanation) -> Explanation:
    """A stored reading whose (meter_id, seq) also came with other signed bytes: say so, with the evidence
    and the meter's quarantine, whatever its minting state."""
    meter_id, seq = found.detail.get("meter_id"), found.detail.get("seq")
    if meter_id is None or seq is None:
        return found
    evidence = await conn.fetch("SELECT id, received_at FROM rejected_readings WHERE meter_id = $1 AND seq = $2"
                                " AND reason = 'equivocation' ORDER BY id", meter_id, seq)
    if not evidence:
        return found
    meter = await conn.fetchrow("SELECT status, status_reason FROM meters WHERE meter_id = $1", meter_id)
    status = meter["status"] if meter else "unknown"
    text = (f"{found.text}. EQUIVOCATION: meter {meter_id} also signed {len(evidence)} other payload(s) for seq "
            f"{seq} (rejected_readings id {', '.join(str(r['id']) for r in evidence)}, reason equivocation); "
            f"the meter is {status}" + (f" ({meter['status_reason']})" if meter and meter["status_reason"] else ""))
    return Explanation(found.state, text, found.detail | {"equivocation_evidence": [r["id"] for r in evidence],
                                                          "meter_status": status})


async def _explain(conn: asyncpg.Connection, settings: CloudSettings, reading: str) -> Explanation:
    if ":" in reading:
        meter_id, _, seq_text = reading.rpartition(":")
        if not seq_text.isdigit():
            return Explanation("unknown", f"{reading!r} is neither an id nor METER_ID:SEQ", {})
        row = await conn.fetchrow("SELECT r.* FROM meter_reading_keys k JOIN meter_readings r ON r.id = k.reading_id"
                                  " WHERE k.meter_id = $1 AND k.seq = $2", meter_id, int(seq_text))
        if row is None:
            rej = await conn.fetchrow("SELECT reason, detail, received_at FROM rejected_readings"
                                      " WHERE meter_id = $1 AND seq = $2 ORDER BY id DESC LIMIT 1",
                                      meter_id, int(seq_text))
            if rej is not None:
                return Explanation("rejected", f"reading {reading} was rejected: {rej['reason']}"
                                   f"{' (' + rej['detail'] + ')' if rej['detail'] else ''} at "
                                   f"{rej['received_at']:%Y-%m-%d %H:%M:%SZ}; it is never minted",
                                   {"reason": rej["reason"], "reason_detail": rej["detail"]})
    elif reading.isdigit():
        row = await conn.fetchrow("SELECT * FROM meter_readings WHERE id = $1", int(reading))
    else:
        return Explanation("unknown", f"{reading!r} is neither an id nor METER_ID:SEQ", {})
    if row is None:
        where = f" --meter {reading.rpartition(':')[0]}" if ":" in reading else ""
        return Explanation("unknown", f"no reading {reading} in the database: not received yet, or held at the edge "
                           f"(quarantined, rejected or dropped there: `gridtokenx edge inspect list{where}` on the "
                           "gateway)", {})
    rid = row["id"]
    # The batch that minted it, or else the open batch that holds it (migration 055: a reading in an
    # open batch is not written to until the batch confirms).
    batch_id = row["mint_batch_id"] if row["minted"] else await conn.fetchval(
        "SELECT max(batch_id) FROM open_batch_readings WHERE reading_id = $1", rid)
    base = {"reading_id": rid, "meter_id": row["meter_id"], "seq": row["seq"], "wallet": row["wallet_address"],
            "export_wh": row["export_wh"]}
    # Settings in force from the database (what the minter used), never the caller's environment.
    records = await economics.load(conn)
    decimals = records[-1].decimals if records else settings.tokenization.decimals
    if records and batch_id is not None:
        sid = await conn.fetchval("SELECT settings_id FROM mint_batches WHERE id = $1", batch_id)
        decimals = next((r.decimals for r in records if r.id == sid), decimals)
    if row["minted"]:
        units = int(row["mint_base_units"] or 0)
        sig = row["mint_tx_signature"]
        where = (f"in tx {sig} at slot {row['mint_slot']}" if sig
                 else "with no transaction (its share rounded to zero; the dust carried forward)")
        return Explanation("minted", f"reading {rid} was minted {where} in batch {row['mint_batch_id']}: "
                           f"{base_units_to_tokens_text(units, decimals)} tokens to {row['wallet_address']}",
                           base | {"signature": sig, "slot": row["mint_slot"], "batch_id": row["mint_batch_id"],
                                   "base_units": units})
    if batch_id is not None:
        b = await conn.fetchrow("SELECT status, signature, sign_attempts, send_count, created_at FROM mint_batches"
                                " WHERE id = $1", batch_id)
        return Explanation("in_batch", f"reading {rid} is in batch {batch_id} ({b['status']}, tx "
                           f"{b['signature']}, signed {b['sign_attempts']}x, sent {b['send_count']}x); it is "
                           "minted when that transaction confirms",
                           base | {"batch_id": batch_id, "batch_status": b["status"],
                                   "signature": b["signature"]})
    q = await conn.fetchrow("SELECT attempts, next_retry_at, error_message, dead_lettered FROM minting_retry_queue"
                            " WHERE reading_id = $1", rid)
    if q is not None and q["dead_lettered"]:
        return Explanation("dead_letter", f"reading {rid} is dead-lettered after {q['attempts']} failed attempts "
                           f"(last: {q['error_message']}); mint it by hand with `gridtokenx cloud mint --reading "
                           f"{rid}`", base | {"attempts": q["attempts"], "error": q["error_message"]})
    if q is not None:
        return Explanation("retry", f"reading {rid} is in the retry queue: attempt {q['attempts']} failed "
                           f"({q['error_message']}); next attempt at {q['next_retry_at']:%Y-%m-%d %H:%M:%SZ}",
                           base | {"attempts": q["attempts"], "next_retry_at": q["next_retry_at"],
                                   "error": q["error_message"]})
    meter = await conn.fetchrow("SELECT status, status_reason FROM meters WHERE meter_id = $1", row["meter_id"])
    if meter is not None and meter["status"] != "active":
        return Explanation("waiting", f"reading {rid} waits: meter {row['meter_id']} is {meter['status']}"
                           f"{' (' + meter['status_reason'] + ')' if meter['status_reason'] else ''}; readings"
                           " of a meter that is not active are not minted", base | {"meter_status": meter["status"]})
    ahead = await conn.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted AND id < $1", rid)
    runtime = await conn.fetch("SELECT auto_mint_enabled FROM minter_runtime ORDER BY started_at DESC")
    if not runtime:
        mode = "no minter has run yet on this database: `gridtokenx cloud run --role mint` mints it"
    elif runtime[0]["auto_mint_enabled"]:
        mode = "auto-mint is on (as the minter last started): the next poll takes it"
    else:
        mode = ("auto-mint is off (TOKENIZATION_AUTO_MINT_ENABLED=false, as the minter last started): "
                "`gridtokenx cloud mint` mints it")
    return Explanation("waiting", f"reading {rid} is waiting to be minted ({ahead} older unminted readings); {mode}",
                       base | {"older_unminted": ahead})


# -- reconcile -------------------------------------------------------------------------------
async def run_reconcile(settings: CloudSettings, *, fix: bool) -> tuple[ReconcileReport, ReconcileReport]:
    try:
        backend = await open_backend(settings)
    except ChainBusy as exc:
        raise ChainBusy(f"{exc}. Stop the minter before reconciling an embedded chain.") from exc
    try:
        # Ratios and decimals come from the recorded settings (mint_settings), not this shell.
        first = await reconcile(settings.database_url, backend, fix=fix)
        if fix and any(u.fixed for u in first.unrecorded):
            return first, await reconcile(settings.database_url, backend, fix=False)
        return first, first
    finally:
        await backend.close()


def describe_report(r: ReconcileReport) -> str:
    lines = [f"mint {r.mint}: supply on chain {r.supply_chain}, in database {r.supply_database}"
             f"{'' if r.supply_chain == r.supply_database else '  <-- DRIFT'}",
             f"wallets checked: {r.wallets_checked}, drifting: {len(r.wallet_drift)}"]
    lines += [f"  {d.wallet}: database {d.database}, chain {d.chain} ({d.chain - d.database:+d})"
              for d in r.wallet_drift]
    for u in r.unrecorded:
        lines.append(f"  landed but not recorded: batch {u.batch_id} tx {u.signature} slot {u.slot} "
                     f"(batch is {u.batch_status}){' -> recorded' if u.fixed else ''}")
    for batch_id, sig in r.confirmed_not_on_chain:
        lines.append(f"  recorded confirmed but not on chain: batch {batch_id} tx {sig}")
    if r.foreign_transactions:
        lines.append(f"other authority transactions: {r.foreign_transactions} ({FOREIGN_NOTE})")
    lines.append(f"entitlement: {len(r.entitled_by_wallet)} wallets, on chain {sum(r.chain_by_wallet.values())}"
                 f" of {sum(r.entitled_by_wallet.values())} base units entitled by validated energy; "
                 f"drift {r.entitlement_drift}, unminted readings {r.unminted_readings}"
                 + (f", OVERMINTED wallets: {', '.join(r.overminted_wallets)}" if r.overminted_wallets else ""))
    for title, items in (("settings", r.settings_problems), ("MIS-MINTED", r.misminted),
                         ("meter series", r.series_problems), ("evidence", r.evidence_problems)):
        lines += [f"  {title}: {item}" for item in items]
    lines.append("clean: no drift" if r.clean else "DRIFT found" + ("" if any(u.fixed for u in r.unrecorded)
                                                                   else " (--fix records landed batches)"))
    return "\n".join(lines)


# -- status ----------------------------------------------------------------------------------
def describe_status(s: MintStatus) -> str:
    a = s.alerts

    def flag(name: str) -> str:
        return "  ALERT" if a[name] else ""

    rate = "n/a (nothing submitted)" if s.success_rate_pct is None else f"{s.success_rate_pct:.2f} %"
    latency = "n/a" if s.avg_latency_secs is None else f"{s.avg_latency_secs:.1f} s"
    return "\n".join([
        f"unminted backlog      {s.unminted_backlog} (alert > {BACKLOG_ALERT}){flag('unminted_backlog')}",
        f"success rate (1 h)    {rate} of {s.submitted_last_hour} (alert < {SUCCESS_ALERT_PCT:.0f} %)"
        f"{flag('success_rate')}",
        f"retry queue           {s.retry_queue_size} rows, avg {s.retry_queue_avg_attempts} / max "
        f"{s.retry_queue_max_attempts} attempts (alert > {RETRY_QUEUE_ALERT}){flag('retry_queue')}",
        f"dead-lettered         {s.dead_lettered}{flag('dead_letter')}",
        f"avg latency (1 h)     {latency} (alert > {LATENCY_ALERT_SECS:.0f} s){flag('latency')}",
        f"open batches          {s.open_batches}",
    ])
