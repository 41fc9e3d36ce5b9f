"""Pure planning: which base units each reading, meter and wallet gets, and how wallets pack into
transactions. No I/O; integer arithmetic only.

Minting is cumulative per meter. For a meter whose ledger says `minted_wh` validated Wh earned
`minted_units` so far, its readings (oldest first) each get

    units_i = max(0, entitled(minted_wh + wh_1 + … + wh_i) − units minted before it)

so the units of any prefix of readings add up to exactly entitled(total) − minted_units: replays
and retries mint nothing extra and rounding dust carries to the next reading instead of being lost.
A reading's wallet is the one the registry gave it at acceptance; each wallet gets one mint_to.

Amounts are u64 on chain. A reading that could not be minted even alone (its entitlement + 1 above
u64) is returned as unmintable, for the caller to dead-letter; when a wallet's total in one batch
would pass u64, its latest readings wait for a later batch (the cumulative rule holds for any subset).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, TypeVar

from solders.pubkey import Pubkey

from protocol.units import entitled_base_units

U64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class PendingReading:
    id: int
    meter_id: str
    wallet: str
    export_wh: int


@dataclass(frozen=True, slots=True)
class MeterLedger:
    minted_wh: int = 0
    minted_units: int = 0


@dataclass(slots=True)
class BatchPlan:
    """One transaction's worth: wallets (one mint_to each) and everything they account for."""

    reading_ids: list[int] = field(default_factory=list)
    reading_units: list[int] = field(default_factory=list)
    wallet_amounts: dict[str, int] = field(default_factory=dict)
    meter_wh: dict[str, int] = field(default_factory=dict)
    meter_units: dict[str, int] = field(default_factory=dict)

    @property
    def total_units(self) -> int:
        return sum(self.wallet_amounts.values())

    @property
    def transfers(self) -> list[tuple[str, int]]:
        """Wallets that actually receive tokens (a zero amount needs no instruction)."""
        return [(w, a) for w, a in self.wallet_amounts.items() if a > 0]


@dataclass(frozen=True, slots=True)
class _WalletGroup:
    wallet: str
    amount: int
    reading_ids: tuple[int, ...]
    reading_units: tuple[int, ...]
    meter_wh: dict[str, int]
    meter_units: dict[str, int]


def attribute(readings: Sequence[PendingReading], ledgers: dict[str, MeterLedger], *, ratio: Fraction,
              decimals: int) -> dict[int, int]:
    """Base units per reading id, by the cumulative rule above. Readings are taken in id order."""
    state = {m: (lg.minted_wh, lg.minted_units) for m, lg in ledgers.items()}
    out: dict[int, int] = {}
    for r in sorted(readings, key=lambda r: r.id):
        wh, units = state.get(r.meter_id, (0, 0))
        wh += r.export_wh
        target = entitled_base_units(wh, ratio=ratio, decimals=decimals)
        out[r.id] = max(0, target - units)
        state[r.meter_id] = (wh, max(units, target))
    return out


class SettingsRecord(Protocol):
    """The economic settings in force for a reading (cloud.minter.economics.MintSettings)."""

    @property
    def id(self) -> int: ...
    @property
    def ratio(self) -> Fraction: ...
    @property
    def decimals(self) -> int: ...


R = TypeVar("R", bound=SettingsRecord)


def select(claimed: Sequence[PendingReading], free_meters: set[str], records: Sequence[R],
           record_of: Callable[[int], R]) -> tuple[list[tuple[R, list[PendingReading]]], dict[int, str]]:
    """This pass's readings grouped by the settings record in force for them, and the readings to
    dead-letter (reading id → why). Meters whose ledger another minter holds wait; each meter is minted
    under one record per pass (its oldest), so a batch's ledger increments belong to one record."""
    first: dict[str, int] = {}
    for r in claimed:
        if r.meter_id in free_meters:
            first[r.meter_id] = min(first.get(r.meter_id, 1 << 62), record_of(r.id).id)
    pending = [r for r in claimed if r.meter_id in first and record_of(r.id).id == first[r.meter_id]]
    dead = {r.id: f"wallet address {r.wallet!r} is not a valid Solana public key"
            for r in pending if not is_pubkey(r.wallet)}
    groups: list[tuple[R, list[PendingReading]]] = []
    for rec in records:
        mine = [r for r in pending if record_of(r.id).id == rec.id and r.id not in dead]
        bad = unmintable(mine, ratio=rec.ratio, decimals=rec.decimals)
        dead |= bad
        if group := [r for r in mine if r.id not in bad]:
            groups.append((rec, group))
    return groups, dead


