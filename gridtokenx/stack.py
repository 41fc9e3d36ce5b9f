"""The whole pipeline as local processes: brokers, database, keys, cloud, edge, simulator, localnet.

One piece of orchestration for `gridtokenx demo`, `gridtokenx bench e2e` and the chaos suite. Every
component runs as a real subprocess through its public CLI (the contract in docs/INTERFACES.md), so
what is shown or measured is what an operator deploys. Everything started here is stopped by `close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.db import create_scratch_database, drop_database
from gridtokenx.errors import GridtokenxError
from gridtokenx.harness.brokers import Mosquitto, free_port
from gridtokenx.harness.processes import Proc, gridtokenx_cmd
from protocol.keys import decode_key
from runtime.redact import redact_text, redact_url

GATEWAY_ID = "gw-1"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class StackError(GridtokenxError):
    pass


class Interrupted(SystemExit):
    """SIGTERM or SIGINT reached an orchestrator: unwind (the `with Stack` block stops every process)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@dataclass
class StackOptions:
    meters: int = 50
    workdir: Path = Path(".gridtokenx/run")
    admin_dsn: str = field(default_factory=lambda: os.environ.get("DATABASE_URL", DEFAULT_ADMIN_DSN))
    chain: str = "embedded"  # or "localnet"
    localnet_flags: Sequence[str] = ()
    cloud_env: Mapping[str, str] = field(default_factory=dict)
    edge_flags: Sequence[str] = ()
    keep_database: bool = False


