"""Edge agent fixtures: two real Mosquittos, the agent as a real subprocess, a stand-in cloud."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gridtokenx.harness.brokers import Mosquitto, free_port
from gridtokenx.harness.processes import parse_metrics
from gridtokenx.harness.standin import StandinCloud
from runtime.config import BrokerURL
from tests.conftest import BrokerFactory
from tests.helpers import wait_for

GATEWAY = "gw-test"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Rig:
    edge: Mosquitto
    cloud: Mosquitto
    tmp: Path

    @property
    def fleet_url(self) -> BrokerURL:
        return BrokerURL.parse(self.edge.url_for("sim-fleet"))

    @property
    def cloud_consumer_url(self) -> BrokerURL:
        return BrokerURL.parse(self.cloud.url_for("cloud-consumer"))

    def standin(self, **kwargs: object) -> StandinCloud:
        return StandinCloud(self.cloud_consumer_url, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def rig(broker_factory: BrokerFactory, tmp_path: Path) -> Rig:
    edge = broker_factory("edge", users={"sim-fleet": secrets.token_urlsafe(12)})
    cloud = broker_factory("cloud", users={GATEWAY: secrets.token_urlsafe(12)})
    return Rig(edge, cloud, tmp_path)


@dataclass
class Agent:
    args: list[str]
    buffer: Path
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> Agent:
        self.starts += 1
        log = self.log_path.with_suffix(f".{self.starts}.log")
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", *self.args], cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env=os.environ | {"PYTHONUNBUFFERED": "1"})
        wait_for(self.healthy, timeout=20, message="the agent's /healthz")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.logs if p.exists())

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True)

    def count(self, sql: str, *params: object) -> int:
        with self.db() as conn:
            return int(conn.execute(sql, params).fetchone()[0])


@pytest.fixture
def agent_factory(rig: Rig) -> Iterator[type[Agent] | object]:
    made: list[Agent] = []

    def make(*extra: str, cloud_url: str | None = None) -> Agent:
        port = free_port()
        buffer = rig.tmp / f"buffer-{len(made)}.db"
        args = ["--edge-broker-url", rig.edge.url_for("edge-agent"),
                "--cloud-broker-url", cloud_url or rig.cloud.url_for(GATEWAY),
                "--gateway-id", GATEWAY, "--buffer", str(buffer), "--metrics-port", str(port),
                "--ack-timeout", "3", *extra]
        agent = Agent(args, buffer, port, rig.tmp / f"agent-{len(made)}")
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
