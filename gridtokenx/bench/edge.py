"""`gridtokenx bench edge`: readings/s through the edge agent, replay after an outage, RSS with a big buffer.

Starts two Mosquittos (edge and cloud configs), the agent as a subprocess (`python -m edge run`
with flags only), a publisher process (signed v1 readings as `sim-fleet`, QoS 1) and the stand-in
cloud (acks every batch). Three phases:

1. ingest: N readings as fast as the publisher goes, cloud up; ingest = received by the agent
   (committed + acked to the broker) per second; end-to-end = at the cloud per second.
2. replay: the cloud broker is stopped, N more readings are buffered, the broker comes back;
   replay = readings/s from the first batch the cloud sees after the outage to the last.
3. rss: the agent is restarted on a buffer pre-filled with `--buffered` rows (synthetic payloads,
   written straight into SQLite), cloud down, and keeps ingesting; its RSS is sampled.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import click
import msgspec
import psutil

from gridtokenx.harness.brokers import Mosquitto, free_port
from gridtokenx.harness.loadgen import publish_all
from gridtokenx.harness.processes import Proc, ProcessExited
from gridtokenx.harness.standin import StandinCloud, interleaved, make_meters
from runtime.config import BrokerURL

GATEWAY = "gw-bench"


class BenchResult(msgspec.Struct, kw_only=True):
    bench: str = "edge"
    readings: int
    meters: int
    publish_rate: float
    """Readings/s the publisher got PUBACKs for (an upper bound for the rest)."""
    ingest_rate: float
    """Readings/s committed to SQLite and acked to the edge broker by the agent."""
    end_to_end_rate: float
    """Readings/s from the first publish until the cloud had all of them."""
    replay_rate: float
    """Backlog readings/s forwarded once the cloud is back (first batch → last)."""
    replay_rate_with_reconnect: float
    """Same, counted from the cloud broker's restart (includes the agent's reconnect backoff)."""
    buffered: int
    rss_mb: float
    """Agent RSS (MB) with `buffered` readings in its buffer while ingesting."""
    agent_cpu_percent: float
    """Agent CPU during the ingest phase (100 = one core)."""
    agent_cpu_us_per_reading: float
    """Agent CPU time (user + system) from the first publish until the cloud had every reading of the
    ingest phase, divided by the readings: receive, screen, store, ack, forward and most ack handling."""
    machine: str


def _wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def _publisher(url: str, meters: int, per_meter: int, first_seq: int, conn: Connection) -> None:
    """Runs in its own process: sign first, then publish and report (start, seconds)."""
    messages = interleaved(make_meters(meters), per_meter, first_seq=first_seq)
    conn.send("ready")
    conn.recv()
    started = time.monotonic()
    took = publish_all(BrokerURL.parse(url), messages, client_id=f"bench-fleet-{first_seq}")
    conn.send((started, took))


class _Publish:
    def __init__(self, url: str, meters: int, per_meter: int, first_seq: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_publisher, args=(url, meters, per_meter, first_seq, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(300) or self._conn.recv() != "ready":
            raise click.ClickException("the publisher process did not get ready")

    def go(self) -> None:
        self._conn.send("go")

    def result(self, timeout: float = 600) -> tuple[float, float]:
        if not self._conn.poll(timeout):
            raise click.ClickException("the publisher did not finish")
        started, took = self._conn.recv()
        self._proc.join(10)
        return float(started), float(took)


class _Agent:
    """The agent under test, through the harness's one subprocess helper."""

    def __init__(self, edge: Mosquitto, cloud: Mosquitto, buffer: Path, log: Path) -> None:
        self.port = free_port()
        # Broker URLs carry passwords: environment, never argv.
        env = {"GRIDTOKENX_EDGE_BROKER_URL": edge.url_for("edge-agent"),
               "GRIDTOKENX_CLOUD_BROKER_URL": cloud.url_for(GATEWAY), "GRIDTOKENX_EDGE_BACKOFF_MAX_S": "2"}
        self.process = Proc("edge agent", [sys.executable, "-m", "edge", "run", "--gateway-id", GATEWAY,
                                           "--buffer", str(buffer), "--metrics-port", str(self.port), "--max-rows",
                                           "5000000", "--max-bytes", str(4 << 30)],
                            env=os.environ | env, log_path=log, metrics_port=self.port)

    def start(self) -> psutil.Process:
        self.process.start()
        try:
            self.process.wait_healthy(30)
        except (ProcessExited, TimeoutError) as exc:
            raise click.ClickException(f"the agent did not start: {exc}") from exc
        assert self.process.pid is not None
        return psutil.Process(self.process.pid)

    def metric(self, name: str) -> float:
        return self.process.metrics(timeout=5).get(name, 0.0)

    def stop(self) -> None:
        self.process.stop(60)


