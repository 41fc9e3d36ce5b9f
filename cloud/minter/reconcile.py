"""Reconciliation: the chain is the truth for balances, the database for intent. Compare them.

1. Per wallet: on-chain ATA balance vs the sum of confirmed batch amounts for that wallet.
2. The mint's supply vs the sum of all confirmed batches.
3. The mint authority's signature history: every landed transaction whose memo names a batch must be
   that batch's recorded signature. A landed batch still open in the WAL (the minter died between the
   chain and the database) is "unrecorded" and `--fix` confirms it exactly as the minter would. A
   landed batch that was released (expired/failed) is a potential double mint and is only reported.
4. Every confirmed batch's signature must have landed without error.
5. Settings: the mint on chain (owner program, decimals, mint authority) against the recorded settings
   in force (mint_settings); ratios and decimals are always the recorded ones, never the caller's shell.
6. Mis-mints: per meter and settings record, the base units recorded for its minted readings must be
   exactly entitled(their Wh) (the cumulative rule makes that exact); accepted intervals of a meter
   must not overlap and must fit its capacity; every stored reading must still parse (one meaning per
   byte string), match its columns, and carry a signature of a key that covered it when accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import asyncpg
from solders.pubkey import Pubkey

from cloud.chain.base import ChainBackend
from cloud.chain.identity import IdentityError, check_mint_on_chain
from cloud.chain.tx import token_account
from cloud.minter import economics, store
from protocol.errors import ProtocolError
from protocol.units import entitled_base_units
from protocol.wire import parse_payload, verify_signed


@dataclass(frozen=True, slots=True)
class WalletDrift:
    wallet: str
    database: int
    chain: int


@dataclass(frozen=True, slots=True)
class LandedUnrecorded:
    batch_id: int
    signature: str
    slot: int
    batch_status: str
    fixed: bool


#: What `foreign_transactions` counts, for the JSON and text reports.
FOREIGN_NOTE = ("transactions signed by the mint authority without a mint-batch memo: creating the mint "
                "(1 on a fresh chain) and anything else done with the authority key; they mint nothing by "
                "this service and are not drift")


@dataclass(slots=True)
class ReconcileReport:
    mint: str
    wallets_checked: int = 0
    supply_database: int = 0
    supply_chain: int = 0
    wallet_drift: list[WalletDrift] = field(default_factory=list)
    unrecorded: list[LandedUnrecorded] = field(default_factory=list)
    confirmed_not_on_chain: list[tuple[int, str]] = field(default_factory=list)
    foreign_transactions: int = 0  # authority transactions without one of our memos (mint creation, ...)
    # Entitlement check: on-chain balance of every registered wallet against what its meters' accepted
    # readings entitle it to (protocol.units.entitled_base_units per meter, summed per wallet).
    chain_by_wallet: dict[str, int] = field(default_factory=dict)
    entitled_by_wallet: dict[str, int] = field(default_factory=dict)
    unminted_readings: int = 0
    overminted_wallets: list[str] = field(default_factory=list)
    settings_problems: list[str] = field(default_factory=list)
    """The chain or the database disagree with the recorded economic settings."""
    misminted: list[str] = field(default_factory=list)
    """Meters whose recorded units are not what their minted energy entitles (re-priced history...)."""
    series_problems: list[str] = field(default_factory=list)
    """Accepted readings that overlap or exceed capacity."""
    evidence_problems: list[str] = field(default_factory=list)
    """Stored readings whose bytes do not parse, disagree with the columns, or lack a valid signature."""

    @property
    def entitlement_drift(self) -> int:
        """Σ |chain − entitled| over wallets. Only meaningful as 'drift' once nothing is left unminted."""
        wallets = self.chain_by_wallet.keys() | self.entitled_by_wallet.keys()
        return sum(abs(self.chain_by_wallet.get(w, 0) - self.entitled_by_wallet.get(w, 0)) for w in wallets)

    @property
    def clean(self) -> bool:
        return (not self.wallet_drift and not self.unrecorded and not self.confirmed_not_on_chain
                and self.supply_database == self.supply_chain and not self.overminted_wallets
                and (self.unminted_readings > 0 or self.entitlement_drift == 0)
                and not self.settings_problems and not self.misminted and not self.series_problems
                and not self.evidence_problems)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"clean": self.clean, "entitlement_drift": self.entitlement_drift,
                               "foreign_transactions_note": FOREIGN_NOTE}


#: Problems listed per category at most (the count is in the last line).
MAX_LISTED = 50


async def reconcile(dsn: str, backend: ChainBackend, *, fix: bool = False) -> ReconcileReport:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        report = ReconcileReport(mint=str(backend.identity.mint))
        records = await economics.load(pool)
        await _check_settings(pool, backend, report, records)
        await _scan_history(pool, backend, report, fix=fix)
        await _compare_balances(pool, backend, report)
        await _check_confirmed(pool, backend, report)
        await _check_entitlement(pool, backend, report, records)
        await _check_series(pool, report)
        await _check_evidence(pool, report)
        return report
    finally:
        await pool.close()


def _note(items: list[str], text: str) -> None:
    if len(items) < MAX_LISTED:
        items.append(text)
    elif len(items) == MAX_LISTED:
        items.append("... (more)")


async def _check_settings(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport,
                          records: list[economics.MintSettings]) -> None:
    if not records:
        if await pool.fetchval("SELECT count(*) FROM mint_batches"):
            report.settings_problems.append("batches exist but no economic settings are recorded")
        return
    latest = records[-1]
    if latest.mint_address != report.mint:
        report.settings_problems.append(f"the recorded mint is {latest.mint_address}, this chain's is {report.mint}")
        return
    try:
        await check_mint_on_chain(backend, backend.identity.mint, backend.identity.authority.pubkey(),
                                  backend.identity.token_program, latest.decimals, source="the recorded settings")
    except IdentityError as exc:
        report.settings_problems.append(str(exc).replace("; the minter refuses to start", ""))
    if str(backend.identity.token_program) != latest.token_program:
        report.settings_problems.append(f"the recorded token program is {latest.token_program}, the configured one "
                                        f"{backend.identity.token_program}")


async def _scan_history(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport, *,
                        fix: bool) -> None:
    authority = backend.identity.authority.pubkey()
    before: str | None = None
    while True:
        page = await backend.signatures_for_address(authority, before=before, limit=1000)
        if not page:
            return
        for info in page:
            batch_id = store.batch_id_from_memo(info.memo)
            if batch_id is None:
                report.foreign_transactions += 1
                continue
            if info.err is not None:
                continue  # landed with an error: nothing was minted
            row = await pool.fetchrow("SELECT status, signature FROM mint_batches WHERE id = $1", batch_id)
            if row is not None and row["status"] == "confirmed" and row["signature"] == info.signature:
                continue
            status = "unknown" if row is None else str(row["status"])
            fixed = False
            if fix and row is not None and status in ("planned", "sent") and row["signature"] == info.signature:
                fixed = await store.confirm(pool, batch_id, info.signature, info.slot, info.block_time) is not None
            report.unrecorded.append(LandedUnrecorded(batch_id, info.signature, info.slot, status, fixed))
        before = page[-1].signature


async def _compare_balances(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport) -> None:
    rows = await pool.fetch(
        "SELECT w.wallet, sum(w.amount)::numeric AS amount FROM mint_batches b,"
        " unnest(b.wallets, b.amounts) AS w(wallet, amount)"
        " WHERE b.status = 'confirmed' AND b.mint_address = $1 GROUP BY w.wallet", report.mint)
    total = 0
    for r in rows:
        expected = int(r["amount"])
        total += expected
        on_chain = await backend.token_balance(token_account(backend.identity, Pubkey.from_string(r["wallet"])))
        report.wallets_checked += 1
        if on_chain != expected:
            report.wallet_drift.append(WalletDrift(r["wallet"], expected, on_chain))
    report.supply_database = total
    report.supply_chain = await backend.token_supply()


async def _check_confirmed(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport) -> None:
    rows = await pool.fetch("SELECT id, signature FROM mint_batches WHERE status = 'confirmed'"
                            " AND signature IS NOT NULL AND mint_address = $1 ORDER BY id", report.mint)
    for i in range(0, len(rows), 256):
        chunk = rows[i:i + 256]
        statuses = await backend.signature_statuses([r["signature"] for r in chunk])
        for r, st in zip(chunk, statuses, strict=True):
            if st is None or st.err is not None:
                report.confirmed_not_on_chain.append((r["id"], r["signature"]))


# Stored readings plus what archived partitions left behind (meter_readings_archived, migration 060).
_BY_SETTINGS = """
SELECT m.meter_id, m.wallet_address AS wallet, t.sid, sum(t.wh)::bigint AS wh,
       coalesce(sum(t.minted_wh), 0)::bigint AS minted_wh, coalesce(sum(t.minted_units), 0)::numeric AS minted_units
