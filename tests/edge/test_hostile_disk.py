"""Must show (issue 15): a small disk (a 4 MiB tmpfs) flooded with oversized and junk payloads until
it is full. The agent stays up and acks nothing it could not commit (the broker keeps those
readings), `edge inspect purge --state quarantined --apply` works on the full disk, and when space
returns the agent recovers by itself: every reading a meter got a PUBACK for is in the buffer."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from protocol import topics
from tests.edge.conftest import ROOT, Rig
from tests.helpers import wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs here (needs root and mount rights): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a ballast file until the filesystem says ENOSPC."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return ballast


def _purge(buffer: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridtokenx", "edge", "inspect", "purge", "--db", str(buffer),
                           "--state", "quarantined", "--apply", "--yes"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_full_disk_keeps_the_agent_up_and_loses_nothing(rig: Rig, agent_factory: Any, small_disk: Path) -> None:
    agent = agent_factory()
    agent.buffer = small_disk / "buffer.db"
    agent.args[agent.args.index("--buffer") + 1] = str(agent.buffer)
    agent.start()
    meters = make_meters(10)
    junk = [(topics.meter_readings(m.meter_id), secrets.token_bytes(n)) for m in meters for n in (300, 5000)]
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 20) + junk)
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 200, timeout=30, message="200 readings")
        wait_for(lambda: agent.count("SELECT count(*) FROM quarantine") == 20, timeout=30, message="20 quarantined")
        ballast = _fill(small_disk)
        # The flood goes on against the full disk: junk, oversized payloads and honest readings.
        fleet.publish(junk * 5 + interleaved(meters, 30, first_seq=20))
        wait_for(lambda: agent.metrics().get("gridtokenx_edge_disk_full") == 1, timeout=30,
                 message="the agent to report the full disk")
        assert agent.proc is not None and agent.proc.poll() is None, agent.output()
        assert agent.count("SELECT count(*) FROM readings") == 200  # nothing new committed, so nothing acked
        # The technician's purge works on the full disk (it used to fail "cannot rollback").
        purged = _purge(agent.buffer)
        assert purged.returncode == 0, purged.stdout + purged.stderr
        # All 20 were deleted. (The agent may at once use the freed space for the junk it holds, and
        # SQLite reuses row ids, so the table need not be empty afterwards.)
        assert "changed 20, skipped 0" in purged.stdout, purged.stdout + purged.stderr
        # Space returns: the agent commits and acks what the broker kept for it, by itself.
        ballast.unlink()
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 500, timeout=60, interval=0.2,
                 message="every PUBACKed reading in the buffer after the disk has room again")
        wait_for(lambda: agent.metrics().get("gridtokenx_edge_disk_full") == 0, timeout=10,
                 message="the full-disk gauge back to 0")
    assert agent.terminate() == 0


def test_agent_starts_on_a_full_disk_and_recovers(rig: Rig, agent_factory: Any, small_disk: Path) -> None:
    """Variant: the disk is already full when the agent (re)starts; it used to crash-loop."""
    agent = agent_factory()
    agent.buffer = small_disk / "buffer.db"
    agent.args[agent.args.index("--buffer") + 1] = str(agent.buffer)
    agent.start()
    meters = make_meters(5)
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 10))
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 50, timeout=30, message="50 readings")
        assert agent.terminate() == 0
        ballast = _fill(small_disk)
        agent.start()  # healthy on a full disk
        fleet.publish(interleaved(meters, 10, first_seq=10))
        wait_for(lambda: agent.metrics().get("gridtokenx_edge_disk_full") == 1, timeout=30,
                 message="the agent to report the full disk")
        ballast.unlink()
        wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 100, timeout=60, interval=0.2,
                 message="the readings published while the disk was full")
    assert agent.terminate() == 0
