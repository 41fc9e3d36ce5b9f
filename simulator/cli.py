"""`gridtokenx sim ...`: keygen, run (and the load mode behind `gridtokenx bench sim`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table

from runtime import logs
from runtime.config import ConfigError
from runtime.runner import run_component
from simulator import settings as sim_settings
from simulator.faults import Fault, expected_reason
from simulator.fleet import Fleet, run_fleet
from simulator.keystore import CSV_NAME, KeyStoreError, keygen
from simulator.report import FleetReport, Stats
from simulator.state import StateError

USER_ERRORS = (ConfigError, KeyStoreError, StateError)


@click.group(help="Simulated smart meters: keys, fleets publishing signed readings over MQTT, load tests.")
def sim() -> None:
    pass


@sim.command("keygen")
@click.option("--meters", type=click.IntRange(min=1), required=True, help="Meters the directory should hold.")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Key directory: DIR/<meter_id>.key (0600) and DIR/meters.csv.")
@click.option("--seed", type=int, default=None,
              help="Derive keys deterministically from this seed (dev and tests only: anyone with the seed "
                   "has the keys). Default: random keys.")
@click.option("--types", default="mix", show_default=True,
              help="Meter types: mix (40% solar, 25% consumer, 25% hybrid, 10% battery) or a comma list "
                   "cycled over the meters, e.g. solar,consumer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def keygen_cmd(meters: int, out: Path, seed: int | None, types: str, as_json: bool) -> None:
    """Create meter keys. Existing keys are never overwritten: only missing meters are added, and
    meters.csv (the registry export for `gridtokenx cloud meters import`) is rewritten from all keys."""
    try:
        result = keygen(out, meters, types=types, seed=seed)
    except (KeyStoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(msgspec.json.encode({"directory": str(out), "created": result.created,
                                        "existing": result.existing, "total": result.total,
                                        "registry": str(out / CSV_NAME)}))
        return
    if result.created:
        click.echo(f"created {len(result.created)} meter key(s) in {out} ({result.existing} already there); "
                   f"registry: {out / CSV_NAME}")
    else:
        click.echo(f"{out} already holds keys for meters 1..{meters} ({result.existing} keys); nothing "
                   f"overwritten. Registry: {out / CSV_NAME}")


def _fault_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for fault in reversed(Fault):
        fn = click.option(fault.option, fault.value, type=click.FloatRange(0.0, 1.0), default=None,
                          help=f"Rate per meter interval (0..1); expected outcome: "
                               f"{expected_reason(fault, multiplexed=False)}.")(fn)
    return fn


@sim.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="simulator.yaml (see docs/simulator.md); flags and env override it.")
@click.option("--keys", "keys_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Key directory from `sim keygen`.  [default: keys]")
@click.option("--meters", "count", type=click.IntRange(min=1), help="Run the first N meters of the directory.")
@click.option("--meter-id", "meter_ids", multiple=True, help="Run only these meters (repeatable).")
@click.option("--broker-url", help="mqtt[s]://host:port of the edge broker (env GRIDTOKENX_SIM_BROKER_URL); "
                                   "each meter logs in as its meter_id with its key file's password.")
@click.option("--interval", type=click.IntRange(min=1), help="Reading interval, seconds.  [default: 900; "
                                                              "300 with --format legacy]")
@click.option("--speed", type=float, help="Simulated seconds per real second.  [default: 1]")
@click.option("--duration", type=float, help="Real seconds to run.  [default: until SIGTERM]")
@click.option("--rate", type=float, help="Load mode: target readings/s for the fleet (sets --speed).")
@click.option("--backfill", type=float, help="Simulated seconds before now where fresh meters start "
                                             "[default: duration × speed, at most 6 days].")
@click.option("--mode", type=click.Choice(["live", "replay"]),
              help="live: each meter signs each reading as its interval ends. replay: sign every reading "
                   "of the run before it starts (needs --duration), then only publish them at the same pace; "
                   "the report gives the pre-signing cost apart (presign).  [default: live]")
@click.option("--seed", type=int, help="Fleet seed: weather and measurements are reproducible.  [default: 0]")
@click.option("--format", "fmt", type=click.Choice(["v1", "legacy"]), help="Payload format.  [default: v1]")
@click.option("--connections", type=click.IntRange(min=0),
              help="Multiplex the meters over K connections of --fleet-user (dev/load only). 0 = one "
                   "connection per meter.  [default: 0]")
@click.option("--fleet-user", help="Broker user allowed to write meters/+/readings (sim-fleet).")
@click.option("--fleet-password", help="Its password.")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False), help="CA for mqtts://.")
@click.option("--window", type=click.IntRange(min=1), help="QoS 1 publishes in flight per connection.  "
                                                            "[default: 8; 256 with --connections]")
@click.option("--max-buffer", type=click.IntRange(min=1), help="Messages a meter keeps while offline.  "
                                                                "[default: 2880]")
@click.option("--state", type=click.Path(path_type=Path, dir_okay=False),
              help="State file (counters + outbox).  [default: KEYS/state.sqlite]")
@click.option("--metrics-port", type=click.IntRange(min=0), help="Serve /metrics and /healthz here.")
@click.option("--drain-timeout", type=float, help="Seconds to wait for PUBACKs on stop.  [default: 10]")
@_fault_options
@click.option("--json", "as_json", is_flag=True, help="Print only the final JSON report.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the JSON report to this file.")
@click.option("--log-format", type=click.Choice(["plain", "json"]), envvar="LOG_FORMAT", default="plain",
              show_default=True)
def run_cmd(config_path: Path | None, keys_dir: Path | None, count: int | None, meter_ids: tuple[str, ...],
            broker_url: str | None, interval: int | None, speed: float | None, duration: float | None,
            rate: float | None, backfill: float | None, mode: str | None, seed: int | None, fmt: str | None,
            connections: int | None, fleet_user: str | None, fleet_password: str | None,
            ca_file: Path | None, window: int | None, max_buffer: int | None, state: Path | None,
            metrics_port: int | None, drain_timeout: float | None, as_json: bool, report_path: Path | None,
            log_format: str, **fault_rates: float | None) -> None:
    """Run a fleet of meters publishing signed readings (QoS 1) until --duration or SIGTERM, then
    drain in-flight publishes and print a report. Counters and unacknowledged messages persist in
    the state file, so the next run continues each meter's seq and registers."""
    logs.setup(level="WARNING" if as_json else "INFO", json_format=log_format == "json", component="sim")
    if fmt == "legacy" and interval is None:
        interval = 300
    try:
        settings = sim_settings.load(config_path, {
            "broker": {"url": broker_url, "connections": connections,
                       "fleet_user": fleet_user, "fleet_password": fleet_password, "ca_file": ca_file,
                       "window": window},
            "meter": {"ids": meter_ids or None, "count": count, "reading_interval_seconds": interval,
                      "format": fmt},
            "signing": {"keys_dir": keys_dir},
            "run": {"speed": speed, "duration": duration, "rate": rate, "backfill": backfill, "mode": mode,
                    "seed": seed, "max_buffer": max_buffer, "state": state, "metrics_port": metrics_port,
                    "drain_timeout": drain_timeout},
            "faults": fault_rates,
        })
        report = asyncio.run(run_component(lambda stop: _run(settings, stop, live=not as_json), name="simulator",
                                           drain_seconds=settings.run.drain_timeout + 10.0))
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    doc = msgspec.json.encode(report)
    if report_path is not None:
        report_path.write_bytes(msgspec.json.format(doc, indent=2) + b"\n")
    if as_json:
        click.echo(doc)
    else:
        _print_summary(report)