FROM meters m
LEFT JOIN (
    SELECT r.meter_id, r.wallet_address, s.id AS sid, r.export_wh AS wh,
           CASE WHEN r.minted THEN r.export_wh END AS minted_wh,
           CASE WHEN r.minted THEN r.mint_base_units END AS minted_units
    FROM meter_readings r
    LEFT JOIN LATERAL (SELECT id FROM mint_settings s WHERE s.from_reading_id <= r.id
                       ORDER BY s.from_reading_id DESC LIMIT 1) s ON TRUE
    UNION ALL
    SELECT meter_id, wallet_address, nullif(settings_id, 0), wh, minted_wh, minted_units FROM meter_readings_archived
) t ON t.meter_id = m.meter_id AND t.wallet_address = m.wallet_address
GROUP BY m.meter_id, m.wallet_address, t.sid
"""


async def _check_entitlement(pool: asyncpg.Pool, backend: ChainBackend, report: ReconcileReport,
                             records: list[economics.MintSettings]) -> None:
    by_id = {r.id: r for r in records}
    default = (Fraction(1), backend.identity.decimals)
    for r in await pool.fetch(_BY_SETTINGS):
        rec = by_id.get(r["sid"])
        ratio, decimals = (rec.ratio, rec.decimals) if rec else default
        entitled = entitled_base_units(int(r["wh"] or 0), ratio=ratio, decimals=decimals)
        report.entitled_by_wallet[r["wallet"]] = report.entitled_by_wallet.get(r["wallet"], 0) + entitled
        owed = entitled_base_units(int(r["minted_wh"]), ratio=ratio, decimals=decimals)
        if int(r["minted_units"]) != owed:
            _note(report.misminted, f"meter {r['meter_id']}: {int(r['minted_units'])} base units recorded for "
                  f"{r['minted_wh']} Wh minted under settings {r['sid']} (ratio {ratio}, {decimals} decimals), "
                  f"entitled to {owed}")
    for wallet in report.entitled_by_wallet:
        report.chain_by_wallet[wallet] = await backend.token_balance(
            token_account(backend.identity, Pubkey.from_string(wallet)))
    report.overminted_wallets = sorted(w for w, b in report.chain_by_wallet.items()
                                       if b > report.entitled_by_wallet.get(w, 0))
    report.unminted_readings = int(await pool.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted"))


_OVERLAPS = """
SELECT meter_id, seq, prev_seq, interval_start, prev_end FROM (
    SELECT meter_id, seq, interval_start, lag(seq) OVER w AS prev_seq, lag(interval_end) OVER w AS prev_end
    FROM meter_readings WINDOW w AS (PARTITION BY meter_id ORDER BY seq)) t
