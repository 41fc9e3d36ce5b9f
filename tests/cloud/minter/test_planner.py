"""The pure planner: cumulative integer arithmetic, dust carried, wallets packed by what fits."""

from __future__ import annotations

import itertools
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.minter.planner import MeterLedger, PendingReading, attribute, plan
from protocol.units import entitled_base_units

RATIOS = st.sampled_from([Fraction(1), Fraction(1, 3), Fraction(7, 4), Fraction(0)])


@settings(max_examples=200, deadline=None)
@given(whs=st.lists(st.integers(0, 100_000), min_size=1, max_size=40), cuts=st.lists(st.integers(1, 40), max_size=8),
       ratio=RATIOS, decimals=st.integers(0, 9))
def test_any_split_into_batches_mints_exactly_the_entitlement(whs: list[int], cuts: list[int], ratio: Fraction,
                                                               decimals: int) -> None:
    """However the readings of one meter are split across polls, the total is entitled(total Wh)."""
    readings = [PendingReading(i + 1, "m", "w", wh) for i, wh in enumerate(whs)]
    bounds = sorted({0, len(readings), *[c % (len(readings) + 1) for c in cuts]})
    ledger = MeterLedger()
    minted = 0
    for lo, hi in itertools.pairwise(bounds):
        part = readings[lo:hi]
        units = attribute(part, {"m": ledger}, ratio=ratio, decimals=decimals)
        assert all(u >= 0 for u in units.values())
        minted += sum(units.values())
        ledger = MeterLedger(ledger.minted_wh + sum(r.export_wh for r in part),
                             ledger.minted_units + sum(units.values()))
    assert minted == entitled_base_units(sum(whs), ratio=ratio, decimals=decimals)


def test_dust_carries_forward_instead_of_being_lost() -> None:
    # 1 Wh at ratio 1/3 and 0 decimals is 1/3000 token: nothing until the 3000th Wh.
    readings = [PendingReading(i, "m", "w", 1000) for i in range(1, 4)]
    units = attribute(readings, {"m": MeterLedger()}, ratio=Fraction(1, 3), decimals=0)
    assert list(units.values()) == [0, 0, 1]


def test_wallets_are_aggregated_and_packed() -> None:
    readings = [PendingReading(i, f"m{i % 6}", f"w{i % 3}", 1000) for i in range(1, 31)]
    batches = plan(readings, {f"m{i}": MeterLedger() for i in range(6)}, ratio=Fraction(1), decimals=9,
                   fits=lambda transfers: len(transfers) <= 2, max_batches=10)
    assert [len(b.wallet_amounts) for b in batches] == [2, 1]
    assert sorted(r for b in batches for r in b.reading_ids) == list(range(1, 31))
    assert sum(b.total_units for b in batches) == 30 * 10**9
    # Every reading of a wallet is in the batch that carries that wallet's single mint_to.
    for b in batches:
        assert {f"w{r % 3}" for r in b.reading_ids} == set(b.wallet_amounts)


def test_max_batches_leaves_the_rest_for_the_next_poll() -> None:
    readings = [PendingReading(i, f"m{i}", f"w{i}", 1000) for i in range(1, 11)]
    batches = plan(readings, {f"m{i}": MeterLedger() for i in range(1, 11)}, ratio=Fraction(1), decimals=0,
                   fits=lambda transfers: len(transfers) <= 3, max_batches=2)
    assert len(batches) == 2 and sum(len(b.reading_ids) for b in batches) == 6


def test_zero_amount_wallets_need_no_instruction() -> None:
    readings = [PendingReading(1, "m", "w", 0)]
    (batch,) = plan(readings, {"m": MeterLedger()}, ratio=Fraction(1), decimals=9, fits=lambda t: True, max_batches=1)
    assert batch.transfers == [] and batch.reading_ids == [1]


def test_u64_guards_split_full_wallets_and_name_unmintable_readings() -> None:
    from cloud.minter.economics import SettingsError, check_config
    from cloud.minter.planner import U64_MAX, fit_u64, unmintable
    from cloud.settings import TokenizationSettings

    ratio = Fraction(10**9)  # 10^9 tokens per kWh: 1 Wh = 10^15 base units at 9 decimals
    big = PendingReading(1, "m1", "w1", 20_000)  # 2 × 10^19: never fits
    small = [PendingReading(i, "m2", "w2", 9_000) for i in range(2, 5)]  # 9 × 10^18 each
    assert set(unmintable([big, *small], ratio=ratio, decimals=9)) == {1}
    kept, units = fit_u64(small, {}, ratio=ratio, decimals=9)
    assert [r.id for r in kept] == [2, 3] and sum(units.values()) <= U64_MAX  # the third waits
    plans = plan(small, {}, ratio=ratio, decimals=9, fits=lambda t: True, max_batches=5)
    assert all(a <= U64_MAX for p in plans for a in p.wallet_amounts.values())
    check_config(TokenizationSettings(decimals=12))
    for bad in (TokenizationSettings(decimals=18), TokenizationSettings(decimals=256)):
        try:
            check_config(bad)
        except SettingsError:
            continue
        raise AssertionError(f"{bad.decimals} decimals accepted")
