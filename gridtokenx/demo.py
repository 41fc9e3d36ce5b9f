"""`gridtokenx demo`: the whole system on this machine, live, ending with a 0-drift check.

Starts an edge and a cloud Mosquitto (broker-config/, generated credentials), creates its own
PostgreSQL database, generates keys and the registry for N meters, then runs simulator → edge agent
→ cloud ingest → minter (embedded LiteSVM) as real processes. Shows readings/s per hop while it runs,
then a summary per meter type and the check of on-chain balances against validated energy.
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
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from gridtokenx.stack import Stack, StackError, StackOptions
from protocol.units import base_units_to_tokens_text, entitled_base_units, parse_ratio
from simulator.models import DAY, SITE_UTC_OFFSET_HOURS

#: Small fault rates so the demo shows rejections with reason codes, not just the happy path.
DEMO_FAULTS = ("--fault-bad-signature", "0.005", "--fault-over-max", "0.003", "--fault-replay", "0.005",
               "--fault-malformed", "0.002")

HOPS = (
    ("meters → edge broker", "sim", "gridtokenx_sim_readings_published_total"),
    ("edge agent stored", "edge", "gridtokenx_edge_received_total"),
    ("edge → cloud forwarded", "edge", "gridtokenx_edge_forwarded_total"),
    ("cloud accepted (Postgres)", "cloud", "gridtokenx_cloud_readings_accepted_total"),
    ("cloud rejected", "cloud", "gridtokenx_cloud_readings_rejected_total"),
    ("minted (confirmed)", "cloud", "gridtokenx_minted_readings_total"),
)


@dataclass
class Snapshot:
    t: float
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def get(self, proc: str, metric: str) -> float:
        return self.values.get(proc, {}).get(metric, 0.0)


def scrape(stack: Stack, prev: Snapshot | None = None) -> Snapshot:
    """Every process's /metrics now; a process that has exited (the simulator, once done) keeps its
    last scraped values, so totals never fall back to 0."""
    snap = Snapshot(time.monotonic())
    for name, proc in stack.procs.items():
        snap.values[name] = proc.metrics() or (prev.values.get(name, {}) if prev else {})
    return snap


def edge_depth(snap: Snapshot) -> float:
    return snap.get("edge", 'gridtokenx_edge_buffer_rows{state="pending"}') + snap.get(
        "edge", 'gridtokenx_edge_buffer_rows{state="inflight"}')


def snapshot_doc(first: Snapshot, now: Snapshot, phase: str) -> dict[str, Any]:
    """One live-view frame as data (the --json output keeps them all)."""
    doc: dict[str, Any] = {"t": round(now.t - first.t, 1), "phase": phase}
    for label, proc, metric in HOPS:
        doc[label] = now.get(proc, metric)
    doc["edge_depth"] = edge_depth(now)
    doc["unminted_backlog"] = now.get("cloud", "gridtokenx_unminted_backlog")
    doc["minted_base_units"] = now.get("cloud", "gridtokenx_minted_base_units_total")
    return doc


def view(first: Snapshot, prev: Snapshot, now: Snapshot, *, decimals: int, phase: str) -> Group:
    table = Table(title=f"GridTokenX demo — {phase} — {now.t - first.t:5.1f} s", expand=False)
    table.add_column("hop")
    table.add_column("total", justify="right")
    table.add_column("readings/s", justify="right")
    dt = max(now.t - prev.t, 1e-6)
    for label, proc, metric in HOPS:
        total = now.get(proc, metric)
        rate = (total - prev.get(proc, metric)) / dt
        table.add_row(label, f"{total:,.0f}", f"{rate:,.0f}")
    state = Table(show_header=False, expand=False)
    state.add_column("what")
    state.add_column("value", justify="right")
    state.add_row("edge buffer depth (pending + in flight)", f"{edge_depth(now):,.0f}")
    state.add_row("edge quarantined", f"{now.get('edge', 'gridtokenx_edge_quarantined_total'):,.0f}")
    state.add_row("unminted backlog", f"{now.get('cloud', 'gridtokenx_unminted_backlog'):,.0f}")
    minted = int(now.get("cloud", "gridtokenx_minted_base_units_total"))
    state.add_row("tokens minted", base_units_to_tokens_text(minted, decimals))
    state.add_row("retry queue", f"{now.get('cloud', 'gridtokenx_retry_queue_size'):,.0f}")
    alerts = sorted(k.split('"')[1] for k, v in now.values.get("cloud", {}).items()
                    if k.startswith("gridtokenx_alert{") and v)
    state.add_row("alerts", ", ".join(alerts) if alerts else "none")
    return Group(table, state)


async def summarize(database_url: str, *, ratio_text: str, decimals: int) -> dict[str, Any]:
    """Per meter type from Postgres: readings, validated Wh, entitled base units (integer math)."""
    import asyncpg

    ratio = parse_ratio(ratio_text)
    conn = await asyncpg.connect(database_url)
    try:
        per_meter = await conn.fetch(
            "SELECT m.meter_id, m.meter_type, m.wallet_address, count(r.id) AS readings,"
            " coalesce(sum(r.export_wh), 0)::bigint AS wh, count(r.id) FILTER (WHERE r.minted) AS minted"
            " FROM meters m LEFT JOIN meter_readings r ON r.meter_id = m.meter_id"
            " GROUP BY m.meter_id, m.meter_type, m.wallet_address")
        rejected = await conn.fetch("SELECT reason, count(*) AS n FROM rejected_readings GROUP BY reason")
    finally:
        await conn.close()
    types: dict[str, dict[str, int]] = {}
    wallets: dict[str, int] = {}
    for row in per_meter:
        entitled = entitled_base_units(int(row["wh"]), ratio=ratio, decimals=decimals)
        t = types.setdefault(row["meter_type"], {"meters": 0, "readings": 0, "wh": 0, "minted_readings": 0,
                                                 "entitled_base_units": 0})
        t["meters"] += 1
        t["readings"] += int(row["readings"])
        t["wh"] += int(row["wh"])
        t["minted_readings"] += int(row["minted"])
        t["entitled_base_units"] += entitled
        wallets[row["wallet_address"]] = wallets.get(row["wallet_address"], 0) + entitled
    return {"types": types, "entitled_by_wallet": wallets,
            "wallet_types": {row["wallet_address"]: row["meter_type"] for row in per_meter},
            "rejected_by_reason": {r["reason"]: int(r["n"]) for r in rejected}}


def _table(summary: dict[str, Any], onchain_by_type: dict[str, int], decimals: int) -> Table:
    table = Table(title="Summary per meter type")
    for col in ("meter type", "meters", "readings", "kWh", "tokens entitled", "tokens on chain"):
        table.add_column(col, justify="left" if col == "meter type" else "right")
    for name, t in sorted(summary["types"].items()):
        table.add_row(name, str(t["meters"]), f"{t['readings']:,}", f"{t['wh'] / 1000:,.3f}",
                      base_units_to_tokens_text(t["entitled_base_units"], decimals),
                      base_units_to_tokens_text(onchain_by_type.get(name, 0), decimals))
    return table


def daytime_backfill(now: float, window: float, *, utc_offset_hours: float = SITE_UTC_OFFSET_HOURS) -> float:
    """Seconds before `now` at which the simulated clock starts so that the simulated `window` begins at
    the site's most recent 08:00 from which it still ends by `now`: the demo shows a day's sunshine
    (and mints tokens) whatever the hour it is run at, instead of a night with nothing to export."""
    offset = utc_offset_hours * 3600
    start = (now + offset) // DAY * DAY - offset + 8 * 3600
    while start + window > now:
        start -= DAY
    return now - start


@click.command(help=__doc__)
@click.option("--meters", default=50, show_default=True, help="Simulated meters (mixed solar/consumer/hybrid/battery).")
@click.option("--duration", default=60.0, show_default=True, help="Real seconds the simulator publishes.")
@click.option("--speed", default=1440.0, show_default=True,
              help="Simulated seconds per real second (1440: a simulated day in a minute).")
@click.option("--interval", default=900, show_default=True, help="Meter reading interval, simulated seconds.")
@click.option("--faults/--no-faults", default=True, show_default=True,
              help="Inject a few bad readings (forged signature, over max, replay, malformed) to show rejections.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (no live view).")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".gridtokenx/demo"), show_default=True,
              help="Keys, broker files, logs and the edge buffer go here.")
@click.option("--keep-database", is_flag=True, help="Keep the demo's PostgreSQL database afterwards.")
@click.option("--drain-timeout", default=180.0, show_default=True,
              help="Seconds to wait, after publishing stops, for the edge to empty and the minter to catch up.")
def demo(meters: int, duration: float, speed: float, interval: int, faults: bool, as_json: bool, workdir: Path,
         keep_database: bool, drain_timeout: float) -> None:
    console = Console(stderr=as_json)
    decimals, ratio_text = 9, "1.0"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Minting keeps up with the fleet: the Phase 2 guide's 50 readings per 60 s poll would take minutes to drain
    # a simulated day of 50 meters. Polling every 1 s with up to 2,000 readings per poll keeps it live.
    options = StackOptions(meters=meters, workdir=workdir / stamp, keep_database=keep_database,
                           cloud_env={"TOKENIZATION_BATCH_SIZE": "2000", "TOKENIZATION_POLLING_INTERVAL_SECS": "1"})
    try:
        with Stack(options) as stack:
            if not as_json:
                console.print(f"[bold]GridTokenX demo[/bold]: {meters} meters, {duration:g} s at ×{speed:g}; "
                              f"files in {stack.workdir}")
            stack.setup()
            stack.start_cloud()
            stack.start_edge()
            backfill = daytime_backfill(time.time(), duration * speed)
            sim_flags = ["--meters", str(meters), "--duration", str(duration), "--speed", str(speed),
                         "--interval", str(interval), "--backfill", f"{backfill:.0f}", *(DEMO_FAULTS if faults else ())]
            sim = stack.start_sim(*sim_flags)
            first = prev = scrape(stack)
            snapshots: list[dict[str, Any]] = []
            live = Live(view(first, prev, first, decimals=decimals, phase="starting"), console=console,
                        refresh_per_second=4, transient=False)
            if not as_json:
                live.start()
            try:
                drain_deadline: float | None = None
                while True:
                    time.sleep(1.0)
                    now = scrape(stack, prev)
                    phase = "publishing" if sim.running else "draining"
                    if not as_json:
                        live.update(view(first, prev, now, decimals=decimals, phase=phase))
                    snapshots.append(snapshot_doc(first, now, phase))
                    prev = now
                    for name in ("cloud", "edge"):
                        if not stack.procs[name].running:
                            raise StackError(f"{name} stopped unexpectedly:\n{stack.procs[name].log_tail()}")
                    if sim.running:
                        continue
                    drain_deadline = drain_deadline or time.monotonic() + drain_timeout
                    depth = edge_depth(now)
                    backlog = now.get("cloud", "gridtokenx_unminted_backlog")
                    if depth == 0 and backlog == 0 and now.get("cloud", "gridtokenx_cloud_readings_accepted_total"):
                        break
                    if time.monotonic() > drain_deadline:
                        raise StackError(f"not drained after {drain_timeout:g} s: edge depth {depth:.0f}, "
                                         f"unminted {backlog:.0f}")
            finally:
                if not as_json:
                    live.stop()
            sim_report = stack.sim_report()
            final = snapshot_doc(first, prev, "done")
            if "published" in sim_report:  # the simulator's own count, after its last scrape
                final["meters → edge broker"] = sim_report["published"]
            stack.procs["edge"].stop()
            stack.procs["cloud"].stop()
            reconcile = json.loads(stack.run_cli("cloud", "reconcile", "--json", env=stack.cloud_env()))
            summary = asyncio.run(summarize(stack.database_url, ratio_text=ratio_text, decimals=decimals))
            result = build_result(summary, reconcile, sim_report, snapshots, summary.pop("wallet_types"))
            result["edge_quarantined"] = int(prev.get("edge", "gridtokenx_edge_quarantined_total"))
            result["final"] = final
            # The database the demo used, by name (the DSN's password, if any, is not repeated here).
            result["database"] = {"name": stack.database, "kept": keep_database}
    except StackError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        console.print()
        console.print(_table(summary, result["onchain_by_type"], decimals))
        console.print(Panel(result["check_line"], style="green" if result["drift"] == 0 else "red"))
        kept = result["database"]
        console.print(f"database {kept['name']}: " + ("kept (--keep-database)" if kept["kept"] else
                                                      "dropped (--keep-database keeps it)"))
    sys.exit(0 if result["drift"] == 0 else 1)


def build_result(summary: dict[str, Any], reconcile: dict[str, Any], sim_report: dict[str, Any],
                 snapshots: list[dict[str, Any]], wallet_types: dict[str, str]) -> dict[str, Any]:
    """Join the database summary with `cloud reconcile --json` (on-chain balances vs validated energy)."""
    report = reconcile.get("report", reconcile)
    balances = {w: int(b) for w, b in report.get("chain_by_wallet", {}).items()}
    onchain_by_type: dict[str, int] = {}
    for wallet, amount in balances.items():
        kind = wallet_types.get(wallet, "unknown")
        onchain_by_type[kind] = onchain_by_type.get(kind, 0) + amount
    entitled = summary["entitled_by_wallet"]
    drift = sum(abs(balances.get(w, 0) - entitled.get(w, 0)) for w in balances.keys() | entitled.keys())
    supply = int(report.get("supply_chain", 0))
    total_entitled = sum(entitled.values())
    check = (f"check: {len(entitled)} wallets; on-chain supply {supply} base units, entitled by validated energy "
             f"{total_entitled}; drift {drift}; reconcile {'clean' if report.get('clean') else 'NOT clean'}")
    return {"drift": drift + abs(supply - total_entitled), "check_line": check, "supply": supply,
            "entitled_total": total_entitled, "onchain_by_type": onchain_by_type,
            "readings_accepted": sum(t["readings"] for t in summary["types"].values()),
            "readings_rejected": sum(summary["rejected_by_reason"].values()),
            "summary": summary, "reconcile": report, "simulator": sim_report, "snapshots": snapshots}
