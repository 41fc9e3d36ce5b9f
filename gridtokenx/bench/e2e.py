"""`gridtokenx bench e2e`: the real pipeline, every component its own process, measured per hop.

Brokers, edge agent, N cloud ingest consumers, one minter (embedded LiteSVM) and the simulator in
load mode run as separate processes on this machine with a fresh PostgreSQL database. Rates per hop
come from each process's /metrics, sampled every second; latency from probe meters (probe.py);
CPU and RSS per process from psutil.

`--sim-mode replay` runs the simulator with every payload signed before the run (simulator.replay):
the timed window then starts once the simulator serves /metrics, which it does only after signing,
and the simulator's CPU excludes the pre-signing phase, reported apart under `presign`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import psutil
from rich.console import Console

from gridtokenx.bench.probe import Probe, percentiles
from gridtokenx.harness.processes import Proc
from gridtokenx.stack import Stack, StackError, StackOptions

PROBE_METERS = 4
#: Offered load for 'flat out' (above what 2 cores can carry, so the pipeline is the limit).
FLAT_OUT_RATE = 30_000.0
#: The simulator starts at most this far back (the cloud rejects readings older than 7 days).
MAX_BACKFILL_S = 6 * 86_400.0

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
class Run:
    stack: Stack
    samples: list[Sample] = field(default_factory=list)

    last_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def counts(self) -> dict[str, float]:
        # A process that has exited (the simulator, once done) keeps its last scraped values.
        metrics = {name: proc.metrics() or self.last_metrics.get(name, {}) for name, proc in self.stack.procs.items()}
        self.last_metrics = metrics
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
        return s

    def process_groups(self) -> dict[str, list[psutil.Process]]:
        """Every process that does the pipeline's work, by role: ours, the brokers, PostgreSQL."""
        groups: dict[str, list[psutil.Process]] = {}
        pids = {name: proc.pid for name, proc in self.stack.procs.items() if proc.running}
        if self.stack.edge_broker is not None:
            pids["mosquitto-edge"] = self.stack.edge_broker.pid
        if self.stack.cloud_broker is not None:
            pids["mosquitto-cloud"] = self.stack.cloud_broker.pid
        for name, pid in pids.items():
            if pid is None:
                continue
            try:
                p = psutil.Process(pid)
                groups[name] = [p, *p.children(recursive=True)]
            except psutil.Error:
                continue
        groups["postgres"] = [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postmaster")]
        return groups

    def usage(self) -> dict[str, tuple[float, int]]:
        """CPU seconds (user + system) and RSS bytes per role, now."""
        out: dict[str, tuple[float, int]] = {}
        for name, procs in self.process_groups().items():
            cpu = rss = 0
            for p in procs:
                try:
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
            out[name] = (cpu, rss)
        return out


def sustained(samples: list[Sample], hop: str, until: float) -> float:
    """Readings/s over the publish phase, ignoring its first 10 % (start-up)."""
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
              drain_timeout: float, console: Console, mint_batch_size: int = 10_000,
              mint_max_batches: int | None = None, sim_mode: str = "live", preload: int = 0) -> dict[str, Any]:
    cloud_env = {"TOKENIZATION_BATCH_SIZE": str(mint_batch_size), "TOKENIZATION_POLLING_INTERVAL_SECS": "1",
                 "LOG_LEVEL": "WARNING"}
    if mint_max_batches is not None:
        cloud_env["TOKENIZATION_MAX_BATCHES_PER_POLL"] = str(mint_max_batches)
    options = StackOptions(meters=meters + PROBE_METERS, workdir=workdir, cloud_env=cloud_env)
    with Stack(options) as stack:
        stack.setup()
        stored = _preload(stack.database_url, preload, console) if preload else None
        run = Run(stack)
        stack.start_cloud("minter", role="mint")
        for i in range(consumers):
            stack.start_cloud(f"ingest-{i + 1}", role="ingest")
        stack.start_edge()
        probe_keys = sorted(stack.keys_dir.glob("*.key"))[-PROBE_METERS:]
        assert stack.edge_broker is not None
        probe = Probe(probe_keys, "127.0.0.1", stack.edge_broker.port)
        # Load mode: the simulator's clock starts `backfill` simulated seconds back and runs at
        # rate × interval / meters; it never passes real time, so backfill bounds the readings sent.
        offered = rate if rate > 0 else FLAT_OUT_RATE
        backfill = min(offered * duration * interval / meters, MAX_BACKFILL_S)
        sim_flags = ["--meters", str(meters), "--duration", str(duration), "--interval", str(interval),
                     "--rate", str(offered), "--backfill", str(backfill), "--drain-timeout", str(drain_timeout),
                     "--mode", sim_mode]
        result = asyncio.run(_drive(run, probe, sim_flags, drain_timeout, console, replay=sim_mode == "replay"))
        result = {"sim_mode": sim_mode} | result | {
            "meters": meters, "duration_s": duration, "offered_rate": rate or "flat out", "consumers": consumers,
            "minter_env": {k: v for k, v in cloud_env.items() if k != "LOG_LEVEL"}}
        if stored is not None:
            result["preload"] = stored
        return result


