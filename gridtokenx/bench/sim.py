"""`gridtokenx bench sim`: how many signed readings/s one simulator process sustains into Mosquitto.

Starts its own Mosquitto (the edge broker config and ACL, on a free port), creates the meters' keys
and credentials, runs a fleet in load mode for N seconds at QoS 1 and prints the fleet report.
"""

from __future__ import annotations

import asyncio
import platform
import secrets
import tempfile
import time
from pathlib import Path

import click
import msgspec
import psutil

from gridtokenx.harness.brokers import Mosquitto
from simulator.fleet import run_fleet
from simulator.keystore import keygen, load_keys
from simulator.report import FleetReport, Percentiles
from simulator.settings import BrokerSettings, MeterSettings, RunSettings, SigningSettings, SimSettings


class BenchResult(msgspec.Struct, kw_only=True):
    bench: str = "sim"
    meters: int
    connections: int
    seconds: float
    offered_rate: float
    rate: float
    """Acknowledged readings/s (first publish → last PUBACK): the figure to quote."""
    acked: int
    published: int
    pending: int
    errors: dict[str, int]
    latency_ms: Percentiles
    sim_cpu_percent: float
    """CPU of the simulator process (100 = one core)."""
    sim_cpu_us_per_reading: float
    """Simulator CPU time (user + system) per acknowledged reading: a figure that depends less on
    what else the machine is running than `rate` does."""
    broker_cpu_percent: float
    machine: str


@click.command("sim")
@click.option("--meters", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--seconds", default=20.0, show_default=True, help="Real seconds of load.")
@click.option("--rate", default=20_000.0, show_default=True,
              help="Offered load (readings/s); the report shows what was sustained.")
@click.option("--interval", default=900, show_default=True, help="Reading interval (s) the meters simulate.")
@click.option("--connections", default=0, show_default=True,
              help="0: one connection per meter (own credentials); K: multiplex over K fleet connections.")
@click.option("--window", type=int, default=None,
              help="QoS 1 publishes in flight per connection.  [default: 8; 256 with --connections]")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
def sim_bench(meters: int, seconds: float, rate: float, interval: int, connections: int, window: int | None,
              as_json: bool) -> None:
    """Simulator load: acknowledged readings/s one process sustains into a local Mosquitto (started
    for the run) with 1,000 meters at QoS 1, each on its own connection by default."""
    with tempfile.TemporaryDirectory(prefix="gtx-bench-sim-") as tmp:
        keys_dir = Path(tmp) / "keys"
        keygen(keys_dir, meters, seed=1)
        fleet_password = secrets.token_urlsafe(12)
        users = {k.meter_id: k.mqtt_password for k in load_keys(keys_dir)} | {"sim-fleet": fleet_password}
        with Mosquitto("edge", workdir=Path(tmp) / "broker", users=users,
                       fleet_port=0 if connections else None) as broker:
            settings = SimSettings(
                broker=BrokerSettings(url=broker.fleet_url if connections else broker.url, connections=connections,
                                      fleet_user="sim-fleet", fleet_password=fleet_password, window=window),
                meter=MeterSettings(reading_interval_seconds=interval),
                signing=SigningSettings(keys_dir=keys_dir),
                run=RunSettings(rate=rate, backfill=min(seconds * rate * interval / meters, 6 * 86_400),
                                 drain_timeout=30.0),
            )
            assert broker.pid is not None
            broker_proc, me = psutil.Process(broker.pid), psutil.Process()
            broker_proc.cpu_percent(), me.cpu_percent()
            cpu_before = sum(me.cpu_times()[:2])
            started = time.monotonic()
            report = asyncio.run(_load(settings, seconds))
            elapsed = time.monotonic() - started
            result = BenchResult(
                meters=report.meters, connections=report.connections, seconds=round(elapsed, 2),
                offered_rate=rate, rate=report.rate, acked=report.acked, published=report.published,
                pending=report.pending, errors=report.errors, latency_ms=report.latency_ms,
                sim_cpu_percent=me.cpu_percent(), broker_cpu_percent=broker_proc.cpu_percent(),
                sim_cpu_us_per_reading=round((sum(me.cpu_times()[:2]) - cpu_before) / max(report.acked, 1) * 1e6, 1),
                machine=f"{platform.machine()}, {psutil.cpu_count()} cores, load {psutil.getloadavg()[0]:.1f}",
            )
    if as_json:
        click.echo(msgspec.json.encode(result))
        return
    click.echo(msgspec.json.format(msgspec.json.encode(result), indent=2))


async def _load(settings: SimSettings, seconds: float) -> FleetReport:
    """Offer load for `seconds`, then stop producing and drain: the producer never runs past the
    deadline to catch up with an offered rate the process could not sustain."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await run_fleet(settings, stop=stop)


COMMANDS = [sim_bench]