WHERE interval_start < prev_end ORDER BY meter_id, seq LIMIT 100
"""
_OVER_CAPACITY = """
SELECT r.id, r.meter_id, r.seq, r.export_wh, m.capacity_w,
       extract(epoch FROM r.interval_end - r.interval_start)::bigint AS secs
FROM meter_readings r JOIN meters m USING (meter_id)
WHERE r.export_wh::numeric * 3600 > m.capacity_w::numeric * extract(epoch FROM r.interval_end - r.interval_start)
ORDER BY r.id LIMIT 100
"""


async def _check_series(pool: asyncpg.Pool, report: ReconcileReport) -> None:
    """Accepted intervals of a meter, in seq order, never overlap (PROTOCOL.md, "Validation")."""
    for r in await pool.fetch(_OVERLAPS):
        _note(report.series_problems, f"meter {r['meter_id']}: accepted seq {r['seq']} starts "
              f"{r['interval_start']:%Y-%m-%d %H:%M:%SZ}, before accepted seq {r['prev_seq']} ends "
              f"{r['prev_end']:%Y-%m-%d %H:%M:%SZ} (overlapping intervals)")
    for r in await pool.fetch(_OVER_CAPACITY):
        _note(report.series_problems, f"meter {r['meter_id']}: accepted seq {r['seq']} has {r['export_wh']} Wh, "
              f"above capacity {r['capacity_w']} W x {r['secs']} s")


_KEYS = """
SELECT meter_id, public_key, extract(epoch FROM valid_from) AS since, extract(epoch FROM valid_until) AS until,
       below_seq, extract(epoch FROM compromised_at) AS compromised
