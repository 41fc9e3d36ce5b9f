"""Stop a fleet mid-run (gracefully, and with SIGKILL) and start it again: seq and registers continue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable

import pytest

from simulator.fleet import run_fleet
from simulator.state import StateError
from tests.helpers import async_wait_for
from tests.simulator.checks import assert_continuous, registry, verified_series
from tests.simulator.conftest import Fleet, finish, subscriber

DAY = 86_400


async def test_stop_mid_run_then_restart_continues_seq_and_registers(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(4)
    # Start two simulated days back, a day per 4 s, so the first run is stopped long before it ends.
    first = fleet.settings(speed=DAY / 4, duration=4.0, backfill=2 * DAY)
    second = fleet.settings(speed=DAY / 4, duration=1.0)

    async with subscriber(fleet.broker) as received:
        stop = asyncio.Event()
        run = asyncio.create_task(run_fleet(first, stop=stop))

        async def enough() -> bool:
            return len(received.messages) >= 100

        await async_wait_for(enough, timeout=20, message="100 readings from the first run")
        stop.set()
        report1 = await run
        await finish(fleet.broker, fleet.keys[0], received)
        seen_first = len(received.messages)
        assert report1.acked == seen_first < 4 * 96, "the first run was not stopped mid-run"

        report2 = await run_fleet(second)
        await finish(fleet.broker, fleet.keys[0], received)

    series = verified_series(received.messages, registry(fleet.keys_dir))
    assert series.duplicates == 0  # a graceful stop drains: nothing is sent twice
    for meter_id, readings in series.readings.items():
        assert min(readings) == 1
        assert_continuous(readings)  # across the restart: no seq reuse, no register regression
        assert report2.per_meter[meter_id].first_seq == report1.per_meter[meter_id].last_seq + 1  # type: ignore[operator]
        assert report2.per_meter[meter_id].readings == 24



async def test_sigkill_mid_run_then_restart_resends_identical_bytes_only(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(3)
    args = [sys.executable, "-m", "simulator", "run", "--keys", str(fleet.keys_dir), "--broker-url",
            fleet.broker.url, "--speed", str(DAY / 4), "--json"]

    async with subscriber(fleet.broker) as received:
        proc = await asyncio.create_subprocess_exec(*args, "--duration", "8", "--backfill", str(2 * DAY),
                                                    stdout=asyncio.subprocess.DEVNULL)

        async def enough() -> bool:
            return len(received.messages) >= 60

        await async_wait_for(enough, timeout=30, message="60 readings before the kill")
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        killed_at = len(received.messages)
        assert killed_at < 3 * 2 * 96, "the process finished before it was killed"

        proc = await asyncio.create_subprocess_exec(*args, "--duration", "1", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        await finish(fleet.broker, fleet.keys[0], received)

    series = verified_series(received.messages, registry(fleet.keys_dir))
    for readings in series.readings.values():
        assert min(readings) == 1
        # At-least-once across a crash: a resend has the same bytes (checked above), never a new
        # reading under an old seq, and the register series has no gap or regression.
        assert_continuous(readings)
        assert max(readings) > killed_at // 3



async def test_sigterm_drains_and_reports_what_was_delivered(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(3)
    args = [sys.executable, "-m", "simulator", "run", "--keys", str(fleet.keys_dir), "--speed", str(DAY / 4),
            "--duration", "8", "--backfill", str(2 * DAY), "--json"]

    async with subscriber(fleet.broker) as received:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "GRIDTOKENX_SIM_BROKER_URL": fleet.broker.url})

        async def enough() -> bool:
            return len(received.messages) >= 60

        await async_wait_for(enough, timeout=30, message="60 readings before SIGTERM")
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        await finish(fleet.broker, fleet.keys[0], received)

    report = json.loads(out)
    assert report["pending"] == 0 and report["errors"] == {}
    assert report["acked"] == len(received.messages) < 3 * 2 * 96
    series = verified_series(received.messages, registry(fleet.keys_dir))
    for meter_id, readings in series.readings.items():
        assert_continuous(readings)
        assert report["per_meter"][meter_id]["last_seq"] == max(readings)



async def test_a_second_run_on_the_same_state_is_refused(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(1)
    settings = fleet.settings(speed=DAY / 4, duration=5.0, backfill=DAY)

    stop = asyncio.Event()
    first = asyncio.create_task(run_fleet(settings, stop=stop))

    async def started() -> bool:
        return settings.state_path.exists()

    await async_wait_for(started, message="the first run's state file")
    with pytest.raises(StateError, match="another `sim run` is using"):
        await run_fleet(settings)
    stop.set()
    await first
    await run_fleet(fleet.settings(speed=DAY / 4, duration=0.5))  # free again once the first ends



async def test_a_state_left_for_a_week_skips_ahead_and_keeps_counting(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(1, "solar")
    first = fleet.settings(speed=DAY / 2, duration=0.5)

    async with subscriber(fleet.broker) as received:
        report1 = await run_fleet(first)
        with contextlib.closing(sqlite3.connect(first.state_path)) as db, db:
            db.execute("UPDATE meters SET next_start = next_start - 8 * 86400")
        report2 = await run_fleet(fleet.settings(speed=DAY / 2, duration=0.5))
        await finish(fleet.broker, fleet.keys[0], received)
    series = verified_series(received.messages, registry(fleet.keys_dir))
    readings = series.readings[fleet.keys[0].meter_id]
    assert sorted(readings) == list(range(1, report1.acked + report2.acked + 1))
    resumed = readings[report1.acked + 1].reading
    # Skipped to the run's backfill point (half a day), not 8 days back where the cloud says too_old;
    # seq and register carry on.
    assert resumed.end > time.time() - DAY
    before = readings[report1.acked].reading
    assert (resumed.export_register_wh or 0) - (before.export_register_wh or 0) == resumed.export_wh

