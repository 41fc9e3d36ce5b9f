"""Meter models and signing: pure, reproducible, within the cloud's bounds."""

from __future__ import annotations

import itertools
import os

import base58
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.check import check_payload
from protocol.keys import MeterKey
from protocol.reading import Reading
from simulator.faults import Fault, FaultRates
from simulator.keystore import new_key
from simulator.meter import Meter, frame, initial_state
from simulator.models import DAY, MeterModel, MeterType, Weather, weather_on

T0 = 1_790_000_000 // DAY * DAY  # a UTC midnight in 2026


def model(kind: MeterType, capacity: int = 5_000) -> MeterModel:
    return MeterModel(meter_id="M-00042", meter_type=kind, capacity_w=capacity, fleet_seed=3)


@given(kind=st.sampled_from(MeterType), capacity=st.integers(100, 50_000),
       start=st.integers(T0 - 400 * DAY, T0), seconds=st.sampled_from([60, 300, 900, 3600, DAY]))
@settings(max_examples=300, deadline=None)
def test_energy_is_integer_non_negative_and_within_capacity(kind: MeterType, capacity: int, start: int,
                                                            seconds: int) -> None:
    export_wh, import_wh = model(kind, capacity).measure(start, start + seconds)
    assert isinstance(export_wh, int) and isinstance(import_wh, int)
    assert 0 <= export_wh <= min(capacity * seconds // 3600, 100_000)
    assert import_wh >= 0
    if kind is MeterType.CONSUMER:
        assert export_wh == 0


def test_measurements_are_reproducible_and_follow_the_sun() -> None:
    solar = model(MeterType.SOLAR)
    assert solar.measure(T0, T0 + 900) == solar.measure(T0, T0 + 900)
    # UTC+7: local noon is 05:00 UTC, local midnight is 17:00 UTC.
    noon = solar.measure(T0 + 5 * 3600, T0 + 5 * 3600 + 900)[0]
    night = solar.measure(T0 + 17 * 3600, T0 + 17 * 3600 + 900)[0]
    assert noon > 100 and night == 0
    consumer = model(MeterType.CONSUMER)
    evening = consumer.measure(T0 + 12 * 3600 + 1800, T0 + 12 * 3600 + 2700)[1]  # 19:30 local
    small_hours = consumer.measure(T0 + 20 * 3600, T0 + 20 * 3600 + 900)[1]  # 03:00 local
    assert evening > 2 * small_hours


def test_weather_persists_and_varies() -> None:
    days = [weather_on(3, d) for d in range(20_000, 20_365)]
    assert set(days) == set(Weather)
    same_as_yesterday = sum(a == b for a, b in itertools.pairwise(days))
    assert same_as_yesterday > 365 * 0.3  # a Markov chain, not independent draws (≈ 0.2)


def test_native_frame_matches_protocol_frame() -> None:
    for _ in range(200):
        message, signature = os.urandom(50), os.urandom(64)
        assert frame(message, signature) == wire.frame(message, signature)


def key() -> MeterKey:
    return new_key(1, plan=[MeterType.HYBRID], seed=5)


def test_meter_publishes_what_sign_reading_would_and_keeps_its_register() -> None:
    k = key()
    state = initial_state(k, start=T0, fleet_seed=0)
    register0 = state.export_register_wh
    meter = Meter(k, state, interval=900, fmt="v1", faults=FaultRates(), fleet_seed=0, max_reading_wh=100_000,
                  neighbour="M-00002")
    items = [item for _ in range(96) for item in meter.next_interval(T0 + 2 * DAY)]
    assert [i.seq for i in items] == list(range(1, 97))
    public, secret = k.keypair()
    total = 0
    for item in items:
        signed = check_payload(item.payload, public_key=public, topic=item.topic)
        assert item.payload == wire.sign_reading(signed.reading, secret)
        total += signed.reading.export_wh
    assert meter.state.export_register_wh == register0 + total == items[-1].register_wh
    assert meter.state.next_start == T0 + DAY


def test_key_material_is_real_ed25519_and_solana() -> None:
    k = key()
    public, _ = k.keypair()
    assert base58.b58encode(public).decode() == k.public_key
    assert len(base58.b58decode(k.wallet_address)) == 32
    assert msgspec.json.decode(msgspec.json.encode(k), type=MeterKey) == k
    assert new_key(1, plan=[], seed=None).secret_seed != new_key(1, plan=[], seed=None).secret_seed


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_fault_rates_are_checked(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRates(replay=rate).check()


def test_reading_fields_of_good_readings() -> None:
    meter = Meter(key(), initial_state(key(), start=T0, fleet_seed=0), interval=900, fmt="v1",
                  faults=FaultRates(), fleet_seed=0, max_reading_wh=100_000, neighbour="M-00002")
    item = meter.next_interval(T0 + DAY)[0]
    reading = msgspec.json.decode(item.payload[len(wire.V1_PREFIX): item.payload.rfind(b"\n")], type=Reading)
    assert (reading.start, reading.end) == (T0, T0 + 900)
    assert reading.import_register_wh is not None and reading.import_wh is not None


def test_register_regression_waits_for_a_good_reading_and_goes_below_it() -> None:
    k = key()
    meter = Meter(k, initial_state(k, start=T0, fleet_seed=0), interval=900, fmt="v1",
                  faults=FaultRates(register_regression=1.0), fleet_seed=0, max_reading_wh=100_000,
                  neighbour="M-00002")
    first = meter.next_interval(T0 + DAY)
    assert [i.fault for i in first] == [None]  # nothing to regress from yet, in the cloud's eyes
    second = meter.next_interval(T0 + DAY)
    assert [i.fault for i in second] == [Fault.REGISTER_REGRESSION, None]
    assert second[0].register_wh is not None and first[0].register_wh is not None
    assert second[0].register_wh < first[0].register_wh
    assert second[1].register_wh - first[0].register_wh == second[1].export_wh  # type: ignore[operator]
