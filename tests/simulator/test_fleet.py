"""A fleet against a real Mosquitto (edge broker config and ACL): counts, signatures, seq, registers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from gridtokenx.harness.brokers import free_port, generate_dev_certs
from simulator.fleet import run_fleet
from simulator.keystore import keygen, load_keys
from simulator.settings import BrokerSettings, MeterSettings, RunSettings, SigningSettings, SimSettings
from tests.conftest import BrokerFactory
from tests.simulator.checks import assert_continuous, registry, verified_series
from tests.simulator.conftest import Fleet, finish, subscriber

DAY = 86_400


#: Instants the simulated day ends at (UTC): the result never depends on today's date or weather.
SUMMER_NOON = 1_783_339_200   # 2026-07-06T12:00:00Z, sunny for fleet seed 0 (and the day before)
WINTER_NIGHT = 1_797_814_800  # 2026-12-21T01:00:00Z, overcast, the sun long set
RAINY_DAY = 1_781_956_800     # 2026-06-20T12:00:00Z, rain


@pytest.mark.parametrize("now", [SUMMER_NOON, WINTER_NIGHT, RAINY_DAY], ids=["summer-noon", "winter-night", "rain"])
async def test_a_simulated_day_delivers_every_reading_signed_and_continuous(
        fleet_factory: Callable[..., Fleet], now: int) -> None:
    fleet = fleet_factory(6)
    # One simulated day (96 readings of 15 min per meter) in 2 real seconds, ending at the injected instant.
    settings = fleet.settings(speed=DAY / 2, duration=2.0)

    async with subscriber(fleet.broker) as received:
        report = await run_fleet(settings, clock=lambda: float(now))
        await finish(fleet.broker, fleet.keys[0], received)

    assert report.errors == {}
    assert report.acked == report.published == 6 * 96
    assert len(received.messages) == 6 * 96
    series = verified_series(received.messages, registry(fleet.keys_dir))
    assert series.duplicates == 0
    assert sorted(series.readings) == [k.meter_id for k in fleet.keys]
    for meter_id, readings in series.readings.items():
        assert sorted(readings) == list(range(1, 97))
        assert_continuous(readings)
        ends = [r.reading.end for r in readings.values()]
        # Anchored so the last interval ends no later than the clock (the cloud's in_future rule).
        assert max(ends) <= now and min(ends) >= now - DAY - 900
        totals = report.per_meter[meter_id]
        assert (totals.readings, totals.first_seq, totals.last_seq) == (96, 1, 96)
        assert totals.export_wh == sum(r.reading.export_wh for r in readings.values())
        assert totals.last_register_wh == readings[96].reading.export_register_wh
    # Consumers import only, whatever the weather; on a sunny day every solar or hybrid meter exports.
    kinds = {k.meter_id: k.meter_type for k in fleet.keys}
    for meter_id, readings in series.readings.items():
        exported = sum(r.reading.export_wh for r in readings.values())
        if kinds[meter_id] == "consumer":
            assert exported == 0, (meter_id, exported)
        elif now == SUMMER_NOON and kinds[meter_id] in ("solar", "hybrid"):
            assert exported > 0, (meter_id, kinds[meter_id], exported)



async def test_fleet_user_multiplexes_meters_over_few_connections(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(8)
    settings = fleet.settings(speed=DAY / 2, duration=1.0)
    settings = dataclasses.replace(settings, broker=dataclasses.replace(
        settings.broker, url=fleet.broker.fleet_url, connections=2, fleet_user="sim-fleet",
        fleet_password=fleet.fleet_password))

    async with subscriber(fleet.broker) as received:
        report = await run_fleet(settings)
        await finish(fleet.broker, fleet.keys[0], received)
    assert report.connections == 2 and report.errors == {}
    assert len(received.messages) == report.acked == 8 * 48
    series = verified_series(received.messages, registry(fleet.keys_dir))
    for readings in series.readings.values():
        assert sorted(readings) == list(range(1, 49))
        assert_continuous(readings)



async def test_legacy_format_signs_the_gateway_string(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(3, "solar")
    settings = fleet.settings(speed=DAY / 4, duration=1.0,
                              meter=MeterSettings(reading_interval_seconds=300, format="legacy"))

    async with subscriber(fleet.broker) as received:
        report = await run_fleet(settings)
        await finish(fleet.broker, fleet.keys[0], received)
    assert len(received.messages) == report.acked == 3 * 72
    series = verified_series(received.messages, registry(fleet.keys_dir))
    wallets = {k.meter_id: k.wallet_address for k in load_keys(fleet.keys_dir)}
    for meter_id, readings in series.readings.items():
        assert {r.format for r in readings.values()} == {"legacy"}
        assert {r.claimed_wallet for r in readings.values()} == {wallets[meter_id]}
        assert_continuous(readings, step=300)  # legacy seq is the timestamp
        assert report.per_meter[meter_id].export_wh == sum(r.reading.export_wh for r in readings.values())



@pytest.mark.parametrize("mode", ["live", "replay"])  # replay: simulator.publish's path over TLS
async def test_meters_publish_over_tls(tmp_path: Path, broker_factory: BrokerFactory, mode: str) -> None:
    keygen(tmp_path / "keys", 2, seed=9)
    keys = load_keys(tmp_path / "keys")
    certs = generate_dev_certs(tmp_path / "certs")
    tls_port = free_port()
    broker = broker_factory("edge", users={k.meter_id: k.mqtt_password for k in keys}, tls_port=tls_port,
                            certs_dir=certs)
    settings = SimSettings(
        broker=BrokerSettings(url=f"mqtts://localhost:{tls_port}", ca_file=certs / "ca.crt"),
        signing=SigningSettings(keys_dir=tmp_path / "keys"), run=RunSettings(speed=DAY / 2, duration=1.0, mode=mode))

    async with subscriber(broker) as received:
        report = await run_fleet(settings)
        await finish(broker, keys[0], received)
    assert report.errors == {} and report.acked == len(received.messages) == 2 * 48
    verified_series(received.messages, registry(tmp_path / "keys"))

