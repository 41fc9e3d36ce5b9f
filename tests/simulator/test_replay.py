"""Replay mode against a real Mosquitto: the pre-signed payloads are the live payloads, byte for byte."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from protocol import parse_payload, sign_reading
from simulator.cli import sim
from simulator.fleet import run_fleet
from simulator.settings import MeterSettings
from simulator.state import StateStore
from tests.simulator.checks import assert_continuous, registry, verified_series
from tests.simulator.conftest import Fleet, finish, subscriber
from tests.simulator.test_fleet import SUMMER_NOON

INTERVALS = 12


def by_meter(messages: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in messages:
        out[topic].append(payload)
    return dict(out)


@pytest.mark.parametrize(("fmt", "interval"), [("v1", 900), ("legacy", 300)])
async def test_replay_publishes_exactly_the_bytes_live_mode_signs(
        fleet_factory: Callable[..., Fleet], tmp_path: Path, fmt: str, interval: int) -> None:
    fleet = fleet_factory(3)
    # A fixed clock: both runs cover the same 12 intervals per meter, ending at the injected instant.
    common = {"meter": MeterSettings(reading_interval_seconds=interval, format=fmt),
              "speed": INTERVALS * interval * 8.0, "duration": 0.5, "backfill": float(INTERVALS * interval)}
    payloads: dict[str, dict[str, list[bytes]]] = {}
    reports = {}
    for mode in ("live", "replay"):
        settings = fleet.settings(mode=mode, state=tmp_path / f"{mode}.sqlite", **common)
        async with subscriber(fleet.broker) as received:
            reports[mode] = await run_fleet(settings, clock=lambda: float(SUMMER_NOON))
            await finish(fleet.broker, fleet.keys[0], received)
        payloads[mode] = by_meter(received.messages)
        series = verified_series(received.messages, registry(fleet.keys_dir))  # protocol's verify, every one
        assert series.duplicates == 0
        for readings in series.readings.values():
            assert len(readings) == INTERVALS
            assert_continuous(readings, step=interval if fmt == "legacy" else 1)
            assert max(r.reading.end for r in readings.values()) <= SUMMER_NOON  # never in the future

    assert payloads["replay"] == payloads["live"]
    assert sum(len(v) for v in payloads["replay"].values()) == 3 * INTERVALS
    live, replay = reports["live"], reports["replay"]
    assert (live.mode, live.presign) == ("live", None)
    assert replay.mode == "replay" and replay.presign is not None
    assert replay.presign.messages == replay.presign.signs == replay.acked == replay.published == 3 * INTERVALS
    assert replay.presign.until == SUMMER_NOON and replay.presign.signs_per_s > 0
    assert replay.per_meter == live.per_meter and replay.errors == {}

    if fmt == "v1":  # and they are what protocol's own builder signs for that key, seq, interval and energy
        secrets_ = {f"meters/{k.meter_id}/readings": k.keypair()[1] for k in fleet.keys}
        for topic, sent in payloads["replay"].items():
            assert sent == [sign_reading(parse_payload(p).reading, secrets_[topic]) for p in sent]

    # The run persisted the counters before it started and emptied the outbox once acknowledged.
    store = StateStore(tmp_path / "replay.sqlite")
    try:
        assert store.load_outbox() == []
        assert {s.next_start for s in store.load_meters().values()} == {SUMMER_NOON}
    finally:
        store.close()


def test_sim_run_replay_needs_a_duration_and_documents_the_mode(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(1)
    runner = CliRunner()
    help_text = " ".join(runner.invoke(sim, ["run", "--help"]).output.split())
    assert "replay: sign every reading of the run before it starts" in help_text
    result = runner.invoke(sim, ["run", "--keys", str(fleet.keys_dir), "--broker-url", fleet.broker.url,
                                 "--mode", "replay"])
    assert result.exit_code != 0
    assert "--mode replay signs every reading of the run before it starts: give --duration" in " ".join(
        result.output.split())
