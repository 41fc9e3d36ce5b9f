"""Test support for cloud ingest: meters with real keys, signed payloads, a consumer subprocess and
a gateway stand-in that re-sends unacknowledged batches the way the edge agent does."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import asyncpg
import base58

from cloud.ingest import admin
from gridtokenx.harness.brokers import free_port
from gridtokenx.harness.processes import Proc
from protocol import topics
from protocol.envelopes import Ack, Batch, BatchItem, decode_ack, encode
from protocol.meters_csv import MeterRow
from protocol.reading import Reading
from protocol.wire import secret_key_from_seed, sign_reading

ROOT = Path(__file__).resolve().parents[3]
INTERVAL = 300
#: Default interval ends: seq N ends at _ANCHOR - (_SEQS - N) × INTERVAL, so a meter's readings are
#: consecutive, non-overlapping intervals in seq order (seq 1..1500 lie within the last 5.3 days).
_SEQS = 1_500
_ANCHOR = int(time.time()) // INTERVAL * INTERVAL - 600


@dataclass(frozen=True)
class Meter:
    meter_id: str
    public: bytes
    secret: bytes
    capacity_w: int = 10_000

    @classmethod
    def make(cls, meter_id: str, capacity_w: int = 10_000) -> Meter:
        public, secret = secret_key_from_seed(hashlib.sha256(meter_id.encode()).digest())
        return cls(meter_id, public, secret, capacity_w)

    @property
    def wallet(self) -> str:
        return base58.b58encode(hashlib.sha256(b"wallet" + self.meter_id.encode()).digest()).decode()

    def row(self) -> MeterRow:
        return MeterRow(self.meter_id, base58.b58encode(self.public).decode(), self.wallet, "solar",
                        self.capacity_w)

    def reading(self, seq: int, export_wh: int, register: int, *, end: int | None = None) -> Reading:
        end = end if end is not None else _ANCHOR - (_SEQS - seq) * INTERVAL
        return Reading(meter_id=self.meter_id, seq=seq, start=end - INTERVAL, end=end, export_wh=export_wh,
                       export_register_wh=register)

    def sign(self, reading: Reading, *, secret: bytes | None = None) -> bytes:
        return sign_reading(reading, secret or self.secret)

    def item(self, seq: int, export_wh: int, register: int, **kw: int) -> BatchItem:
        return BatchItem(self.meter_id, seq, self.sign(self.reading(seq, export_wh, register, **kw)))


async def register(dsn: str, meters: list[Meter]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await admin.upsert_meters(conn, [m.row() for m in meters])
    finally:
        await conn.close()


async def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


class ConsumerProcess:
    """`gridtokenx cloud run --role ingest` as a real subprocess (through the harness's `Proc`)."""

    def __init__(self, *, dsn: str, broker_url: str, client_id: str, log_dir: Path,
                 env: dict[str, str] | None = None, crash_after_commit: int | None = None) -> None:
        self.port = free_port()
        # The crash seam lives in the tests: a wrapper that gives the consumer an after_commit hook.
        wrapper = [str(Path(__file__).with_name("crash_after_commit.py")), str(crash_after_commit)] \
            if crash_after_commit else ["-m", "gridtokenx"]
        self.log_path = log_dir / f"{client_id}.log"
        self.process = Proc(client_id, [sys.executable, *wrapper, "cloud", "run", "--role", "ingest",
                                        "--broker-url", broker_url, "--client-id", client_id, "--port",
                                        str(self.port), "--host", "127.0.0.1", "--no-migrate"],
                            env={**os.environ, "DATABASE_URL": dsn, **(env or {})}, log_path=self.log_path,
                            metrics_port=self.port)
        self.process.start()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.process.popen is not None
        return self.process.popen

    def wait_ready(self, timeout: float = 20.0) -> None:
        self.process.wait_healthy(timeout)

    def metric(self, name: str) -> float:
        return self.process.metrics().get(name, 0.0)

    def terminate(self, timeout: float = 15.0) -> int:
        code = self.process.stop(timeout)
        assert code is not None
        return code

    def kill(self) -> None:
        self.process.kill9()

    def close(self) -> None:
        self.process.kill9()


class Gateway:
    """Publishes batches as gateway `gateway_id` and re-sends each until its ack arrives."""

    def __init__(self, host: str, port: int, gateway_id: str, password: str) -> None:
        self.host, self.port, self.gateway_id, self.password = host, port, gateway_id, password
        self.acks: dict[str, Ack] = {}
        self.sends = 0

    def batch(self, batch_id: str, items: list[BatchItem]) -> Batch:
        return Batch(gateway_id=self.gateway_id, batch_id=batch_id, sent_at=int(time.time()), items=items)

    async def deliver(self, batches: list[Batch], *, resend_after: float = 3.0, timeout: float = 40.0,
                      on_ack: asyncio.Event | None = None) -> dict[str, Ack]:
        wanted = {b.batch_id: b for b in batches}
        async with aiomqtt.Client(self.host, self.port, username=self.gateway_id, password=self.password,
                                  identifier=f"{self.gateway_id}-test", clean_session=True) as client:
            await client.subscribe(topics.acks(self.gateway_id), qos=1)
            sent_at: dict[str, float] = {}

            async def send(batch: Batch) -> None:
                await client.publish(topics.batches(self.gateway_id), encode(batch), qos=1)
                sent_at[batch.batch_id] = time.monotonic()
                self.sends += 1

            for b in batches:
                await send(b)
            deadline = time.monotonic() + timeout
            messages = aiter(client.messages)
            while any(bid not in self.acks for bid in wanted):
                if time.monotonic() > deadline:
                    missing = [bid for bid in wanted if bid not in self.acks]
                    raise AssertionError(f"no ack for {len(missing)} batch(es) within {timeout}s: {missing[:5]}")
                try:
                    msg = await asyncio.wait_for(anext(messages), 0.5)
                except TimeoutError:
                    msg = None
                if msg is not None:
                    assert isinstance(msg.payload, bytes)
                    ack = decode_ack(msg.payload)
                    if ack.batch_id in wanted:
                        self.acks[ack.batch_id] = ack
                        if on_ack is not None:
                            on_ack.set()
                now = time.monotonic()
                for bid, b in wanted.items():
                    if bid not in self.acks and now - sent_at[bid] > resend_after:
                        await send(b)
        return {bid: self.acks[bid] for bid in wanted}