async def _signed(sim: Proc, console: Console) -> None:
    """Until the replaying simulator serves /metrics, which it does once every payload is signed."""
    console.print("simulator: signing every payload of the run before it starts (replay mode)")
    while sim.running:
        if sim.metrics():
            return
        await asyncio.sleep(0.1)  # a poll interval: the simulator either answers or exits


def _preload(database_url: str, readings: int, console: Console) -> dict[str, Any]:
    """Minted readings stored before the run (`bench preload`), for growth measurements."""
    from gridtokenx.bench.preload import preload

    def progress(done: int, elapsed: float) -> None:
        console.print(f"preload: {done:,}/{readings:,} readings ({done / elapsed:,.0f}/s)")

    return asdict(asyncio.run(preload(database_url, readings=readings, meters=1000, progress=progress)))


async def _drive(run: Run, probe: Probe, sim_flags: list[str], drain_timeout: float,
                 console: Console, *, replay: bool = False) -> dict[str, Any]:
    stack = run.stack
    stop_probe = asyncio.Event()
    probe_task = asyncio.create_task(probe.run(stop_probe))
    cpu_start = run.usage()
    sim = stack.start_sim(*sim_flags)
    if replay:
        await _signed(sim, console)
        cpu_start = run.usage()  # the simulator's own pre-signing CPU is taken off below
    t0 = time.monotonic()
    run.sample()
    peak_rss: dict[str, int] = {}
    last_usage: dict[str, tuple[float, int]] = {}
    while sim.running:
        await asyncio.sleep(1.0)
        s = run.sample()
        now_usage = run.usage()
        last_usage |= now_usage  # a process that just exited (the simulator) keeps its last reading
        for name, (_, rss) in now_usage.items():
            peak_rss[name] = max(peak_rss.get(name, 0), rss)
        console.print(f"[{s.t - t0:5.0f}s] " + "  ".join(f"{k} {v:,.0f}" for k, v in s.counts.items()),
                      highlight=False)
        for name, proc in stack.procs.items():
            if name != "sim" and not proc.running:
                raise StackError(f"{name} exited during the benchmark:\n{proc.log_tail()}")
    publish_end = time.monotonic()
    cpu_end = last_usage | run.usage()
    stop_probe.set()
    await probe_task
    deadline = publish_end + drain_timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        s = run.sample()
        if s.counts["edge_depth"] == 0 and s.counts["unminted"] == 0 and s.counts["cloud_accepted"] > 0:
            break
    drained = time.monotonic()
    latencies = await probe.latencies(stack.database_url)
    sim_report = stack.sim_report()
    presign = sim_report.get("presign")
    last = run.samples[-1].counts
    phase = publish_end - t0
    accepted_in_phase = max(1.0, _at(run.samples, "cloud_accepted", publish_end) - run.samples[0].counts[
        "cloud_accepted"])
    processes = {}
    for name in sorted(cpu_end):
        cpu = cpu_end[name][0] - cpu_start.get(name, (0.0, 0))[0]
        if name == "sim":
            cpu = cpu_end[name][0]  # started inside the window (its start-up counts, in both modes)
            if presign:
                cpu -= presign["cpu_s"]
        processes[name] = {"cpu_cores": round(cpu / phase, 2),
                           "cpu_us_per_reading": round(cpu / accepted_in_phase * 1e6, 1),
                           "rss_mb_peak": round(peak_rss.get(name, cpu_end[name][1]) / 2**20, 1)}
    return {
        "publish_phase_s": round(phase, 1),
        "drain_s": round(drained - publish_end, 1),
        "drained": last["edge_depth"] == 0 and last["unminted"] == 0,
        "sustained_per_s": {hop: round(sustained(run.samples, hop, publish_end)) for hop in HOP_METRICS},
        "totals": {k: int(v) for k, v in last.items()} | (
            {"sim_published": int(sim_report["acked"])} if "acked" in sim_report else {}),
        "latency_s": {k: percentiles(v) for k, v in latencies.items() if k != "probes_sent"},
        "processes": processes,
        "cpu_us_per_reading_total": round(sum(p["cpu_us_per_reading"] for p in processes.values()), 1),
        "simulator": {k: sim_report.get(k) for k in ("published", "acked", "rate", "latency_ms", "errors")},
        "presign": presign,
        "probe_readings": len(probe.sent),
        "machine": machine(),
    }