def is_pubkey(text: str) -> bool:
    try:
        Pubkey.from_string(text)
    except ValueError:
        return False
    return True


def unmintable(readings: Sequence[PendingReading], *, ratio: Fraction, decimals: int) -> dict[int, str]:
    """reading id → why it can never be minted: its amount alone does not fit an SPL u64."""
    out: dict[int, str] = {}
    for r in readings:
        alone = entitled_base_units(r.export_wh, ratio=ratio, decimals=decimals)
        if alone + 1 > U64_MAX:
            out[r.id] = (f"{r.export_wh} Wh at ratio {ratio} and {decimals} decimals is {alone} base units, "
                         f"above the SPL maximum {U64_MAX} (u64)")
    return out


def fit_u64(readings: Sequence[PendingReading], ledgers: dict[str, MeterLedger], *, ratio: Fraction,
            decimals: int) -> tuple[list[PendingReading], dict[int, int]]:
    """Drop each over-full wallet's latest reading until every wallet's amount fits u64; returns the
    readings kept and their units. Dropped readings are simply not in this batch."""
    kept = sorted(readings, key=lambda r: r.id)
    while True:
        units = attribute(kept, ledgers, ratio=ratio, decimals=decimals)
        totals: dict[str, int] = {}
        for r in kept:
            totals[r.wallet] = totals.get(r.wallet, 0) + units[r.id]
        over = {w for w, t in totals.items() if t > U64_MAX}
        if not over:
            return kept, units
        drop = {max(r.id for r in kept if r.wallet == w) for w in over}
        kept = [r for r in kept if r.id not in drop]


def plan(readings: Sequence[PendingReading], ledgers: dict[str, MeterLedger], *, ratio: Fraction,
         decimals: int, fits: Callable[[list[tuple[str, int]]], bool], max_batches: int) -> list[BatchPlan]:
    """Group readings per wallet and pack wallets into transactions that `fits` accepts.

    Every reading of one wallet lands in the same batch. At most `max_batches` batches are returned;
    readings of wallets left over simply wait for the next poll. Every amount fits u64 (`fit_u64`;
    call `unmintable` first to take out readings that never can).
    """
    readings, units = fit_u64(readings, ledgers, ratio=ratio, decimals=decimals)
    by_wallet: dict[str, list[PendingReading]] = {}
    for r in sorted(readings, key=lambda r: r.id):
        by_wallet.setdefault(r.wallet, []).append(r)
    groups = []
    for wallet, rs in by_wallet.items():
        meter_wh: dict[str, int] = {}
        meter_units: dict[str, int] = {}
        for r in rs:
            meter_wh[r.meter_id] = meter_wh.get(r.meter_id, 0) + r.export_wh
            meter_units[r.meter_id] = meter_units.get(r.meter_id, 0) + units[r.id]
        groups.append(_WalletGroup(wallet, sum(units[r.id] for r in rs), tuple(r.id for r in rs),
                                   tuple(units[r.id] for r in rs), meter_wh, meter_units))
    batches: list[BatchPlan] = []
    current = BatchPlan()
    for g in groups:
        candidate = [*current.transfers, *([(g.wallet, g.amount)] if g.amount > 0 else [])]
        if current.reading_ids and not fits(candidate):
            batches.append(current)
            if len(batches) >= max_batches:
                return batches
            current = BatchPlan()
        _add(current, g)
    if current.reading_ids:
        batches.append(current)
    return batches[:max_batches]


def _add(batch: BatchPlan, g: _WalletGroup) -> None:
    batch.reading_ids.extend(g.reading_ids)
    batch.reading_units.extend(g.reading_units)
    batch.wallet_amounts[g.wallet] = batch.wallet_amounts.get(g.wallet, 0) + g.amount
    for m, wh in g.meter_wh.items():
        batch.meter_wh[m] = batch.meter_wh.get(m, 0) + wh
        batch.meter_units[m] = batch.meter_units.get(m, 0) + g.meter_units[m]
