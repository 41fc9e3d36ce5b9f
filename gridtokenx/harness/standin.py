"""A stand-in cloud and a fast meter fleet, for the edge agent's tests and `gridtokenx bench edge`.

`StandinCloud` does what the cloud consumer does at the protocol level, without a database: it
subscribes `$share/cloud/edge/+/batches` as `cloud-consumer`, acks every item (accepted the first
time, duplicate after) on `edge/{gateway_id}/acks`, and records every (meter_id, seq) it saw in
arrival order. It runs its own asyncio loop in a thread so synchronous tests can drive it.
`Fleet` signs real v1 readings and publishes them at QoS 1 as the `sim-fleet` user.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
import base58
import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import topics
from protocol.envelopes import Ack, AckItem, decode_batch, encode
from protocol.meters_csv import MeterRow, render
from protocol.reading import Reading
from protocol.reasons import Reason
from protocol.wire import secret_key_from_seed, sign_reading
from runtime.config import BrokerURL

T0 = 1_793_491_200  # 2026-11-01T00:00:00Z
INTERVAL = 900

#: Decide an item's fate: None = accept, a Reason = reject with it.
Judge = Callable[[str, int, bytes], Reason | None]


@dataclass
class Seen:
    """What the stand-in cloud received, under a lock (read from the test thread)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    order: dict[str, list[int]] = field(default_factory=dict)
    """meter_id → seqs in the order they first arrived."""
    keys: set[tuple[str, int]] = field(default_factory=set)
    payloads: dict[tuple[str, int], bytes] = field(default_factory=dict)
    items: int = 0
    batches: int = 0
    acks_sent: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def unique(self) -> int:
        with self.lock:
            return len(self.keys)


class StandinCloud:
    def __init__(self, url: BrokerURL, *, judge: Judge | None = None, keep_payloads: bool = False,
                 ack: bool = True) -> None:
        self.url = url
        self.judge = judge
        self.keep_payloads = keep_payloads
        self.ack = ack
        self.seen = Seen()
        self.connected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="standin-cloud", daemon=True)

    def start(self, timeout: float = 10.0) -> StandinCloud:
        self._thread.start()
        if not self.connected.wait(timeout):
            raise RuntimeError("the stand-in cloud did not connect to the cloud broker")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        self._loop.close()

    def __enter__(self) -> StandinCloud:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _main(self) -> None:
        self._loop.run_until_complete(self._run())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        while not self._stop.is_set():
            try:
                async with aiomqtt.Client(self.url.host, self.url.port, username=self.url.username,
                                          password=self.url.password, identifier="standin-cloud",
                                          clean_session=False, timeout=10) as client:
                    await client.subscribe(topics.SHARED_BATCHES_FILTER, qos=1)
                    self.connected.set()
                    outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
                    # Acks go out from their own task: when the connection drops, the iterator raises at
                    # once and the TaskGroup cancels a publish that would otherwise wait for its timeout.
                    async with asyncio.TaskGroup() as tg:
                        consume = tg.create_task(self._consume(client, outbox))
                        send = tg.create_task(self._send(client, outbox))
                        await self._stop.wait()
                        consume.cancel()
                        send.cancel()
            except* aiomqtt.MqttError:
                self.connected.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.2)

    async def _send(self, client: aiomqtt.Client, outbox: asyncio.Queue[tuple[str, bytes]]) -> None:
        while True:
            topic, payload = await outbox.get()
            await client.publish(topic, payload, qos=1)
            with self.seen.lock:
                self.seen.acks_sent += 1

    async def _consume(self, client: aiomqtt.Client, outbox: asyncio.Queue[tuple[str, bytes]]) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            try:
                batch = decode_batch(message.payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            results: list[AckItem] = []
            now = time.monotonic()
            with self.seen.lock:
                s = self.seen
                s.batches += 1
                s.first_at = s.first_at or now
                s.last_at = now
                for item in batch.items:
                    s.items += 1
                    key = (item.meter_id, item.seq)
                    reason = self.judge(item.meter_id, item.seq, item.payload) if self.judge else None
                    if reason is not None:
                        results.append(AckItem(item.meter_id, item.seq, "rejected", reason))
                    elif key in s.keys:
                        results.append(AckItem(item.meter_id, item.seq, "duplicate"))
                    else:
                        results.append(AckItem(item.meter_id, item.seq, "accepted"))
                    if key not in s.keys:
                        s.keys.add(key)
                        s.order.setdefault(item.meter_id, []).append(item.seq)
                        if self.keep_payloads:
                            s.payloads[key] = item.payload
            if self.ack:
                outbox.put_nowait((topics.acks(batch.gateway_id),
                                   encode(Ack(batch.gateway_id, batch.batch_id, results))))


@dataclass(frozen=True)
class Meter:
    meter_id: str
    public_key: bytes
    secret_key: bytes


def make_meters(n: int, prefix: str = "m") -> list[Meter]:
    out = []
    for i in range(n):
        seed = i.to_bytes(4, "big") * 8
        public, secret = secret_key_from_seed(seed)
        out.append(Meter(f"{prefix}{i:05d}", public, secret))
    return out


def reading_payload(meter: Meter, seq: int) -> bytes:
    start = T0 + seq * INTERVAL
    export = 100 + (seq * 37) % 400
    reading = Reading(meter.meter_id, seq, start, start + INTERVAL, export, export_register_wh=seq * 1000 + export)
    return sign_reading(reading, meter.secret_key)


def meters_csv(meters: list[Meter]) -> str:
    """A registry export for the stand-in meters (wallet: the meter's own key, any 32-byte base58 does)."""
    rows = []
    for m in meters:
        key = base58.b58encode(m.public_key).decode()
        rows.append(MeterRow(m.meter_id, key, key, "solar", 5_000))
    return render(rows)


class Fleet:
    """Many meters over one connection (the broker's `sim-fleet` user): QoS 1, waits for every PUBACK."""

    def __init__(self, url: BrokerURL, *, client_id: str = "sim-fleet-test") -> None:
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if url.username:
            self._client.username_pw_set(url.username, url.password)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._url = url
        self._acked = 0
        self._lock = threading.Condition()
        self._client.on_publish = self._on_publish

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self._acked += 1
            self._lock.notify_all()

    def __enter__(self) -> Fleet:
        self._client.connect(self._url.host, self._url.port)
        self._client.loop_start()
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, messages: list[tuple[str, bytes]], *, timeout: float = 120.0,
                max_outstanding: int = 5000) -> float:
        """Publish (topic, payload) pairs at QoS 1; returns when the broker acked all (seconds taken)."""
        started = time.monotonic()
        base = self._acked
        for i, (topic, payload) in enumerate(messages):
            with self._lock:  # backpressure: never more than max_outstanding unacked in paho's queue
                while i - (self._acked - base) >= max_outstanding:
                    self._lock.wait(1.0)
            self._client.publish(topic, payload, qos=1)
        deadline = started + timeout
        with self._lock:
            while self._acked - base < len(messages):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(messages) - (self._acked - base)} readings not acked by the broker")
                self._lock.wait(0.5)
        return time.monotonic() - started


def interleaved(meters: list[Meter], per_meter: int, *, first_seq: int = 0) -> list[tuple[str, bytes]]:
    """Readings of every meter, round-robin by seq (what a real fleet's clock produces)."""
    return [(topics.meter_readings(m.meter_id), reading_payload(m, seq))
            for seq in range(first_seq, first_seq + per_meter) for m in meters]
