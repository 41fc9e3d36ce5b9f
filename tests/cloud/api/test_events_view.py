"""A wallet or meter subscriber sees only its own readings and amounts of a shared event."""

from __future__ import annotations

import json

from cloud.api.events import Event, view


def test_views_hide_other_wallets() -> None:
    readings = [{"reading_id": 1, "meter_id": "A", "wallet": "WA", "seq": 1},
                {"reading_id": 2, "meter_id": "B", "wallet": "WB", "seq": 1}]
    accepted = Event(7, "readings.accepted", 1.0, {"count": 2, "readings": readings}, ["A", "B"], ["WA", "WB"])
    everything = json.loads(view(accepted, ("all", None)).text)
    assert everything["data"]["count"] == 2 and everything["wallets"] == ["WA", "WB"]
    mine = json.loads(view(accepted, ("wallet", "WB")).text)
    assert mine["id"] == 7 and mine["data"]["readings"] == [readings[1]] and mine["wallets"] == ["WB"]
    assert json.loads(view(accepted, ("meter", "A")).text)["data"]["readings"] == [readings[0]]
    minted = Event(8, "batch.minted", 1.0, {"wallets": ["WA", "WB"], "amounts": ["5", "6"], "signature": "s"},
                   ["A", "B"], ["WA", "WB"])
    data = json.loads(view(minted, ("wallet", "WB")).text)["data"]
    assert (data["wallets"], data["amounts"], data["signature"]) == (["WB"], ["6"], "s")