class Stack:
    """Set up and run the pipeline. Use as a context manager; `close` stops everything."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.workdir = options.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.keys_dir = self.workdir / "keys"
        self.database = ""  # created by setup()
        self.database_url = ""
        self.procs: dict[str, Proc] = {}
        self.edge_broker: Mosquitto | None = None
        self.cloud_broker: Mosquitto | None = None
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENIZATION_", "GRIDTOKENX_"))}
        self.base_env["PYTHONUNBUFFERED"] = "1"
        self._closing = False
        self._old_handlers: dict[int, Any] = {}
        self.secrets = {"edge-agent": secrets.token_urlsafe(12), "edge-inspector": secrets.token_urlsafe(12),
                        "cloud-consumer": secrets.token_urlsafe(12), GATEWAY_ID: secrets.token_urlsafe(12)}

    # -- set-up -------------------------------------------------------------------------------------------
    def run_cli(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> str:
        result = subprocess.run(gridtokenx_cmd(*args), env={**self.base_env, **(env or {})}, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise StackError(f"`gridtokenx {' '.join(args)}` failed ({result.returncode}): "
                             f"{(result.stderr or result.stdout)[-2000:]}")
        return result.stdout

    def setup(self) -> None:
        asyncio.run(self._create_database())
        self.base_env["DATABASE_URL"] = self.database_url
        if not (self.keys_dir / "meters.csv").exists():
            self.run_cli("sim", "keygen", "--meters", str(self.options.meters), "--out", str(self.keys_dir))
        meter_users = self.meter_credentials()
        self.edge_broker = Mosquitto("edge", self.workdir / "edge-broker",
                                     users={**meter_users, "edge-agent": self.secrets["edge-agent"],
                                            "edge-inspector": self.secrets["edge-inspector"]})
        self.cloud_broker = Mosquitto("cloud", self.workdir / "cloud-broker",
                                      users={"cloud-consumer": self.secrets["cloud-consumer"],
                                             GATEWAY_ID: self.secrets[GATEWAY_ID]})
        self.edge_broker.start()
        self.cloud_broker.start()
        self.run_cli("cloud", "migrate")
        self.run_cli("cloud", "meters", "import", str(self.keys_dir / "meters.csv"))

    def meter_credentials(self) -> dict[str, str]:
        users: dict[str, str] = {}
        for path in sorted(self.keys_dir.glob("*.key")):
            key = decode_key(path.read_bytes())
            users[key.meter_id] = key.mqtt_password
        if not users:
            raise StackError(f"no meter key files in {self.keys_dir}")
        return users

    async def _create_database(self) -> None:
        import asyncpg

        try:
            self.database, self.database_url = await create_scratch_database(self.options.admin_dsn, "gridtokenx_")
        except (OSError, asyncpg.PostgresError) as exc:
            raise StackError(f"PostgreSQL is not reachable at {redact_url(self.options.admin_dsn)} "
                             f"({redact_text(str(exc))}); start it or set "
                             "DATABASE_URL (./scripts/setup does both)") from exc

    # -- components ---------------------------------------------------------------------------------------
    def _proc(self, name: str, argv: list[str], env: Mapping[str, str], metrics_port: int | None) -> Proc:
        proc = Proc(name, argv, {**self.base_env, **env}, self.workdir / "logs" / f"{name}.log", metrics_port)
        self.procs[name] = proc
        proc.start()
        return proc

    def start_localnet(self) -> Proc:
        port = free_port()
        proc = self._proc("localnet", gridtokenx_cmd("localnet", "--port", str(port),
                                                     "--state-dir", str(self.workdir / "localnet"),
                                                     *self.options.localnet_flags), {}, None)
        self.localnet_url = f"http://127.0.0.1:{port}"
        _wait_port(port, proc)
        return proc

    def cloud_env(self) -> dict[str, str]:
        assert self.cloud_broker is not None
        env = {
            "GRIDTOKENX_CLOUD_BROKER_URL": self.cloud_broker.url_for("cloud-consumer"),
            "GRIDTOKENX_CHAIN_STATE_DIR": str(self.workdir / "chain"),
            "TOKENIZATION_POLLING_INTERVAL_SECS": "1",
            "LOG_FORMAT": "plain",
        }
        if self.options.chain == "localnet":
            env |= {"GRIDTOKENX_CHAIN_BACKEND": "rpc", "SOLANA_RPC_URL": self.localnet_url}
        else:
            env["GRIDTOKENX_CHAIN_BACKEND"] = "embedded"
        return env | dict(self.options.cloud_env)

    def start_cloud(self, name: str = "cloud", role: str = "all") -> Proc:
        port = free_port()
        env = self.cloud_env() | {"GRIDTOKENX_CLOUD_CLIENT_ID": f"{name}-{uuid.uuid4().hex[:6]}"}
        proc = self._proc(name, gridtokenx_cmd("cloud", "run", "--role", role, "--port", str(port)), env, port)
        _wait_port(port, proc)
        return proc

    def start_edge(self, name: str = "edge") -> Proc:
        port = free_port()
        assert self.edge_broker is not None and self.cloud_broker is not None
        argv = gridtokenx_cmd("edge", "run", "--gateway-id", GATEWAY_ID,
                              "--buffer", str(self.workdir / "edge-buffer.sqlite"), "--metrics-port", str(port),
                              *self.options.edge_flags)
        # Broker URLs carry passwords: environment, never argv (visible to every user in `ps`).
        env = {"GRIDTOKENX_EDGE_BROKER_URL": self.edge_broker.url_for("edge-agent"),
               "GRIDTOKENX_CLOUD_BROKER_URL": self.cloud_broker.url_for(GATEWAY_ID)}
        proc = self._proc(name, argv, env, port)
        _wait_port(port, proc)
        return proc

    def start_sim(self, *flags: str, name: str = "sim") -> Proc:
        port = free_port()
        assert self.edge_broker is not None
        argv = gridtokenx_cmd("sim", "run", "--keys", str(self.keys_dir), "--broker-url",
                              f"mqtt://127.0.0.1:{self.edge_broker.port}", "--metrics-port", str(port),
                              "--report", str(self.workdir / f"{name}-report.json"), "--json", *flags)
        return self._proc(name, argv, {}, port)

    def sim_report(self, name: str = "sim") -> dict[str, Any]:
        path = self.workdir / f"{name}-report.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    # -- shutdown -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._closing = True
        for proc in reversed(list(self.procs.values())):
            proc.stop(timeout=15)
        for broker in (self.edge_broker, self.cloud_broker):
            if broker is not None:
                broker.stop()
        if self.database and not self.options.keep_database:
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(self.options.admin_dsn, self.database))

    def kill_all(self) -> None:
        """SIGKILL every process group started here (a second signal during `close`)."""
        for proc in self.procs.values():
            proc.kill9()
        for broker in (self.edge_broker, self.cloud_broker):
            if broker is not None:
                broker.kill()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._closing:  # a second signal while stopping: no more waiting, but still no orphans
            self.kill_all()
            os._exit(128 + signum)
        raise Interrupted(signum)

    def __enter__(self) -> Stack:
        """Children run in their own sessions (a terminal's Ctrl-C reaches only us), so SIGTERM and SIGINT
        become `Interrupted`, which unwinds to `__exit__`; `close` then stops every process it started."""
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.close()
        finally:
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            self._old_handlers.clear()


def _wait_port(port: int, proc: Proc, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            raise StackError(f"{proc.name} exited at start (code {proc.popen.returncode if proc.popen else '?'}):\n"
                             f"{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise StackError(f"{proc.name} did not open port {port} within {timeout}s:\n{proc.log_tail()}")