def _prefill(buffer: Path, rows: int) -> None:
    """Write `rows` synthetic pending readings (realistic sizes) straight into the buffer."""
    payload = b"GRIDTOKENX/READING/1\n" + b"{" + b"x" * 230 + b"}\n" + b"1" * 88
    db = sqlite3.connect(buffer)
    now = time.time()
    db.execute("BEGIN")
    chunk = 100_000
    for base in range(0, rows, chunk):
        db.executemany("INSERT INTO readings(meter_id, seq, payload, size, reading_end, received_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       ((f"fill{i % 1000:04d}", i, payload, len(payload), 0, now)
                        for i in range(base, min(rows, base + chunk))))
    db.execute("COMMIT")
    db.close()


@click.command("edge")
@click.option("--readings", default=100_000, show_default=True, help="Readings per phase (ingest, replay).")
@click.option("--meters", default=100, show_default=True)
@click.option("--buffered", default=1_000_000, show_default=True,
              help="Rows in the buffer for the RSS phase (0 skips the phase).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
def edge_bench(readings: int, meters: int, buffered: int, as_json: bool) -> None:
    """Ingest and replay readings/s through the edge agent, and its RSS with a million buffered readings."""
    per_meter = max(1, readings // meters)
    n = per_meter * meters

    def say(text: str) -> None:
        if not as_json:
            click.echo(text, err=True)

    with tempfile.TemporaryDirectory(prefix="gtx-bench-edge-") as tmp_dir:
        tmp = Path(tmp_dir)
        fleet_pw = secrets.token_urlsafe(12)
        edge = Mosquitto("edge", workdir=tmp / "edge", users={"edge-agent": secrets.token_urlsafe(12),
                                                              "sim-fleet": fleet_pw})
        cloud = Mosquitto("cloud", workdir=tmp / "cloud", users={GATEWAY: secrets.token_urlsafe(12),
                                                                 "cloud-consumer": secrets.token_urlsafe(12)})
        edge.start()
        cloud.start()
        agent = _Agent(edge, cloud, tmp / "buffer.db", tmp / "agent.log")
        standin = StandinCloud(BrokerURL.parse(cloud.url_for("cloud-consumer")))
        try:
            proc = agent.start()
            standin.start()
            fleet_url = edge.url_for("sim-fleet")

            say(f"ingest: signing and publishing {n:,} readings from {meters} meters ...")
            pub = _Publish(fleet_url, meters, per_meter, 0)
            proc.cpu_percent()
            cpu_before = proc.cpu_times()
            pub.go()
            t_received = _wait(lambda: agent.metric("gridtokenx_edge_received_total") >= n, 600, "ingest")
            cpu = proc.cpu_percent()
            t_cloud = _wait(lambda: standin.seen.unique() >= n, 600, "the cloud to get every reading", 0.01)
            cpu_after = proc.cpu_times()
            cpu_us = ((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)) * 1e6 / n
            started, took = pub.result()
            publish_rate, ingest_rate = n / took, n / (t_received - started)
            e2e_rate = n / (t_cloud - started)

            say(f"replay: cloud broker down, buffering {n:,} more readings ...")
            cloud.stop()
            pub = _Publish(fleet_url, meters, per_meter, per_meter)
            pub.go()
            pub.result()
            _wait(lambda: agent.metric('gridtokenx_edge_buffer_rows{state="pending"}') >= n, 600, "the backlog")
            say(f"replay: {n:,} readings buffered; cloud broker back")
            t_back = time.monotonic()
            cloud.start()
            t_first = _wait(lambda: standin.seen.unique() > n, 120, "the first replayed batch", 0.005)
            t_last = _wait(lambda: standin.seen.unique() >= 2 * n, 600, "the whole backlog", 0.005)
            replay_rate = n / max(t_last - t_first, 1e-6)
            replay_with_reconnect = n / (t_last - t_back)

            rss = 0.0
            if buffered:
                say(f"rss: restarting the agent on {buffered:,} buffered readings, cloud down ...")
                agent.stop()
                cloud.stop()
                _prefill(tmp / "buffer.db", buffered)
                proc = agent.start()
                pub = _Publish(fleet_url, meters, max(1, 20_000 // meters), 2 * per_meter)
                pub.go()
                samples = [proc.memory_info().rss]
                while pub._conn.poll(0.2) is False:
                    samples.append(proc.memory_info().rss)
                pub.result()
                samples.append(proc.memory_info().rss)
                rss = max(samples) / 1e6
        finally:
            standin.stop()
            agent.stop()
            edge.stop()
            cloud.stop()
    result = BenchResult(
        readings=n, meters=meters, publish_rate=round(publish_rate), ingest_rate=round(ingest_rate),
        end_to_end_rate=round(e2e_rate), replay_rate=round(replay_rate),
        replay_rate_with_reconnect=round(replay_with_reconnect), buffered=buffered, rss_mb=round(rss, 1),
        agent_cpu_percent=round(cpu), agent_cpu_us_per_reading=round(cpu_us, 1),
        machine=f"{platform.machine()}, {psutil.cpu_count()} cores, "
                f"load {os.getloadavg()[0]:.1f}")
    click.echo(msgspec.json.encode(result) if as_json else msgspec.json.format(msgspec.json.encode(result), indent=2))


COMMANDS = [edge_bench]
