"""`gridtokenx bench mint`: minting throughput and ingest-commit → confirmed latency, embedded chain.

Two phases on a scratch database (created and dropped here) and a scratch chain state dir:

1. drain: a backlog of readings is already committed; the minter (polling every --polling s) mints
   it all. Reports readings/s and wallets/s (mint_to instructions per second).
2. steady: readings are committed at --rate per second for --duration seconds while the minter
   runs; reports p50/p95/max latency from the ingest commit (submitted_at) to the confirmed mint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import click
from solders.keypair import Keypair

from cloud.db import create_scratch_database, drop_database, migrate
from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings
from runtime.redact import redact_text, redact_url

_INSERT = (
    "INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end, export_wh, format,"
    " payload, signature) SELECT m, s, w, now() - interval '15 minutes', now(), e, 'v1', '\\x00'::bytea, 'bench'"
    " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) AS u(m, s, w, e)")


@dataclasses.dataclass
class _Fleet:
    meters: list[str]
    wallets: dict[str, str]
    seq: dict[str, int]

    def rows(self, n: int) -> tuple[list[str], list[int], list[str], list[int]]:
        ms, ss, ws, es = [], [], [], []
        for i in range(n):
            m = self.meters[i % len(self.meters)]
            self.seq[m] += 1
            ms.append(m)
            ss.append(self.seq[m])
            ws.append(self.wallets[m])
            es.append(1000 + (self.seq[m] * 7919 + i) % 4000)
        return ms, ss, ws, es


async def _bench(admin_dsn: str, meters: int, wallets: int, backlog: int, rate: int, duration: float,
                 polling: float, batch_size: int) -> dict[str, Any]:
    from cloud.minter.service import run_minter

    name, dsn = await create_scratch_database(admin_dsn, "gtx_bench_mint_")
    try:
        await migrate(dsn)
        keys = [str(Keypair().pubkey()) for _ in range(wallets)]
        fleet = _Fleet([f"bench-{i:05d}" for i in range(meters)], {}, {})
        fleet.wallets = {m: keys[i % wallets] for i, m in enumerate(fleet.meters)}
        fleet.seq = dict.fromkeys(fleet.meters, 0)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany("INSERT INTO meters (meter_id, public_key, wallet_address, meter_type, capacity_w)"
                                   " VALUES ($1, $2, $3, 'solar', 10000)",
                                   [(m, str(Keypair().pubkey()), fleet.wallets[m]) for m in fleet.meters])
            await conn.execute(_INSERT, *fleet.rows(backlog))
            with tempfile.TemporaryDirectory(prefix="gtx-bench-chain-") as state:
                tok = dataclasses.replace(TokenizationSettings(), polling_interval_secs=polling,
                                          batch_size=batch_size, max_batches_per_poll=max(64, batch_size // 10))
                settings = CloudSettings(database_url=dsn, tokenization=tok,
                                         chain=ChainSettings(state_dir=Path(state), confirm_poll_secs=0.2))
                stop = asyncio.Event()
                started = time.monotonic()
                minter = asyncio.create_task(run_minter(settings, stop))
                drain = await _wait_drained(conn, minter, limit_secs=600)
                drain_secs = time.monotonic() - started
                mint_tos = await conn.fetchval("SELECT coalesce(sum(cardinality(wallets)), 0) FROM mint_batches")
                steady_from = await conn.fetchval("SELECT coalesce(max(id), 0) FROM meter_readings")
                per_tick = max(1, rate // 10)
                t_end = time.monotonic() + duration
                while time.monotonic() < t_end:
                    tick = time.monotonic()
                    await conn.execute(_INSERT, *fleet.rows(per_tick))
                    await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
                await _wait_drained(conn, minter, limit_secs=120)
                lat = await conn.fetchrow(
                    "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,"
                    " percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95, max(s) AS max"
                    " FROM (SELECT EXTRACT(EPOCH FROM minted_at - submitted_at) AS s"
                    "       FROM meter_readings WHERE id > $1) AS latencies", steady_from)
                stop.set()
                await minter
            return {
                "stage": "mint", "backend": "embedded", "meters": meters, "wallets": wallets,
                "polling_secs": polling, "batch_size": batch_size,
                "drain": {"readings": backlog, "seconds": round(drain_secs, 3),
                          "readings_per_sec": round(backlog / drain_secs, 1),
                          "wallets_per_sec": round(int(mint_tos) / drain_secs, 1), "minted": drain},
                "steady": {"rate_per_sec": per_tick * 10, "seconds": duration, "readings": int(lat["n"]),
                           "latency_p50_secs": _r(lat["p50"]), "latency_p95_secs": _r(lat["p95"]),
                           "latency_max_secs": _r(lat["max"])},
            }
        finally:
            await conn.close()
    finally:
        await drop_database(admin_dsn, name)


def _r(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def _wait_drained(conn: asyncpg.Connection, minter: asyncio.Task[None], *, limit_secs: float) -> int:
    deadline = time.monotonic() + limit_secs
    while True:
        if minter.done():
            minter.result()
            raise click.ClickException("the minter stopped unexpectedly")
        left = await conn.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted")
        if left == 0:
            return int(await conn.fetchval("SELECT count(*) FROM meter_readings WHERE minted"))
        if time.monotonic() > deadline:
            raise click.ClickException(f"{left} readings still unminted after {limit_secs:.0f}s")
        await asyncio.sleep(0.05)


@click.command(name="mint", help="Minter throughput (readings/s, wallets/s) and ingest-commit → confirmed "
               "latency (p50/p95) with the embedded chain. Needs PostgreSQL (creates a scratch database).")
@click.option("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True,
              envvar="DATABASE_URL", help="admin connection used to create and drop the scratch database")
@click.option("--meters", default=1000, show_default=True)
@click.option("--wallets", default=1000, show_default=True)
@click.option("--backlog", default=20000, show_default=True, help="readings committed before the drain phase")
@click.option("--rate", default=2000, show_default=True, help="readings/s committed in the steady phase")
@click.option("--duration", default=10.0, show_default=True, help="seconds of the steady phase")
@click.option("--polling", default=1.0, show_default=True, help="TOKENIZATION_POLLING_INTERVAL_SECS")
@click.option("--batch-size", default=10000, show_default=True, help="TOKENIZATION_BATCH_SIZE (readings per poll)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def mint(database_url: str, meters: int, wallets: int, backlog: int, rate: int, duration: float, polling: float,
         batch_size: int, as_json: bool) -> None:
    import logging

    logging.getLogger("cloud").setLevel(logging.WARNING)
    try:
        doc = asyncio.run(_bench(database_url, meters, wallets, backlog, rate, duration, polling, batch_size))
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"PostgreSQL at {redact_url(database_url)} is not usable "
                                   f"({redact_text(str(exc))}); start it or pass "
                                   "--database-url") from exc
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    d, s = doc["drain"], doc["steady"]
    click.echo(f"mint bench (embedded LiteSVM, {meters} meters on {wallets} wallets, polling {polling}s, "
               f"batch size {batch_size})")
    click.echo(f"  drain : {d['readings']} readings in {d['seconds']}s = {d['readings_per_sec']} readings/s, "
               f"{d['wallets_per_sec']} wallets/s")
    click.echo(f"  steady: {s['readings']} readings at {s['rate_per_sec']}/s: latency p50 {s['latency_p50_secs']}s, "
               f"p95 {s['latency_p95_secs']}s, max {s['latency_max_secs']}s (ingest commit → confirmed)")


COMMANDS: list[click.Command] = [mint]

