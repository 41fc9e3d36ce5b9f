"""The registry refuses meter ids that are broker service accounts or gateway ids: a meter registered
as `edge-agent` would share a username with the edge agent (before: accepted)."""

from __future__ import annotations

import pytest

from protocol.meters_csv import check_row, parse

KEY = "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"


@pytest.mark.parametrize("meter_id", ["edge-agent", "edge-inspector", "cloud-consumer", "sim-fleet", "gw-1",
                                      "GW-7", "Edge-Agent"])
def test_service_and_gateway_names_are_refused(meter_id: str) -> None:
    problem = check_row(meter_id, KEY, KEY, "solar", 5000)
    assert isinstance(problem, str) and "reserved for a service account or a gateway" in problem


def test_ordinary_ids_pass_and_csv_rows_report_the_line() -> None:
    assert not isinstance(check_row("M-00001", KEY, KEY, "solar", 5000), str)
    assert not isinstance(check_row("gwen-meter", KEY, KEY, "solar", 5000), str)
    rows, errors = parse("meter_id,public_key,wallet_address,meter_type,capacity_w\n"
                         f"M-1,{KEY},{KEY},solar,5000\nsim-fleet,{KEY},{KEY},solar,5000\n")
    assert [r.meter_id for r in rows] == ["M-1"]
    assert [(e.line, "reserved" in e.message) for e in errors] == [(3, True)]
