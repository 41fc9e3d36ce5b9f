"""Must show (issue 15): garbage written into the buffer file is named. `edge inspect doctor` runs
PRAGMA quick_check and reports the damage; the agent refuses to start on it with one sentence
pointing to the repair steps (no traceback, no crash loop writing into a damaged file)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from tests.edge.conftest import ROOT, Rig
from tests.helpers import wait_for


def _doctor(buffer: Path) -> dict[str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDTOKENX_EDGE_", "GRIDTOKENX_CLOUD_"))}
    out = subprocess.run([sys.executable, "-m", "gridtokenx", "edge", "inspect", "doctor", "--db", str(buffer),
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=False)
    return {c["name"]: c for c in json.loads(out.stdout)} if out.stdout.strip().startswith("[") else {
        "buffer": {"status": "FAIL", "detail": out.stdout + out.stderr}}


def _filled(rig: Rig, agent_factory: Any) -> Any:
    agent = agent_factory().start()
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(make_meters(20), 200))  # 4,000 readings: a few MB, many pages
    wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 4000, timeout=30, message="4,000 readings")
    assert agent.terminate() == 0
    return agent


@pytest.mark.parametrize("offset", [256 * 1024, 0], ids=["pages", "header"])
def test_garbage_in_the_buffer_is_named_and_the_agent_refuses_it(rig: Rig, agent_factory: Any, offset: int) -> None:
    agent = _filled(rig, agent_factory)
    assert _doctor(agent.buffer)["integrity"]["status"] == "OK"
    with agent.buffer.open("r+b") as f:
        f.seek(offset)
        f.write(secrets.token_bytes(64 * 1024))
    checks = _doctor(agent.buffer)
    failed = checks.get("integrity", checks["buffer"])
    assert failed["status"] == "FAIL", checks
    # The agent refuses to start: exit 2, one sentence naming the repair steps, no traceback.
    proc = subprocess.run([sys.executable, "-m", "edge", "run", *agent.args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is damaged" in proc.stderr and "Repairing a damaged buffer" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
