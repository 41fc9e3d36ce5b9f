"""`gridtokenx bench ingest`: verified readings per second persisted by 1 and by 2 consumer processes.

Pre-signs N readings of M registered meters, publishes them as batches to a local Mosquitto (the
project's cloud config) as one gateway, and times first publish → last ack, with real consumer
processes (`gridtokenx cloud run --role ingest`) writing to a scratch PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import aiomqtt
import asyncpg
import base58
import click

from cloud import db
from cloud.ingest import admin
from cloud.ingest.pipeline import classify, parse_items, verify_signatures
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.ingest.store import fetch_context, write_plan
from cloud.settings import TokenizationSettings
from gridtokenx.harness.brokers import Mosquitto, free_port
from protocol import topics
from protocol.envelopes import Batch, BatchItem, decode_ack, decode_batch, encode
from protocol.meters_csv import MeterRow
from protocol.reading import Reading
from protocol.wire import secret_key_from_seed, sign_reading
from runtime.redact import redact_text, redact_url

GATEWAY = "bench-gw"
INTERVAL = 900


@dataclass(frozen=True, slots=True)
class Round:
    consumers: int
    readings: int
    seconds: float
    readings_per_second: float
    stored: int


def _fleet(meters: int, readings: int, batch_size: int) -> tuple[list[MeterRow], list[bytes]]:
    """Registry rows and pre-encoded batch envelopes (consistent registers, recent intervals)."""
    rows: list[MeterRow] = []
    secrets_: list[bytes] = []
    for i in range(meters):
        public, secret = secret_key_from_seed(hashlib.sha256(f"bench-{i}".encode()).digest())
        meter_id = f"bench-{i:05d}"
        wallet = base58.b58encode(hashlib.sha256(meter_id.encode()).digest()).decode()
        rows.append(MeterRow(meter_id, base58.b58encode(public).decode(), wallet, "solar", 50_000))
        secrets_.append(secret)
    per_meter = -(-readings // meters)
    now = int(time.time())
    items: list[BatchItem] = []
    # Consecutive, non-overlapping intervals per meter (the cloud rejects overlaps), within the age limit.
    step = INTERVAL // max(1, per_meter // 100 + 1)
    for seq in range(1, per_meter + 1):
        end = now - (per_meter - seq + 1) * step - 60
        for row, secret in zip(rows, secrets_, strict=True):
            if len(items) == readings:
                break
            reading = Reading(meter_id=row.meter_id, seq=seq, start=end - step, end=end, export_wh=100,
                              export_register_wh=seq * 100)
            items.append(BatchItem(row.meter_id, seq, sign_reading(reading, secret)))
    batches = [encode(Batch(gateway_id=GATEWAY, batch_id=f"{GATEWAY}-{n:06d}", sent_at=now,
                            items=items[i:i + batch_size]))
               for n, i in enumerate(range(0, len(items), batch_size))]
    return rows, batches


async def _prepare(dsn: str, rows: list[MeterRow]) -> None:
    await db.migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await admin.upsert_meters(conn, rows)
    finally:
        await conn.close()


async def _count_and_reset(dsn: str, *, reset: bool) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        n = int(await conn.fetchval("SELECT count(*) FROM meter_readings"))
        if reset:
            await conn.execute("TRUNCATE meter_readings, meter_reading_keys, rejected_readings CASCADE")
        return n
    finally:
        await conn.close()


def _start_consumer(dsn: str, broker_url: str, client_id: str, logdir: Path,
                    profile_dir: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (logdir / f"{client_id}.log").open("ab")
    profiler = ["-m", "cProfile", "-o", str(profile_dir / f"{client_id}.prof")] if profile_dir else []
    proc = subprocess.Popen(
        [sys.executable, *profiler, "-m", "gridtokenx", "cloud", "run", "--role", "ingest",
         "--client-id", client_id, "--port", str(port), "--host", "127.0.0.1", "--no-migrate",
         "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT,
        env=os.environ | {"DATABASE_URL": dsn, "GRIDTOKENX_CLOUD_BROKER_URL": broker_url})  # secrets: env, not argv
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the consumer exited at start; see {logdir / client_id}.log")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                   timeout=1) as r:
            if r.status == 200:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise click.ClickException("the consumer did not become healthy within 30 s")


async def _publish_and_wait(broker: Mosquitto, password: str, batches: list[bytes], limit: float) -> float:
    async with aiomqtt.Client(broker.host, broker.port, username=GATEWAY, password=password,
                              identifier=f"{GATEWAY}-{uuid.uuid4().hex[:6]}", clean_session=True) as client:
        await client.subscribe(topics.acks(GATEWAY), qos=1)
        pending = set(range(len(batches)))
        started = time.perf_counter()

        async def publish() -> None:
            for payload in batches:
                await client.publish(topics.batches(GATEWAY), payload, qos=1)

        publisher = asyncio.create_task(publish())
        async with asyncio.timeout(limit):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                pending.discard(int(decode_ack(message.payload).batch_id.rsplit("-", 1)[1]))
                if not pending:
                    break
        await publisher
        return time.perf_counter() - started


async def _stages(dsn: str, batches: list[bytes], readings: int) -> dict[str, float]:
    """Per-reading µs of each ingest step, in this process, without MQTT: where the time goes."""
    conn = await asyncpg.connect(dsn)
    try:
        registry = Registry()
        await registry.load(conn)
        limits = Limits.from_settings(TokenizationSettings())
        spent = dict.fromkeys(("decode", "parse", "verify", "context", "classify", "write"), 0.0)
        for raw in batches:
            t0 = time.perf_counter()
            batch = decode_batch(raw)
            t1 = time.perf_counter()
            parsed = parse_items(batch)
            t2 = time.perf_counter()
            verified = verify_signatures(parsed, registry.get)
            t3 = time.perf_counter()
            context = await fetch_context(conn, [p.signed.key for p in parsed if p.signed is not None])
            t4 = time.perf_counter()
            plan = classify(batch, parsed, verified, context, registry.get, limits=limits, now=int(time.time()))
            t5 = time.perf_counter()
            await write_plan(conn, plan)
            t6 = time.perf_counter()
            for name, took in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                spent[name] += took
        return {name: round(took / readings * 1e6, 1) for name, took in spent.items()}
    finally:
        await conn.close()


def run_bench(*, admin_dsn: str, meters: int, readings: int, batch_size: int, rounds: tuple[int, ...],
              timeout: float, profile_dir: Path | None = None,
              stages: dict[str, float] | None = None) -> list[Round]:
    rows, batches = _fleet(meters, readings, batch_size)
    name, dsn = asyncio.run(db.create_scratch_database(admin_dsn, "gtx_bench_"))
    results: list[Round] = []
    try:
        asyncio.run(_prepare(dsn, rows))
        with tempfile.TemporaryDirectory(prefix="gtx-bench-ingest-") as tmp:
            password = secrets.token_urlsafe(12)
            users = {"cloud-consumer": secrets.token_urlsafe(12), GATEWAY: password}
            with Mosquitto(role="cloud", workdir=Path(tmp) / "broker", users=users) as broker:
                for n in rounds:
                    procs = [_start_consumer(dsn, broker.url_for("cloud-consumer"), f"bench-consumer-{n}-{i}",
                                             Path(tmp), profile_dir) for i in range(n)]
                    try:
                        seconds = asyncio.run(_publish_and_wait(broker, password, batches, timeout))
                    except TimeoutError as exc:
                        logs = "\n".join((Path(tmp) / f"bench-consumer-{n}-{i}.log").read_text()[-1500:]
                                         for i in range(n))
                        raise click.ClickException(f"not every batch was acked within {timeout} s; "
                                                   f"consumer logs:\n{logs}") from exc
                    finally:
                        for proc, _ in procs:
                            proc.send_signal(signal.SIGTERM)
                        for proc, _ in procs:
                            try:
                                proc.wait(15)
                            except subprocess.TimeoutExpired:
                                proc.kill()
                                proc.wait()
                    stored = asyncio.run(_count_and_reset(dsn, reset=True))
                    results.append(Round(n, readings, round(seconds, 3), round(readings / seconds, 1), stored))
        if stages is not None:
            stages.update(asyncio.run(_stages(dsn, batches, readings)))
    finally:
        asyncio.run(db.drop_database(admin_dsn, name))
    return results


@click.command("ingest", help="Cloud ingest throughput: verified readings/s persisted to PostgreSQL by 1 and "
               "then 2 consumer processes (real Mosquitto, real Postgres, a scratch database).")
@click.option("--meters", type=int, default=500, show_default=True, help="Registered meters.")
@click.option("--readings", type=int, default=30_000, show_default=True, help="Signed readings per round.")
@click.option("--batch-size", type=int, default=500, show_default=True, help="Readings per batch envelope.")
@click.option("--consumers", "rounds", default="1,2", show_default=True,
              help="Comma-separated consumer process counts, one round each.")
@click.option("--database-url", "admin_dsn",
              default=lambda: os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
              help="A PostgreSQL DSN allowed to CREATE DATABASE (a scratch database is made and dropped).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds per round at most.")
@click.option("--profile", "profile_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Run the consumers under cProfile, writing DIR/<client-id>.prof (slower).")
@click.option("--stages/--no-stages", default=True, show_default=True,
              help="Also time each step per reading in-process (decode, parse, verify, context, classify, write).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def ingest(meters: int, readings: int, batch_size: int, rounds: str, admin_dsn: str, timeout: float,
           profile_dir: Path | None, stages: bool, as_json: bool) -> None:
    counts = tuple(int(c) for c in rounds.split(",") if c.strip())
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    if not counts or min(counts) < 1:
        raise click.ClickException("--consumers must list positive counts, e.g. 1,2")
    click.echo(f"signing {readings} readings of {meters} meters …", err=True)
    steps: dict[str, float] | None = {} if stages else None
    try:
        results = run_bench(admin_dsn=admin_dsn, meters=meters, readings=readings, batch_size=batch_size,
                            rounds=counts, timeout=timeout, profile_dir=profile_dir, stages=steps)
    except (OSError, asyncpg.PostgresError) as exc:
        raise click.ClickException(f"cannot use PostgreSQL at {redact_url(admin_dsn)} "
                                   f"({redact_text(str(exc))}); start it or pass "
                                   "--database-url") from exc
    if as_json:
        click.echo(json.dumps({"benchmark": "ingest", "meters": meters, "batch_size": batch_size,
                               "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                               "rounds": [asdict(r) for r in results], "stage_us_per_reading": steps}))
        return
    for r in results:
        click.echo(f"{r.consumers} consumer(s): {r.readings} readings in {r.seconds:.2f} s = "
                   f"{r.readings_per_second:,.0f} verified readings/s persisted ({r.stored} rows)")
    if steps:
        click.echo("one process, per reading: " + ", ".join(f"{k} {v} µs" for k, v in steps.items()))
    click.echo(f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")


COMMANDS: list[click.Command] = [ingest]
