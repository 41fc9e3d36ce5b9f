from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from protocol.units import entitled_base_units, parse_ratio


def test_one_kwh_is_one_token_at_nine_decimals() -> None:
    assert entitled_base_units(1000, ratio=parse_ratio("1.0"), decimals=9) == 10**9
    assert entitled_base_units(1, ratio=parse_ratio("1.0"), decimals=9) == 10**6


def test_ratio_is_exact() -> None:
    assert parse_ratio("0.1") == Fraction(1, 10)
    assert entitled_base_units(3, ratio=parse_ratio("0.1"), decimals=2) == 0  # 0.0003 tokens → 0.00
    assert entitled_base_units(30_000, ratio=parse_ratio("0.1"), decimals=2) == 300


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=50),
       st.sampled_from(["1.0", "0.7", "1.25", "0.333"]), st.integers(min_value=0, max_value=9))
def test_cumulative_minting_loses_no_dust(deltas: list[int], ratio_text: str, decimals: int) -> None:
    """Minting entitled(total) − minted after each reading equals entitled(sum) in the end."""
    ratio = parse_ratio(ratio_text)
    total = minted = 0
    for delta in deltas:
        total += delta
        mint = entitled_base_units(total, ratio=ratio, decimals=decimals) - minted
        assert mint >= 0
        minted += mint
    assert minted == entitled_base_units(sum(deltas), ratio=ratio, decimals=decimals)
