"""The cloud side: batches from the buffer to `edge/{gateway_id}/batches`, application acks back.

aiomqtt (the forwarder's safety comes from application acks, not MQTT acks). A window caps the
batches in flight; each keeps its rows in memory until its Ack arrives, and is re-sent as the
SAME batch (same id, same rows) after `ack_timeout_s` or a reconnect. Rows in flight are never
selected again (claim() only takes pending rows): no ThingsBoard-style duplicates from prefetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import ssl
import time
import uuid
from dataclasses import dataclass

import aiomqtt
import msgspec

from edge.buffer import AckOutcome, Claimed
from edge.metrics import EdgeMetrics
from edge.settings import EdgeSettings
from edge.writer import Writer
from protocol import topics
from protocol.envelopes import Ack, Batch, BatchItem, decode_ack, encode
from runtime.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InFlight:
    batch_id: str
    items: list[BatchItem]
    first_sent: float
    """monotonic time of the first send (forward latency)."""
    deadline: float
    """monotonic time after which the batch is re-sent."""


class Forwarder:
    def __init__(self, settings: EdgeSettings, writer: Writer, metrics: EdgeMetrics) -> None:
        self._s = settings
        self._writer = writer
        self._m = metrics
        self._inflight: dict[str, InFlight] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self.connected = False
        self.last_ack_at: float | None = None
        """monotonic time of the last ack applied: /healthz reports its age."""
        self._batches_topic = topics.batches(settings.gateway_id)
        self._acks_topic = topics.acks(settings.gateway_id)

    # -- signals from elsewhere ---------------------------------------------------------------

    def wake(self) -> None:
        """New pending rows or an ack: re-check whether a batch can go (asyncio thread only)."""
        self._changed.set()

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def requeue_orphans(self) -> None:
        """Rows inflight in SQLite whose batch is not held here would wait for a restart: requeue them."""
        known = list(self._inflight)
        older_than = time.time() - 2 * self._s.ack_timeout_s
        n = await self._writer.call(lambda b: b.requeue_orphans(known, older_than))
        if n:
            log.error("requeued %d reading(s) left inflight by a batch the forwarder had lost (a bug)", n)
            self._changed.set()

    # -- connection loop ----------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        url = self._s.cloud_url
        tls_context = None
        if url.tls:
            tls_context = ssl.create_default_context(
                cafile=str(self._s.cloud_broker_ca) if self._s.cloud_broker_ca else None)
        return aiomqtt.Client(url.host, url.port, username=url.username, password=url.password,
                              identifier=self._s.mqtt_client_id, clean_session=False, keepalive=30,
                              timeout=10, tls_context=tls_context)

    async def run(self) -> None:
        """Until stop(): connect, forward, and on any broker error back off and reconnect."""
        backoff = Backoff(self._s.backoff_initial_s, self._s.backoff_max_s)
        while not self._stopping:
            try:
                async with self._client() as client:
                    await client.subscribe(self._acks_topic, qos=1)  # before the first send
                    self._set_connected(True)
                    backoff.reset()
                    log.info("connected to the cloud broker %s as %s", self._s.cloud_url,
                             self._s.cloud_url.username)
                    await self._session(client)
                    return
            except* (aiomqtt.MqttError, sqlite3.OperationalError) as group:
                # A full disk (SQLITE_FULL on a claim or an ack) pauses forwarding like a lost
                # connection: batches in memory are re-sent, rows left inflight are requeued.
                self._set_connected(False)
                delay = backoff.next()
                log.warning("forwarding paused (%s); retrying in %.1f s",
                            "; ".join(str(e) for e in group.exceptions), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_stop(), delay)
        self._set_connected(False)

    async def _wait_stop(self) -> None:
        while not self._stopping:
            self._changed.clear()
            await self._changed.wait()

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._m.cloud_connected.set(1 if up else 0)

    async def _session(self, client: aiomqtt.Client) -> None:
        # The ack reader runs first: when the connection drops its iterator raises at once, and the
        # TaskGroup cancels any publish still waiting for a PUBACK that will never come.
        async with asyncio.TaskGroup() as tg:
            acks = tg.create_task(self._receive_acks(client))
            # Batches in flight before a reconnect go again first, in order (same ids, same rows).
            for flight in sorted(self._inflight.values(), key=lambda f: f.first_sent):
                if flight.batch_id in self._inflight:
                    await self._publish(client, flight, resend=True)
            resends = tg.create_task(self._resend_due(client))
            await self._send_new(client)
            acks.cancel()
            resends.cancel()

    # -- sending ------------------------------------------------------------------------------

    async def _send_new(self, client: aiomqtt.Client) -> None:
        """Claim and send batches while the window has room; on stop, wait for the window to drain."""
        s = self._s
        while not self._stopping:
            self._changed.clear()
            if len(self._inflight) >= s.window or self._writer.buffer.counts.pending == 0:
                await self._changed.wait()
                continue
            if self._writer.buffer.counts.pending < s.batch_size:
                # Size or time, whichever first: give a partial batch batch_interval to fill up.
                await self._wait_for_fill(s.batch_size, s.batch_interval_ms / 1000)
                if self._stopping:
                    break
            flight = await self._claim(uuid.uuid4().hex)
            if flight is None:
                continue
            await self._publish(client, flight, resend=False)
        await self._drain()

    async def _claim(self, batch_id: str) -> InFlight | None:
        """Claim rows into a new batch and register it in memory, even if this task is cancelled
        meanwhile (a dropped connection): rows marked inflight in SQLite but unknown here would
        never be re-sent until the next restart."""
        size, timeout = self._s.batch_size, self._s.ack_timeout_s

        def adopt(done: asyncio.Future[list[Claimed]]) -> None:
            if done.cancelled() or done.exception() is not None or not done.result():
                return
            now = time.monotonic()
            self._inflight[batch_id] = InFlight(
                batch_id, [BatchItem(r.meter_id, r.seq, r.payload) for r in done.result()], now, now + timeout)
            self._m.batches_in_flight.set(len(self._inflight))

        claim = asyncio.ensure_future(self._writer.call(lambda b: b.claim(batch_id, size, time.time()), urgent=True))
        claim.add_done_callback(adopt)
        await asyncio.shield(claim)
        return self._inflight.get(batch_id)

    async def _wait_for_fill(self, size: int, interval: float) -> None:
        deadline = time.monotonic() + interval
        while not self._stopping and self._writer.buffer.counts.pending < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self._s.drain_timeout_s
        while self._inflight and (remaining := deadline - time.monotonic()) > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        if self._inflight:
            log.info("stopping with %d batch(es) unacked; their rows are re-sent on the next start",
                     len(self._inflight))

    async def _publish(self, client: aiomqtt.Client, flight: InFlight, *, resend: bool) -> None:
        batch = Batch(self._s.gateway_id, flight.batch_id, int(time.time()), flight.items)
        await client.publish(self._batches_topic, encode(batch), qos=1)
        flight.deadline = time.monotonic() + self._s.ack_timeout_s
        if resend:
            self._m.resent.inc(len(flight.items))
            await self._writer.call(lambda b: b.mark_resent(flight.batch_id, time.time()), urgent=True)
        else:
            self._m.forwarded.inc(len(flight.items))

    async def _resend_due(self, client: aiomqtt.Client) -> None:
        while True:
            now = time.monotonic()
            due = [f for f in self._inflight.values() if f.deadline <= now]
            for flight in sorted(due, key=lambda f: f.first_sent):
                if flight.batch_id in self._inflight:
                    log.info("no ack for batch %s within %.0f s; re-sending it", flight.batch_id,
                             self._s.ack_timeout_s)
                    await self._publish(client, flight, resend=True)
            next_due = min((f.deadline for f in self._inflight.values()), default=now + self._s.ack_timeout_s)
            await asyncio.sleep(max(0.05, next_due - time.monotonic()))

    # -- acks ---------------------------------------------------------------------------------

    async def _receive_acks(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                self._m.bad_acks.inc()
                continue
            try:
                ack = decode_ack(bytes(payload))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._m.bad_acks.inc()
                log.warning("undecodable ack on %s: %s", message.topic, exc)
                continue
            if ack.gateway_id != self._s.gateway_id:
                self._m.bad_acks.inc()
                log.warning("ack for gateway %r on our topic; ignored", ack.gateway_id)
                continue
            await self._apply(ack)

    async def _apply(self, ack: Ack) -> None:
        flight = self._inflight.pop(ack.batch_id, None)
        whole = (flight is not None and len(ack.results) == len(flight.items)
                 and all(r.status != "rejected" for r in ack.results)
                 and {(r.meter_id, r.seq) for r in ack.results} == {(i.meter_id, i.seq) for i in flight.items})
        # Shielded: once the batch is out of memory its ack must reach SQLite, even if the connection
        # drops (and this task is cancelled) while the writer applies it.
        outcome: AckOutcome = await asyncio.shield(asyncio.ensure_future(self._writer.call(
            lambda b: b.apply_ack(ack.batch_id, ack.results, time.time(), whole_batch_ok=whole),
            urgent=True)))
        self.last_ack_at = time.monotonic()
        if flight is not None:
            self._m.forward_latency.observe(time.monotonic() - flight.first_sent)
        self._m.batches_in_flight.set(len(self._inflight))
        self._m.acked.inc(outcome.deleted)
        for reason, n in outcome.rejected.items():
            self._m.rejected.labels(reason).inc(n)
            log.warning("cloud rejected %d reading(s) of batch %s: %s", n, ack.batch_id, reason)
        if outcome.requeued:
            log.warning("ack for batch %s left out %d reading(s); they go back to pending",
                        ack.batch_id, outcome.requeued)
        self._changed.set()
