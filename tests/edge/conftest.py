"""Edge agent fixtures: two real Mosquittos, the agent as a real subprocess, a stand-in cloud."""

from __future__ import annotations

import json
import os
import secrets
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
from gridtokenx.harness.processes import Proc
from gridtokenx.harness.standin import StandinCloud
from runtime.config import BrokerURL
from tests.conftest import BrokerFactory

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
    """`python -m edge run` as a real subprocess, restartable (one log per start), through the harness's `Proc`."""

    args: list[str]
    buffer: Path
    metrics_port: int
    log_path: Path
    process: Proc | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.popen if self.process is not None else None

    @property
    def starts(self) -> int:
        return len(self.logs)

    def start(self) -> Agent:
        log = self.log_path.with_suffix(f".{len(self.logs) + 1}.log")
        self.logs.append(log)
        self.process = Proc("edge agent", [sys.executable, "-m", "edge", "run", *self.args],
                            env=os.environ | {"PYTHONUNBUFFERED": "1"}, log_path=log, metrics_port=self.metrics_port)
        self.process.start()
        self.process.wait_healthy(20)
        return self

    def healthy(self) -> bool:
        assert self.process is not None
        return self.process.healthy()

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def metrics(self) -> dict[str, float]:
        assert self.process is not None
        return self.process.metrics(timeout=5)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill9()

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        code = self.process.stop(timeout)
        assert code is not None
        return code

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
