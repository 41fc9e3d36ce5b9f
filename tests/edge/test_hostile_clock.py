"""Must show (issue 15): a wall-clock step of +8 or -8 days drops no fresh reading as expired.

The buffer stamps rows with the wall clock; a step is noticed against the monotonic clock (and, across
restarts, CLOCK_BOOTTIME) and the stored stamps move with it (edge/clock.py). First with an injected
clock on the real buffer, then the agent process under libfaketime (Debian's `faketime`) when present.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from edge.buffer import Buffer, Quota
from edge.clock import StepDetector
from edge.screening import screen
from gridtokenx.harness.brokers import free_port
from gridtokenx.harness.standin import Fleet, interleaved, make_meters, reading_payload
from protocol.topics import meter_readings
from tests.edge.conftest import Rig
from tests.helpers import wait_for

DAY = 86_400.0
TTL = 7 * DAY
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


class Clocks:
    def __init__(self) -> None:
        self.wall, self.mono = 1_800_000_000.0, 1000.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds


def _buffer(tmp_path: Path, clocks: Clocks) -> Buffer:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=Quota(10**6, 10**9, "drop_oldest"), ttl_seconds=TTL)
    buf.clock = StepDetector(wall=lambda: clocks.wall, mono=lambda: clocks.mono)
    return buf


def _ingest(buf: Buffer, seqs: range, now: float) -> None:
    (meter,) = make_meters(1)
    buf.ingest([screen(meter_readings(meter.meter_id), reading_payload(meter, s)) for s in seqs], now)


@pytest.mark.parametrize("step", [8 * DAY, -8 * DAY], ids=["forward", "backward"])
def test_a_clock_step_expires_no_fresh_reading(tmp_path: Path, step: float) -> None:
    clocks = Clocks()
    buf = _buffer(tmp_path, clocks)
    _ingest(buf, range(0, 100), clocks.wall)
    clocks.run(30)
    clocks.step(step)  # the gateway's clock jumps; the readings are 30 s old
    _ingest(buf, range(100, 200), clocks.wall)
    clocks.run(10)
    assert buf.expire(clocks.wall) == []
    clocks.step(-step)  # NTP puts it right again: the readings taken meanwhile are 10 s old, not 8 days
    clocks.run(10)
    assert buf.expire(clocks.wall) == []
    assert buf.counts.pending == 200
    assert buf.clock_steps == 2
    # Real waiting time still expires them: 7 days and a bit later, all 200 go, each with a drops row.
    clocks.run(TTL + 60)
    assert len(buf.expire(clocks.wall)) == 200
    buf.close()


def test_a_step_while_the_agent_is_stopped_is_measured_by_boot_time(tmp_path: Path) -> None:
    """Variant: the clock steps +8 days between two runs on the same boot (CLOCK_BOOTTIME)."""
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=Quota(10**6, 10**9, "drop_oldest"), ttl_seconds=TTL)
    _ingest(buf, range(0, 50), time.time())
    buf.close()
    # What a +8 day step while stopped leaves: every stored wall-clock stamp 8 days behind the clock.
    with closing(sqlite3.connect(tmp_path / "b.db")) as conn, conn:
        boot, wall, boottime = conn.execute("SELECT value FROM meta WHERE key = 'clock_anchor'").fetchone()[0].split()
        conn.execute("UPDATE meta SET value = ? WHERE key = 'clock_anchor'",
                     (f"{boot} {float(wall) - 8 * DAY!r} {boottime}",))
        conn.execute("UPDATE readings SET received_at = received_at - ?", (8 * DAY,))
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=Quota(10**6, 10**9, "drop_oldest"), ttl_seconds=TTL)
    assert buf.expire(time.time()) == []
    assert buf.counts.pending == 50
    buf.close()


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is not installed (apt-get install faketime)")
def test_agent_under_libfaketime_steps_of_8_days(rig: Rig, agent_factory: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    monkeypatch.setenv("LD_PRELOAD", str(LIBFAKETIME))
    monkeypatch.setenv("FAKETIME_TIMESTAMP_FILE", str(offset))
    monkeypatch.setenv("FAKETIME_NO_CACHE", "1")
    monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    agent = agent_factory(cloud_url=f"mqtt://gw-test:x@127.0.0.1:{free_port()}").start()
    for var in ("LD_PRELOAD", "FAKETIME_TIMESTAMP_FILE"):
        monkeypatch.delenv(var)  # only the agent runs under the fake clock
    meters = make_meters(10)
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 10))
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 100, timeout=30, message="100 readings")
        for seconds, steps in ((8 * DAY, 1), (0, 2)):  # +8 days, then back (-8 days)
            offset.write_text(f"+{int(seconds)}\n")
            # New readings right after the step: the agent notices it on their commit.
            fleet.publish([(meter_readings(m.meter_id), reading_payload(m, 10 + steps)) for m in meters])
            wait_for(lambda s=steps: agent.metrics().get("gridtokenx_edge_clock_steps") == s,  # type: ignore[misc]
                     timeout=30, message=f"the agent noticing clock step {steps}")
            runs = agent.metrics().get("gridtokenx_edge_expire_runs_total", 0)
            wait_for(lambda r=runs: agent.metrics().get("gridtokenx_edge_expire_runs_total", 0) > r,  # type: ignore[misc]
                     timeout=30, message="a TTL pass after the step")
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 120, timeout=30, message="120 readings")
    assert agent.count("SELECT count(*) FROM drops") == 0
    assert agent.proc is not None and agent.proc.poll() is None, agent.output()
    assert agent.terminate() == 0
    assert os.environ.get("LD_PRELOAD") is None
