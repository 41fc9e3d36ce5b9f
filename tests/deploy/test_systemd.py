"""The edge's systemd unit: hardened (`systemd-analyze security` exposure ≤ 4), Type=notify with a
watchdog, and the agent really speaks the notify protocol (READY=1, WATCHDOG=1, STOPPING=1)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from gridtokenx.harness.brokers import Mosquitto
from runtime import sdnotify
from tests.conftest import BrokerFactory

UNIT = Path(__file__).resolve().parents[2] / "edge" / "deploy" / "gridtokenx-edge.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_is_type_notify_with_a_watchdog() -> None:
    service = _service()
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_exposure_at_most_4(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name  # offline analysis of the file as shipped
    shutil.copy(UNIT, unit)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                            text=True, check=False, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot score unit files offline: {result.stderr.strip()[:200]}")
    assert float(found[1]) <= 4.0, result.stdout


def test_notify_is_a_noop_outside_systemd() -> None:
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not us
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0


def test_edge_agent_reports_ready_watchdog_and_stopping(tmp_path: Path, edge_broker: Mosquitto,
                                                        broker_factory: BrokerFactory) -> None:
    cloud_broker = broker_factory("cloud", {"gw-1": "gateway-password"})
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDTOKENX_")} | {
        "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
        "GRIDTOKENX_EDGE_BROKER_URL": edge_broker.url_for("edge-agent"),
        "GRIDTOKENX_CLOUD_BROKER_URL": cloud_broker.url_for("gw-1"), "GRIDTOKENX_GATEWAY_ID": "gw-1"}
    with (tmp_path / "edge.log").open("wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "gridtokenx", "edge", "run", "--buffer",
                                  str(tmp_path / "buffer.db"), "--metrics-port", "0",
                                  "--metrics-host", "127.0.0.1"], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        states = [sock.recv(4096).decode() for _ in range(3)]
        assert states == ["READY=1", "WATCHDOG=1", "WATCHDOG=1"], (tmp_path / "edge.log").read_text()
        listening = {c.laddr.ip for c in psutil.Process(agent.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}  # --metrics-host
        agent.send_signal(signal.SIGTERM)
        while (state := sock.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert state == "STOPPING=1"
        assert agent.wait(timeout=30) == 0
    finally:
        sock.close()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
