"""Must show (issue 15): on a fresh install meters publish before the agent ever started. With the
install step `gridtokenx edge run --init-session` run first, no PUBACKed reading is lost."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from gridtokenx.harness.standin import Fleet, interleaved, make_meters
from tests.edge.conftest import ROOT, Rig
from tests.helpers import wait_for


def test_meters_publishing_before_the_agents_first_start_lose_nothing(rig: Rig, agent_factory: Any) -> None:
    meters = make_meters(10)
    agent = agent_factory()
    init = subprocess.run([sys.executable, "-m", "edge", "run", "--init-session", *agent.args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert "persistent session exists" in init.stdout
    with Fleet(rig.fleet_url) as fleet:
        fleet.publish(interleaved(meters, 50))  # PUBACKed while no agent has ever run
    assert not agent.buffer.exists()
    agent.start()
    wait_for(lambda: agent.count("SELECT count(*) FROM readings") == 500, timeout=30,
             message="the 500 readings published before the agent's first start")
    assert agent.terminate() == 0


def test_init_session_names_a_wrong_password(rig: Rig, agent_factory: Any) -> None:
    """Variant: the install step fails loudly (exit 2, one sentence) instead of leaving no session."""
    agent = agent_factory()
    args = [a.replace(rig.edge.users["edge-agent"], "wrong") for a in agent.args]
    init = subprocess.run([sys.executable, "-m", "edge", "run", "--init-session", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 2
    assert "refused the connection" in init.stderr and "Traceback" not in init.stderr
