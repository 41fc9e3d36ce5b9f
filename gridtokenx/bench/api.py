"""`gridtokenx bench api`: POST /api/meters/submit-reading throughput and latency for one API process, and
WebSocket fan-out of one event to N connected clients.

A scratch PostgreSQL database, M registered meters, N pre-signed v1 readings; one real `gridtokenx cloud
api` process (uvicorn, 1 worker, rate limits off). The load generator (aiohttp, C requests in flight)
runs in this process, on the same machine: its CPU competes with the API's, so the figures are a
lower bound for a dedicated host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import asyncpg
import base58
import click

from cloud import db
from cloud.api import tokens
from cloud.ingest import admin
from gridtokenx.harness.brokers import free_port
from protocol.meters_csv import MeterRow
from protocol.reading import Reading
from protocol.wire import secret_key_from_seed, sign_reading

OCTET = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True, slots=True)
class SubmitResult:
    requests: int
    concurrency: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    accepted: int


@dataclass(frozen=True, slots=True)
class FanoutResult:
    clients: int
    connect_seconds: float
    first_ms: float
    last_ms: float
    """From the POST of one reading until the last subscribed client received its event."""
    received: int


def _fleet(meters: int, readings: int) -> tuple[list[MeterRow], list[bytes]]:
    rows, secrets_ = [], []
    for i in range(meters):
        public, secret = secret_key_from_seed(hashlib.sha256(f"api-bench-{i}".encode()).digest())
        meter_id = f"apib-{i:05d}"
        wallet = base58.b58encode(hashlib.sha256(meter_id.encode()).digest()).decode()
        rows.append(MeterRow(meter_id, base58.b58encode(public).decode(), wallet, "solar", 50_000))
        secrets_.append(secret)
    per_meter = -(-readings // meters)
    now = int(time.time())
    payloads: list[bytes] = []
    for seq in range(1, per_meter + 1):
        end = now - (per_meter - seq + 1) * 60 - 60
        for row, secret in zip(rows, secrets_, strict=True):
            if len(payloads) == readings:
                break
            payloads.append(sign_reading(Reading(meter_id=row.meter_id, seq=seq, start=end - 60, end=end,
                                                 export_wh=10, export_register_wh=seq * 10), secret))
    return rows, payloads


async def _prepare(dsn: str, rows: list[MeterRow]) -> str:
    await db.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await admin.upsert_meters(conn, rows)
        secret, _ = await tokens.create(conn, name="bench", scope="admin", expires_at=None)
        return secret
    finally:
        await conn.close()


def _start_api(dsn: str, logdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (logdir / "api.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtokenx", "cloud", "api", "--database-url", dsn, "--host", "127.0.0.1",
         "--port", str(port), "--no-migrate", "--client-rate", "0", "--meter-rate", "0", "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"GRIDTOKENX_CHAIN_STATE_DIR": str(logdir / "chain")})
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the API exited at start; see {logdir / 'api.log'}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/healthz", timeout=1) as r:
            if r.status == 200:
                return proc, url
        time.sleep(0.1)
    proc.kill()
    raise click.ClickException("the API did not become healthy within 30 s")


async def _submit(url: str, token: str, payloads: list[bytes], concurrency: int) -> SubmitResult:
    latencies: list[float] = []
    accepted = 0
    queue = iter(payloads)
    headers = OCTET | {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal accepted
            for payload in queue:
                t0 = time.perf_counter()
                async with session.post(url + "/api/meters/submit-reading", data=payload, headers=headers) as r:
                    body = await r.json()
                latencies.append(time.perf_counter() - t0)
                if r.status != 200:
                    raise click.ClickException(f"HTTP {r.status}: {body}")
                accepted += body["status"] == "accepted"

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return SubmitResult(n, concurrency, round(seconds, 3), round(n / seconds, 1),
                        round(latencies[n // 2] * 1000, 2), round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2),
                        accepted)


async def _fanout(url: str, token: str, clients: int, payload: bytes) -> FanoutResult:
    ws_url = url.replace("http://", "ws://") + f"/api/ws?token={token}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        sockets = await asyncio.gather(*(session.ws_connect(ws_url, heartbeat=None) for _ in range(clients)))
        connect_seconds = time.perf_counter() - started
        try:
            # Every subscription is registered once /healthz counts them.
            deadline = time.monotonic() + 30
            while True:
                async with session.get(url + "/healthz") as r:
                    if (await r.json())["websocket_clients"] >= clients:
                        break
                if time.monotonic() > deadline:
                    raise click.ClickException("the API did not register every WebSocket client within 30 s")
                await asyncio.sleep(0.05)
            arrivals: list[float] = []

            async def listen(ws: aiohttp.ClientWebSocketResponse) -> None:
                msg = await ws.receive(timeout=30)
                arrivals.append(time.perf_counter())
                json.loads(msg.data)

            listeners = [asyncio.create_task(listen(ws)) for ws in sockets]
            t0 = time.perf_counter()
            async with session.post(url + "/api/meters/submit-reading", data=payload,
                                    headers=OCTET | {"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
            await asyncio.gather(*listeners)
            return FanoutResult(clients, round(connect_seconds, 2), round((min(arrivals) - t0) * 1000, 1),
                                round((max(arrivals) - t0) * 1000, 1), len(arrivals))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


@dataclass(frozen=True, slots=True)
class TriggerCost:
    rounds: int
    readings_per_round: int
    write_us_with_events: float
    write_us_without_events: float
    """µs per reading of the ingest write statement (`cloud.ingest.store.write_plan`), median of the rounds."""


async def _trigger_cost(dsn: str, rows: list[MeterRow], rounds: int, per_round: int) -> TriggerCost:
    """The ingest write of `per_round` new readings (batches of 500) with the event triggers enabled and
    disabled, alternating in the same database so that the shared machine's noise hits both alike."""
    from cloud.ingest.pipeline import classify, parse_items, verify_signatures
    from cloud.ingest.registry import Registry
    from cloud.ingest.rules import Limits
    from cloud.ingest.store import fetch_context, write_plan
    from cloud.settings import TokenizationSettings
    from protocol.envelopes import Batch, BatchItem

    secrets_ = [secret_key_from_seed(hashlib.sha256(f"api-bench-{i}".encode()).digest())[1]
                for i in range(len(rows))]
    conn = await asyncpg.connect(dsn)
    try:
        registry = Registry()
        await registry.load(conn)
        limits = Limits.from_settings(TokenizationSettings())
        timings: dict[bool, list[float]] = {True: [], False: []}
        base_seq = 1_000_000
        now = int(time.time())
        for r in range(rounds * 2):
            with_events = r % 2 == 0
            await conn.execute(f"ALTER TABLE meter_readings {'ENABLE' if with_events else 'DISABLE'} TRIGGER "
                               "api_events_readings")
            items = []
            for k in range(per_round):
                row = rows[k % len(rows)]
                seq = base_seq + r * per_round + k
                reading = Reading(meter_id=row.meter_id, seq=seq, start=now - 4000, end=now - 3700, export_wh=1)
                items.append(BatchItem(row.meter_id, seq, sign_reading(reading, secrets_[k % len(rows)])))
            spent = 0.0
            for i in range(0, len(items), 500):
                batch = Batch(gateway_id="bench", batch_id=f"t-{r}-{i}", sent_at=now, items=items[i:i + 500])
                parsed = parse_items(batch)
                verified = verify_signatures(parsed, registry.get)
                context = await fetch_context(conn, [p.signed.key for p in parsed if p.signed is not None])
                plan = classify(batch, parsed, verified, context, registry.get, limits=limits, now=now)
                t0 = time.perf_counter()
                await write_plan(conn, plan)
                spent += time.perf_counter() - t0
            timings[with_events].append(spent / per_round * 1e6)
        await conn.execute("ALTER TABLE meter_readings ENABLE TRIGGER api_events_readings")
    finally:
        await conn.close()

    def median(v: list[float]) -> float:
        return round(sorted(v)[len(v) // 2], 1)

    return TriggerCost(rounds, per_round, median(timings[True]), median(timings[False]))


def run_bench(*, admin_dsn: str, meters: int, readings: int, concurrency: int,
              clients: int, trigger_rounds: int = 0) -> tuple[SubmitResult, FanoutResult, TriggerCost | None]:
    rows, payloads = _fleet(meters, readings + 1)
    name, dsn = asyncio.run(db.create_scratch_database(admin_dsn, "gtx_bench_"))
    try:
        token = asyncio.run(_prepare(dsn, rows))
        with tempfile.TemporaryDirectory(prefix="gtx-bench-api-") as tmp:
            proc, url = _start_api(dsn, Path(tmp))
            try:
                submit = asyncio.run(_submit(url, token, payloads[:-1], concurrency))
                fanout = asyncio.run(_fanout(url, token, clients, payloads[-1]))
                cost = asyncio.run(_trigger_cost(dsn, rows, trigger_rounds, 2000)) if trigger_rounds else None
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        asyncio.run(db.drop_database(admin_dsn, name))
    return submit, fanout, cost


@click.command("api", help="Cloud API: submit-reading requests/s and p50/p99 latency for one API process, and "
               "the time for one event to reach N WebSocket clients (real PostgreSQL, scratch database).")
@click.option("--meters", type=int, default=200, show_default=True)
@click.option("--readings", type=int, default=5000, show_default=True, help="POSTs (one signed reading each)")
@click.option("--concurrency", type=int, default=32, show_default=True, help="requests in flight")
@click.option("--clients", type=int, default=1000, show_default=True, help="WebSocket clients for the fan-out")
@click.option("--database-url", "admin_dsn",
              default=lambda: os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
              help="A PostgreSQL DSN allowed to CREATE DATABASE (a scratch database is made and dropped).")
@click.option("--trigger-rounds", type=int, default=10, show_default=True,
              help="Also time the ingest write with and without the event triggers (alternating rounds of 2,000 "
                   "readings); 0 = skip")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def api(meters: int, readings: int, concurrency: int, clients: int, admin_dsn: str, trigger_rounds: int,
        as_json: bool) -> None:
    click.echo(f"signing {readings} readings of {meters} meters …", err=True)
    try:
        submit, fanout, cost = run_bench(admin_dsn=admin_dsn, meters=meters, readings=readings,
                                         concurrency=concurrency, clients=clients, trigger_rounds=trigger_rounds)
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"cannot use PostgreSQL at {admin_dsn} ({exc}); start it or pass "
                                   "--database-url") from exc
    if as_json:
        click.echo(json.dumps({"benchmark": "api", "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                               "submit": asdict(submit), "fanout": asdict(fanout),
                               "ingest_write_trigger_cost": asdict(cost) if cost else None}))
        return
    click.echo(f"submit-reading, 1 API process, {submit.concurrency} in flight: {submit.requests} requests in "
               f"{submit.seconds:.2f} s = {submit.requests_per_second:,.0f} req/s; p50 {submit.p50_ms} ms, "
               f"p99 {submit.p99_ms} ms ({submit.accepted} accepted)")
    click.echo(f"WebSocket fan-out: {fanout.clients} clients connected in {fanout.connect_seconds} s; one reading "
               f"posted → first client {fanout.first_ms} ms, last client {fanout.last_ms} ms "
               f"({fanout.received} received)")
    if cost:
        click.echo(f"ingest write per reading (median of {cost.rounds} rounds of {cost.readings_per_round}): "
                   f"{cost.write_us_with_events} µs with the event triggers, {cost.write_us_without_events} µs "
                   "without")


COMMANDS: list[click.Command] = [api]
