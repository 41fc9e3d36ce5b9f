"""`gridtokenx bench e2e`: the real pipeline, every component its own process, measured per hop.

Brokers, edge agent, N cloud ingest consumers, one minter (embedded LiteSVM) and the simulator in
load mode run as separate processes on this machine with a fresh PostgreSQL database. Rates per hop
come from each process's /metrics, sampled every second; latency from probe meters (probe.py);
CPU and RSS per process from psutil.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import psutil
from rich.console import Console

from gridtokenx.bench.probe import Probe, percentiles
from gridtokenx.stack import Proc, Stack, StackError, StackOptions

PROBE_METERS = 4

HOP_METRICS = {
    "sim_published": ("sim", "gridtokenx_sim_readings_acked_total"),
    "edge_received": ("edge", "gridtokenx_edge_received_total"),
    "edge_forwarded": ("edge", "gridtokenx_edge_forwarded_total"),
    "edge_acked": ("edge", "gridtokenx_edge_acked_total"),
    "cloud_accepted": ("ingest", "gridtokenx_cloud_readings_accepted_total"),
    "minted": ("minter", "gridtokenx_minted_readings_total"),
}


@dataclass
class Sample:
    t: float
    counts: dict[str, float]


@dataclass
class ProcUsage:
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    rss_max: int = 0


@dataclass
class Run:
    stack: Stack
    samples: list[Sample] = field(default_factory=list)
    usage: dict[str, ProcUsage] = field(default_factory=dict)

    def counts(self) -> dict[str, float]:
        metrics = {name: proc.metrics() for name, proc in self.stack.procs.items()}
        out: dict[str, float] = {}
        for hop, (kind, metric) in HOP_METRICS.items():
            out[hop] = sum(m.get(metric, 0.0) for name, m in metrics.items() if name.startswith(kind))
        out["edge_depth"] = sum(m.get('gridtokenx_edge_buffer_rows{state="pending"}', 0.0)
                                + m.get('gridtokenx_edge_buffer_rows{state="inflight"}', 0.0)
                                for name, m in metrics.items() if name.startswith("edge"))
        out["unminted"] = metrics.get("minter", {}).get("gridtokenx_unminted_backlog", 0.0)
        return out

    def sample(self) -> Sample:
        s = Sample(time.monotonic(), self.counts())
        self.samples.append(s)
        for name, proc in self.stack.procs.items():
            self._usage(name, proc)
        return s

    def _usage(self, name: str, proc: Proc) -> None:
        if proc.pid is None or not proc.running:
            return
        try:
            p = psutil.Process(proc.pid)
            procs = [p, *p.children(recursive=True)]
            cpu = sum(sum(x.cpu_times()[:2]) for x in procs)
            rss = sum(x.memory_info().rss for x in procs)
        except psutil.Error:
            return
        u = self.usage.setdefault(name, ProcUsage(cpu_start=cpu))
        u.cpu_end = cpu
        u.rss_max = max(u.rss_max, rss)


def sustained(samples: list[Sample], hop: str, until: float) -> float:
    """Readings/s over the busy part of the run: from the first to the last sample where the hop moved,
    ignoring the first 10 % (start-up) and anything after `until`."""
    moving = [s for s in samples if s.t <= until]
    if len(moving) < 3:
        return 0.0
    start = moving[len(moving) // 10]
    end = moving[-1]
    for s in reversed(moving):
        if s.counts[hop] < end.counts[hop]:
            break
        end = s
    span = end.t - start.t
    return (end.counts[hop] - start.counts[hop]) / span if span > 0 else 0.0


def run_bench(*, meters: int, duration: float, rate: float, consumers: int, workdir: Path, interval: int,
              drain_timeout: float, console: Console) -> dict[str, Any]:
    cloud_env = {"TOKENIZATION_BATCH_SIZE": "10000", "TOKENIZATION_POLLING_INTERVAL_SECS": "1",
                 "LOG_LEVEL": "WARNING"}
    options = StackOptions(meters=meters + PROBE_METERS, workdir=workdir, cloud_env=cloud_env)
    with Stack(options) as stack:
        stack.setup()
        run = Run(stack)
        stack.start_cloud("minter", role="mint")
        for i in range(consumers):
            stack.start_cloud(f"ingest-{i + 1}", role="ingest")
        stack.start_edge()
        probe_keys = sorted(stack.keys_dir.glob("*.key"))[-PROBE_METERS:]
        assert stack.edge_broker is not None
        probe = Probe(probe_keys, "127.0.0.1", stack.edge_broker.port)
        sim_flags = ["--meters", str(meters), "--duration", str(duration), "--interval", str(interval)]
        if rate > 0:
            sim_flags += ["--rate", str(rate)]
        else:
            sim_flags += ["--rate", "1000000"]
        return asyncio.run(_drive(run, probe, sim_flags, duration, drain_timeout, console))


async def _drive(run: Run, probe: Probe, sim_flags: list[str], duration: float, drain_timeout: float,
                 console: Console) -> dict[str, Any]:
    stack = run.stack
    stop_probe = asyncio.Event()
    probe_task = asyncio.create_task(probe.run(stop_probe))
    sim = stack.start_sim(*sim_flags)
    t0 = time.monotonic()
    run.sample()
    while sim.running:
        await asyncio.sleep(1.0)
        s = run.sample()
        console.print(f"[{s.t - t0:5.0f}s] " + "  ".join(f"{k} {v:,.0f}" for k, v in s.counts.items()),
                      highlight=False)
        for name, proc in stack.procs.items():
            if name != "sim" and not proc.running:
                raise StackError(f"{name} exited during the benchmark:\n{proc.log_tail()}")
    publish_end = time.monotonic()
    stop_probe.set()
    await probe_task
    deadline = publish_end + drain_timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        s = run.sample()
        if s.counts["edge_depth"] == 0 and s.counts["unminted"] == 0 and s.counts["minted"] >= s.counts[
                "cloud_accepted"] > 0:
            break
    drained = time.monotonic()
    latencies = await probe.latencies(stack.database_url)
    sim_report = stack.sim_report()
    wall = {name: (drained - t0) for name in run.usage}
    last = run.samples[-1].counts
    return {
        "meters": int(sim_flags[1]),
        "duration_s": duration,
        "publish_phase_s": round(publish_end - t0, 1),
        "drain_s": round(drained - publish_end, 1),
        "drained": last["edge_depth"] == 0 and last["unminted"] == 0,
        "sustained_per_s": {hop: round(sustained(run.samples, hop, publish_end + 5)) for hop in HOP_METRICS},
        "totals": {k: int(v) for k, v in last.items()},
        "latency_s": {k: percentiles(v) for k, v in latencies.items() if k != "probes_sent"},
        "processes": {name: {"cpu_cores": round((u.cpu_end - u.cpu_start) / wall[name], 2),
                             "rss_mb": round(u.rss_max / 2**20, 1)} for name, u in sorted(run.usage.items())},
        "simulator": {k: sim_report.get(k) for k in ("published", "acked", "rate", "latency_ms", "errors")},
        "machine": machine(),
    }


def machine() -> dict[str, Any]:
    import platform

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "load_avg_at_end": [round(x, 2) for x in psutil.getloadavg()]}


@click.command("e2e")
@click.option("--meters", default=1000, show_default=True, help="Simulated meters (plus 4 latency probes).")
@click.option("--duration", default=60.0, show_default=True, help="Seconds the simulator publishes.")
@click.option("--rate", default=0.0, show_default=True, help="Target readings/s; 0 = as fast as the simulator can.")
@click.option("--consumers", default=2, show_default=True, help="Cloud ingest processes on the shared subscription.")
@click.option("--interval", default=300, show_default=True, help="Simulated reading interval (s).")
@click.option("--drain-timeout", default=300.0, show_default=True, help="Seconds to wait for the backlog to clear.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".gridtokenx/bench-e2e"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def e2e(meters: int, duration: float, rate: float, consumers: int, interval: int, drain_timeout: float,
        workdir: Path, as_json: bool) -> None:
    """Run the whole pipeline as separate processes and report sustained readings/s per hop, latency
    percentiles (publish → Postgres commit, commit → confirmed mint), and CPU/RSS per process."""
    console = Console(stderr=True, quiet=as_json)
    try:
        result = run_bench(meters=meters, duration=duration, rate=rate, consumers=consumers,
                           workdir=workdir / time.strftime("%Y%m%d-%H%M%S"), interval=interval,
                           drain_timeout=drain_timeout, console=console)
    except StackError as exc:
        click.echo(f"bench e2e failed: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        console = Console()
        console.print_json(json.dumps(result))


COMMANDS = [e2e]