FROM meter_keys
"""
_READINGS = """
SELECT id, meter_id, seq, extract(epoch FROM interval_start)::bigint AS start_s,
       extract(epoch FROM interval_end)::bigint AS end_s, export_wh, payload,
       extract(epoch FROM submitted_at) AS at
FROM meter_readings WHERE id > $1 ORDER BY id LIMIT 5000
"""


async def _check_evidence(pool: asyncpg.Pool, report: ReconcileReport) -> None:
    """Re-read every stored reading from its signed bytes: it must parse (a duplicated key is
    malformed), say what the columns say, and verify with a key that covered it when it was accepted
    (current then and not yet compromised, or retired with a watermark above its seq)."""
    import base58

    keys: dict[str, list[tuple[bytes, float, float | None, int | None, float | None]]] = {}
    for k in await pool.fetch(_KEYS):
        try:
            public = base58.b58decode(k["public_key"])
        except ValueError:
            continue
        keys.setdefault(k["meter_id"], []).append(
            (public, float(k["since"]), None if k["until"] is None else float(k["until"]), k["below_seq"],
             None if k["compromised"] is None else float(k["compromised"])))
    last = 0
    while True:
        rows = await pool.fetch(_READINGS, last)
        if not rows:
            return
        for r in rows:
            last = r["id"]
            where = f"reading {r['id']} ({r['meter_id']}:{r['seq']})"
            try:
                signed = parse_payload(bytes(r["payload"]))
            except ProtocolError as exc:
                _note(report.evidence_problems, f"{where}: its signed bytes are {exc.reason.value} ({exc.detail})")
                continue
            got = signed.reading
            if (got.meter_id, got.seq, got.start, got.end, got.export_wh) != (
                    r["meter_id"], r["seq"], r["start_s"], r["end_s"], r["export_wh"]):
                _note(report.evidence_problems, f"{where}: the columns differ from the signed reading")
                continue
            at = float(r["at"])
            ok = any(verify_signed(signed, public) for public, since, until, below, compromised
                     in keys.get(r["meter_id"], [])
                     if (compromised is None or at < compromised)
                     and ((since <= at + 1 and (until is None or at < until))
                          or (below is not None and got.seq < below)))
            if not ok:
                _note(report.evidence_problems, f"{where}: not signed by a key that covered it when accepted "
                      "(compromised, retired below its seq, or unknown)")
