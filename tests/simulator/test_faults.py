"""Fault injection: what a subscriber sees, judged by the cloud's own rules, matches kind by kind what
the report says was injected; and the good readings around the faults all pass."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable

import pytest

from cloud.ingest.rules import Limits, RegisterPoint, check_reading
from protocol.reading import Reading
from protocol.wire import parse_payload
from simulator.faults import Fault, FaultRates
from simulator.fleet import run_fleet
from simulator.settings import MeterSettings
from tests.simulator.checks import classify, registry
from tests.simulator.conftest import Fleet, finish, subscriber

DAY = 86_400
#: The GridTokenX Phase 2 guide's defaults: 100 kWh per reading, 7 days, 5 minutes of clock skew.
LIMITS = Limits(max_reading_wh=100_000, max_age_secs=7 * DAY, clock_skew_secs=300)

Judged = tuple[Counter[str], dict[str, set[tuple[str, int]]], dict[str, dict[int, Reading]]]


def judge(messages: list[tuple[str, bytes]], keys: dict[str, bytes], capacity: dict[str, int]) -> Judged:
    """The cloud's verdicts without its database: structure and signature (protocol/), identity, then
    the cloud's own rule functions (cloud/ingest/rules.py) against the readings accepted so far.
    Returns counts by reason, keys by reason, and every reading by meter and seq."""
    now = int(time.time())
    counts: Counter[str] = Counter()
    by_reason: dict[str, set[tuple[str, int]]] = {}
    accepted: dict[str, dict[int, tuple[Reading, bytes]]] = {}
    readings: dict[str, dict[int, Reading]] = {}
    for topic, payload in messages:
        reason = classify(topic, payload, keys)
        reading = None if reason in ("malformed", "oversized") else parse_payload(payload).reading
        if reason == "ok":
            assert reading is not None
            mine = accepted.setdefault(reading.meter_id, {})
            if reading.seq in mine:
                reason = "duplicate" if mine[reading.seq][1] == payload else "equivocation"
            else:
                below = [seq for seq in mine if seq < reading.seq]
                above = [seq for seq in mine if seq > reading.seq]
                prev = point(mine[max(below)][0]) if below else None
                next_ = point(mine[min(above)][0]) if above else None
                violation = check_reading(reading, capacity_w=capacity[reading.meter_id], limits=LIMITS, now=now,
                                          prev=prev, next_=next_)
                if violation is None:
                    mine[reading.seq] = (reading, payload)
                else:
                    reason = violation.reason.value
        counts[reason] += 1
        if reading is not None:
            by_reason.setdefault(reason, set()).add(reading.key)
            if reason not in ("duplicate", "equivocation"):
                readings.setdefault(reading.meter_id, {})[reading.seq] = reading
    return counts, by_reason, readings


def point(reading: Reading) -> RegisterPoint:
    return RegisterPoint(reading.seq, reading.export_wh, reading.export_register_wh)


@pytest.mark.parametrize("multiplexed", [False, True], ids=["per-meter", "fleet-user"])
async def test_injected_faults_match_what_a_subscriber_sees(
        fleet_factory: Callable[..., Fleet], multiplexed: bool) -> None:
    fleet = fleet_factory(6)
    rates = FaultRates(**{f.value: 0.04 for f in Fault})
    settings = fleet.settings(speed=DAY / 2, duration=2.0, faults=rates)
    if multiplexed:
        settings = dataclasses.replace(settings, broker=dataclasses.replace(
            settings.broker, url=fleet.broker.fleet_url, connections=2, fleet_user="sim-fleet",
            fleet_password=fleet.fleet_password))

    async with subscriber(fleet.broker) as received:
        report = await run_fleet(settings)
        await finish(fleet.broker, fleet.keys[0], received)

    counts, by_reason, readings = judge(received.messages, registry(fleet.keys_dir), fleet.capacities())
    expected: Counter[str] = Counter()
    expected_keys: dict[str, set[tuple[str, int]]] = {}
    for _name, summary in report.faults.items():
        expected[summary.expected] += summary.count
        expected_keys.setdefault(summary.expected, set()).update(summary.affected)
    assert set(report.faults) == {f.value for f in Fault}, "every fault was drawn at least once"
    assert report.faults["wrong_topic"].expected == ("topic_mismatch" if multiplexed else "denied")

    denied = expected.pop("denied", 0)
    assert counts.pop("ok") == 6 * 96  # every good reading still arrives, and passes
    assert counts == expected
    # Mosquitto (MQTT 3.1.1) acknowledges a publish its ACL denies, and drops it.
    assert report.acked == len(received.messages) + denied
    for reason in ("bad_signature", "out_of_range", "too_old", "in_future", "register_regression",
                   "equivocation", "duplicate", "topic_mismatch"):
        assert by_reason.get(reason, set()) == expected_keys.get(reason, set()), reason

    # A fault never breaks the good series: each good reading's delta matches the register of the
    # reading just before it, good or faulty (faults carry the register unchanged), except after a
    # deliberate register regression.
    fresh = set().union(*(keys for reason, keys in expected_keys.items()
                          if reason not in ("duplicate", "equivocation")))
    regressions = expected_keys.get("register_regression", set())
    for meter_id, series in readings.items():
        good = [seq for seq in sorted(series) if (meter_id, seq) not in fresh]
        assert len(good) == 96
        register = {seq: r.export_register_wh or 0 for seq, r in series.items()}
        for prev, cur in itertools.pairwise(good):
            assert register[cur] - register[prev] == series[cur].export_wh
        for seq in good:
            if seq - 1 in series and (meter_id, seq - 1) not in regressions:
                assert register[seq] - register[seq - 1] == series[seq].export_wh



async def test_legacy_faults_never_collide_with_good_readings(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(3, "solar")
    rates = FaultRates(**{f.value: 0.05 for f in Fault})
    settings = fleet.settings(speed=DAY / 2, duration=1.0, faults=rates,
                              meter=MeterSettings(reading_interval_seconds=300, format="legacy"))

    async with subscriber(fleet.broker) as received:
        report = await run_fleet(settings)
        await finish(fleet.broker, fleet.keys[0], received)
    assert "register_regression" not in report.faults  # legacy readings carry no register
    counts, by_reason, _ = judge(received.messages, registry(fleet.keys_dir), fleet.capacities())
    expected: Counter[str] = Counter()
    for summary in report.faults.values():
        expected[summary.expected] += summary.count
    expected.pop("denied", None)
    assert counts.pop("ok") == 3 * 144
    assert counts == expected
    good = by_reason["ok"]
    for reason, keys in by_reason.items():
        if reason not in ("ok", "duplicate", "equivocation"):
            assert not keys & good, f"a {reason} fault reused a good reading's timestamp"