def _at(samples: list[Sample], hop: str, t: float) -> float:
    before = [s for s in samples if s.t <= t]
    return before[-1].counts[hop] if before else 0.0


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
@click.option("--mint-batch-size", default=10_000, show_default=True,
              help="The minter's TOKENIZATION_BATCH_SIZE: readings one poll may claim.")
@click.option("--mint-max-batches", type=int, default=None,
              help="The minter's TOKENIZATION_MAX_BATCHES_PER_POLL (transactions one poll may plan); "
                   "default: the minter's own default (64).")
@click.option("--sim-mode", type=click.Choice(["live", "replay"]), default="live", show_default=True,
              help="live: the simulator signs each reading as it goes (its CPU includes Ed25519 signing "
                   "and its SQLite outbox). replay: every payload is signed before the timed run (as meters "
                   "sign on their own processors); the run only publishes them, and the signing cost is "
                   "reported apart (presign). The report's sim_mode says which was measured.")
@click.option("--preload", type=int, default=0, show_default=True,
              help="Store this many minted readings (`bench preload`) before the run, e.g. 10000000.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".gridtokenx/bench-e2e"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def e2e(meters: int, duration: float, rate: float, consumers: int, interval: int, drain_timeout: float,
        mint_batch_size: int, mint_max_batches: int | None, sim_mode: str, preload: int, workdir: Path,
        as_json: bool) -> None:
    """Run the whole pipeline as separate processes and report sustained readings/s per hop, latency
    percentiles (publish → Postgres commit, commit → confirmed mint), and CPU/RSS per process."""
    console = Console(stderr=True, quiet=as_json)
    try:
        result = run_bench(meters=meters, duration=duration, rate=rate, consumers=consumers,
                           workdir=workdir / time.strftime("%Y%m%d-%H%M%S"), interval=interval,
                           drain_timeout=drain_timeout, console=console, mint_batch_size=mint_batch_size,
                           mint_max_batches=mint_max_batches, sim_mode=sim_mode, preload=preload)
    except StackError as exc:
        click.echo(f"bench e2e failed: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        console = Console()
        console.print(summary_line(result), highlight=False)
        console.print_json(json.dumps(result))


def summary_line(result: dict[str, Any]) -> str:
    """The headline of the human summary: which simulator mode the figures are for."""
    line = f"simulator mode: {result['sim_mode']}"
    presign = result.get("presign")
    if presign:
        line += (f" ({presign['messages']:,} payloads signed before the run in {presign['seconds']:.1f} s, "
                 f"{presign['signs_per_s']:,.0f} signs/s; not counted in the CPU or rate figures)")
    else:
        line += " (each reading signed by the simulator during the run, counted in its CPU)"
    return line


COMMANDS = [e2e]
