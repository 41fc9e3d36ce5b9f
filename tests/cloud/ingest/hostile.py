"""Support for the hostile-gateway tests: an honest gateway that publishes throughout an attack and
measures, per batch, the time from publication to its ack; and raw publishing as the attacker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt

from protocol import topics
from protocol.envelopes import Batch, decode_ack, encode
from tests.cloud.ingest.support import Gateway, Meter

HONEST = "honest-gw"
HOSTILE = "hostile-gw"


@dataclass
class Honest:
    """Publishes one single-reading batch every `every` seconds, each exactly once, and records the
    latency of its ack. Never re-sends: a batch the cloud does not ack within the test is a failure."""

    host: str
    port: int
    password: str
    meter: Meter
    every: float = 0.1
    published: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    _seq: int = 0
    _all_acked: asyncio.Event = field(default_factory=asyncio.Event)

    def p99(self) -> float:
        values = sorted(self.latency.values())
        return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("inf")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Honest]:
        stop = asyncio.Event()
        task = asyncio.create_task(self._run(stop))
        try:
            yield self
        finally:
            stop.set()
            await task

    async def _run(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(self.host, self.port, username=HONEST, password=self.password,
                                  identifier=f"{HONEST}-test", clean_session=True) as client:
            await client.subscribe(topics.acks(HONEST), qos=1)
            reader = asyncio.create_task(self._read(client))
            try:
                while not stop.is_set():
                    await self._publish(client)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.every)
                # Let the last batches' acks arrive (bounded: the assertions judge what is missing).
                self._all_acked.clear()
                if len(self.latency) < len(self.published):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._all_acked.wait(), 5)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _publish(self, client: aiomqtt.Client) -> None:
        self._seq += 1
        seq = self._seq
        batch = Batch(gateway_id=HONEST, batch_id=f"honest-{seq:06d}", sent_at=int(time.time()),
                      items=[self.meter.item(seq, 10, seq * 10)])
        self.published[batch.batch_id] = time.monotonic()
        await client.publish(topics.batches(HONEST), encode(batch), qos=1)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            ack = decode_ack(message.payload)
            sent = self.published.get(ack.batch_id)
            if sent is not None and ack.batch_id not in self.latency:
                self.latency[ack.batch_id] = time.monotonic() - sent
                self.statuses[ack.batch_id] = ",".join(r.status for r in ack.results)
                if len(self.latency) >= len(self.published):
                    self._all_acked.set()

    def assert_unharmed(self, *, min_batches: int = 10) -> None:
        """Every honest batch was committed and acked as accepted, p99 within 2 s of publication."""
        missing = sorted(set(self.published) - set(self.latency))
        assert not missing, f"{len(missing)} of {len(self.published)} honest batches never acked: {missing[:5]}"
        assert len(self.published) >= min_batches, f"only {len(self.published)} honest batches were published"
        assert set(self.statuses.values()) == {"accepted"}, self.statuses
        assert self.p99() <= 2.0, f"honest p99 ack latency {self.p99():.2f} s > 2 s"


async def publish_raw(host: str, port: int, password: str, payloads: list[bytes], *, user: str = HOSTILE,
                      retain: bool = False, topic: str | None = None) -> None:
    # A short timeout: a broker that refuses a publish disconnects instead of acknowledging it.
    async with aiomqtt.Client(host, port, username=user, password=password, identifier=f"{user}-raw",
                              clean_session=True, timeout=3) as client:
        for payload in payloads:
            await client.publish(topic or topics.batches(user), payload, qos=1, retain=retain)


async def warm_up(host: str, port: int, password: str, meter: Meter, seq: int) -> None:
    """Deliver one honest batch, re-sending until acked: the consumer is (back) on the broker."""
    gw = Gateway(host, port, HONEST, password)
    await gw.deliver([gw.batch(f"warm-{seq}", [meter.item(seq, 10, seq * 10)])], resend_after=1, timeout=30)
