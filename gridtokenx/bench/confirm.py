"""`gridtokenx bench confirm`: RPC calls per minted batch and commit → confirmed latency, confirmation by
signatureSubscribe vs by polling getSignatureStatuses, against `gridtokenx localnet` (rpc backend).

For each mode: a fresh localnet process (statuses visible --status-delay after landing, as a real
cluster's `confirmed` lags), a scratch database and chain state dir; readings are committed at --rate
per second for --duration seconds while the minter runs, then drained. Reported: HTTP JSON-RPC requests
the minter made (per method, and per confirmed batch; the one-time compute-unit measurement of each
transaction shape is included), WebSocket subscribe requests, and p50/p95 ingest commit → confirmed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import click
from solders.keypair import Keypair

from cloud.db import create_scratch_database, drop_database, migrate
from cloud.settings import ChainSettings, CloudSettings, TokenizationSettings

_INSERT = (
    "INSERT INTO meter_readings (meter_id, seq, wallet_address, interval_start, interval_end, export_wh, format,"
    " payload, signature) SELECT m, s, w, now() - interval '15 minutes', now(), 1000 + s % 4000, 'v1',"
    " '\\x00'::bytea, 'bench' FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(m, s, w)")


def _start_localnet(workdir: Path, status_delay: float) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / "localnet.json"
    log = (workdir / "localnet.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gridtokenx", "localnet", "--port", "0", "--ws-port", "-1",
                             "--ready-file", str(ready), "--status-delay", str(status_delay)],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException(f"localnet did not start: {(workdir / 'localnet.log').read_text()}")
        time.sleep(0.05)
    return proc, str(json.loads(ready.read_text())["url"])


async def _one(admin_dsn: str, mode: str, *, meters: int, wallets: int, rate: int, duration: float,
               polling: float, status_delay: float) -> dict[str, Any]:
    from cloud.chain.factory import open_backend
    from cloud.chain.rpc import RpcBackend
    from cloud.chain.ws import SignatureWatcher
    from cloud.db import create_pool
    from cloud.minter.service import Minter

    name, dsn = await create_scratch_database(admin_dsn, "gtx_bench_confirm_")
    with tempfile.TemporaryDirectory(prefix="gtx-bench-confirm-") as tmp:
        proc, url = _start_localnet(Path(tmp), status_delay)
        try:
            await migrate(dsn)
            keys = [str(Keypair().pubkey()) for _ in range(wallets)]
            meter_ids = [f"bench-{i:05d}" for i in range(meters)]
            conn = await asyncpg.connect(dsn)
            await conn.executemany("INSERT INTO meters (meter_id, public_key, wallet_address, meter_type, capacity_w)"
                                   " VALUES ($1, $2, $3, 'solar', 10000)",
                                   [(m, str(Keypair().pubkey()), keys[i % wallets]) for i, m in enumerate(meter_ids)])
            tok = dataclasses.replace(TokenizationSettings(), polling_interval_secs=polling, batch_size=10_000)
            settings = CloudSettings(database_url=dsn, tokenization=tok, chain=ChainSettings(
                backend="rpc", rpc_url=url, ws_url=url.replace("http://", "ws://"), state_dir=Path(tmp) / "chain",
                confirm_mode=mode))
            backend = await open_backend(settings)
            assert isinstance(backend, RpcBackend)
            pool = await create_pool(dsn)
            watcher = SignatureWatcher(settings.chain.ws_url) if mode == "subscribe" else None
            if watcher is not None:
                watcher.start()
                await watcher.wait_connected(10)
            minter = Minter(pool, backend, settings, watcher)
            setup_calls = dict(backend.calls)
            stop = asyncio.Event()
            task = asyncio.create_task(minter.run(stop))
            seq = 0
            per_tick = max(1, rate // 10)
            t_end = time.monotonic() + duration
            while time.monotonic() < t_end:
                tick = time.monotonic()
                rows = [(meter_ids[(seq + i) % meters], seq + i + 1, keys[((seq + i) % meters) % wallets])
                        for i in range(per_tick)]
                seq += per_tick
                await conn.execute(_INSERT, *[list(c) for c in zip(*rows, strict=True)])
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
            deadline = time.monotonic() + 120
            while await conn.fetchval("SELECT count(*) FROM meter_readings WHERE NOT minted"):
                if time.monotonic() > deadline or task.done():
                    raise click.ClickException(f"{mode}: readings left unminted")
                await asyncio.sleep(0.05)
            stop.set()
            await task
            lat = await conn.fetchrow(
                "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95"
                " FROM (SELECT EXTRACT(EPOCH FROM minted_at - submitted_at) AS s FROM meter_readings) l")
            batches = int(await conn.fetchval("SELECT count(*) FROM mint_batches WHERE status = 'confirmed'"))
            calls = {m: n - setup_calls.get(m, 0) for m, n in backend.calls.items() if n - setup_calls.get(m, 0)}
            total = sum(calls.values())
            result = {
                "mode": mode, "readings": int(lat["n"]), "batches": batches,
                "rpc_calls": total, "rpc_calls_per_batch": round(total / max(batches, 1), 2),
                "rpc_calls_by_method": calls,
                "ws_subscribe_requests": watcher.messages if watcher else 0,
                "confirmed_by_notification": watcher.notifications if watcher else 0,
                "latency_p50_secs": round(float(lat["p50"]), 3), "latency_p95_secs": round(float(lat["p95"]), 3),
            }
            if watcher is not None:
                await watcher.close()
            await pool.close()
            await backend.close()
            await conn.close()
            return result
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            await drop_database(admin_dsn, name)


@click.command(name="confirm", help="RPC calls per minted batch and commit → confirmed p50/p95, confirmation "
               "by signatureSubscribe vs polling, against a localnet process. Needs PostgreSQL.")
@click.option("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True,
              envvar="DATABASE_URL", help="admin connection used to create and drop the scratch databases")
@click.option("--meters", default=200, show_default=True)
@click.option("--wallets", default=200, show_default=True)
@click.option("--rate", default=100, show_default=True, help="readings/s committed while the minter runs")
@click.option("--polling", default=1.0, show_default=True, help="TOKENIZATION_POLLING_INTERVAL_SECS")
@click.option("--duration", default=20.0, show_default=True, help="seconds of committing, per mode")
@click.option("--status-delay", default=0.4, show_default=True, help="localnet: seconds before a status shows")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def confirm(database_url: str, meters: int, wallets: int, rate: int, polling: float, duration: float,
            status_delay: float, as_json: bool) -> None:
    results = []
    for mode in ("subscribe", "poll"):
        results.append(asyncio.run(_one(database_url, mode, meters=meters, wallets=wallets, rate=rate,
                                        duration=duration, polling=polling, status_delay=status_delay)))
    doc = {"stage": "confirm", "rate_per_sec": rate, "duration_secs": duration, "polling_secs": polling,
           "status_delay_secs": status_delay,
           "modes": results}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for r in results:
        click.echo(f"{r['mode']:>9}: {r['batches']} batches, {r['rpc_calls_per_batch']} RPC calls/batch "
                   f"({r['rpc_calls_by_method']}), p50 {r['latency_p50_secs']} s, p95 {r['latency_p95_secs']} s")


COMMANDS: list[click.Command] = [confirm]
