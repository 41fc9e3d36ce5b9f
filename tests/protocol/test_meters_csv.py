"""The meters.csv codec refuses text PostgreSQL cannot store or a report cannot show, with one sentence."""

from __future__ import annotations

import pytest

from protocol.meters_csv import check_row

KEY = "4MY96zVC3ApaUqznDvNZEvr74Qx7Rq3KaP2Gv8mqYLQ7"


@pytest.mark.parametrize("meter_type", ["", "sol\x00ar", "x" * 33, "solar\n", "s\u00e9"])
def test_meter_type_must_be_a_short_plain_word(meter_type: str) -> None:
    problem = check_row("M-1", KEY, KEY, meter_type, "5000")
    assert isinstance(problem, str) and problem.startswith("meter_type")


def test_a_good_row_passes() -> None:
    row = check_row("M-1", KEY, KEY, "hybrid", "5000")
    assert not isinstance(row, str) and row.capacity_w == 5000