async def _run(settings: sim_settings.SimSettings, stop: asyncio.Event, *, live: bool) -> FleetReport:
    console = Console(stderr=True)
    if not (live and console.is_terminal):
        return await run_fleet(settings, stop=stop)
    with Live(console=console, refresh_per_second=2, transient=False) as view:
        last = {"t": time.monotonic(), "generated": 0, "published": 0, "acked": 0}

        def progress(stats: Stats, fleet: Fleet) -> None:
            now = time.monotonic()
            span = max(now - last["t"], 1e-6)
            per_s = {name: (getattr(stats, name) - last[name]) / span for name in ("generated", "published", "acked")}
            last.update(t=now, generated=stats.generated, published=stats.published, acked=stats.acked)
            view.update(_progress_table(stats, fleet, per_s))

        return await run_fleet(settings, stop=stop, progress=progress)


def _progress_table(stats: Stats, fleet: Fleet, per_s: dict[str, float]) -> Table:
    table = Table(title="gridtokenx sim", show_header=False)
    sim_time = time.strftime("%Y-%m-%d %H:%M", time.gmtime(fleet.sim_now))
    connected = sum(link.connected for link in fleet.links)
    rows = [("simulated time (UTC)", sim_time), ("connections up", f"{connected}/{len(fleet.links)}"),
            ("generated (attempted)", f"{stats.generated:,}  ({per_s['generated']:,.0f}/s)"),
            ("published", f"{stats.published:,}  ({per_s['published']:,.0f}/s)"),
            ("acked (PUBACK)", f"{stats.acked:,}  ({per_s['acked']:,.0f}/s)"),
            ("latency p50/p99 ms (last s)", "{0.p50} / {0.p99}".format(stats.recent_percentiles())),
            ("waiting", str(fleet.backlog)), ("errors", ", ".join(f"{k}={v}" for k, v in stats.errors.items()) or
                                              "none"),
            ("faults injected", ", ".join(f"{f.value}={len(v)}" for f, v in stats.faults.items()) or "none")]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _print_summary(report: FleetReport) -> None:
    lat = report.latency_ms
    click.echo(f"{report.meters} meters ({report.mode} mode) over {report.connections} connection(s), "
               f"{report.elapsed_s:.1f} s: "
               f"{report.acked} acked of {report.published} published ({report.rate:,.0f}/s), "
               f"latency p50 {lat.p50} ms p95 {lat.p95} ms p99 {lat.p99} ms")
    if report.presign is not None:
        p = report.presign
        click.echo(f"mode replay: {p.messages} message(s) signed before the run in {p.seconds:.1f} s "
                   f"({p.signs_per_s:,.0f} signs/s), not counted in the figures above")
    if report.pending or report.dropped:
        click.echo(f"{report.pending} unacknowledged kept for the next run, {report.dropped} dropped (buffer full)")
    if report.errors:
        click.echo("errors: " + ", ".join(f"{k}={v}" for k, v in report.errors.items()))
    for name, summary in report.faults.items():
        click.echo(f"fault {name}: {summary.count} injected, expect {summary.expected}")


