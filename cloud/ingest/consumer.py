"""The MQTT shell of ingest: batches in from `$share/cloud/edge/+/batches`, acks out after commit.

One batch at a time per process: parse → registry → context read → classify (verify + rules, the
CPU-bound part) → one write statement → ack. More throughput comes from more consumer processes on
the shared subscription, never from acking early. The MQTT session is persistent (clean_session
False, QoS 1), so batches queued while this consumer was away are delivered when it returns;
anything lost anyway is re-sent by the edge, which keeps every reading until it sees an ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
import asyncpg
import msgspec

from cloud.db import create_pool
from cloud.ingest.metrics import IngestMetrics
from cloud.ingest.pipeline import Plan, classify, parse_items
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.ingest.store import fetch_context, write_plan
from cloud.settings import CloudSettings
from protocol import topics
from protocol.envelopes import Ack, Batch, decode_batch, encode
from protocol.errors import ProtocolError
from protocol.reasons import Reason

log = logging.getLogger(__name__)

#: Test-only: exit with status 137 right after the Nth commit, before its ack is published.
CRASH_AFTER_COMMIT_ENV = "GRIDTOKENX_TEST_CRASH_AFTER_COMMIT"
_BACKOFF_START, _BACKOFF_MAX = 0.5, 15.0


class IngestConsumer:
    def __init__(self, settings: CloudSettings, *, metrics: IngestMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = Limits.from_settings(settings.tokenization)
        self.registry = Registry()
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._connected = False
        self._commits = 0
        crash = os.environ.get(CRASH_AFTER_COMMIT_ENV)
        self._crash_after = int(crash) if crash else None

    def health(self) -> dict[str, Any]:
        return {"healthy": self._connected and self._pool is not None, "component": "cloud-ingest",
                "mqtt_connected": self._connected, "meters_cached": len(self.registry),
                "batches_committed": self._commits}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and acked first."""
        self._pool = await create_pool(self.settings.database_url, min_size=1, max_size=2)
        try:
            async with self._pool.acquire() as conn:
                await self.registry.load(conn)
            log.info("registry loaded: %d meters", len(self.registry))
            await self._consume(stop)
        finally:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _consume(self, stop: asyncio.Event) -> None:
        url = self.settings.broker_url
        backoff = _BACKOFF_START
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    url.host, url.port, username=url.username, password=url.password,
                    identifier=self.settings.client_id, clean_session=False,
                    tls_params=aiomqtt.TLSParameters(ca_certs=str(self.settings.broker_ca))
                    if url.tls and self.settings.broker_ca else None,
                ) as client:
                    await client.subscribe(topics.SHARED_BATCHES_FILTER, qos=1)
                    self._connected = True
                    backoff = _BACKOFF_START
                    log.info("consuming %s on %s as %s", topics.SHARED_BATCHES_FILTER, url,
                             self.settings.client_id)
                    await self._loop(client, stop)
                    await self._leave(client)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection to %s lost (%s); reconnecting in %.1f s", url, exc, backoff)
            finally:
                self._connected = False
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        messages = aiter(client.messages)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                get = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({get, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await get
                    return
                await self.handle(client, get.result())
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    async def _leave(self, client: aiomqtt.Client) -> None:
        """Drain: leave the shared group, then finish what the broker already handed us.

        Mosquitto keeps a persistent session in the `$share` group while it is offline and keeps
        queueing its share of batches there, so a consumer that stops on purpose unsubscribes
        first; a crashed one gets its queue back when it restarts with the same client id.
        """
        await client.unsubscribe(topics.SHARED_BATCHES_FILTER)
        messages = aiter(client.messages)
        while len(client.messages) > 0:
            await self.handle(client, await anext(messages))
        log.info("left %s after draining; %d batches committed", topics.SHARED_BATCHES_FILTER, self._commits)

    async def handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        payload = message.payload
        topic = message.topic.value
        try:
            if not isinstance(payload, bytes | bytearray):
                raise msgspec.DecodeError("payload is not bytes")
            batch = decode_batch(bytes(payload))
            if topics.gateway_of(topic) != batch.gateway_id:
                raise ProtocolError(Reason.TOPIC_MISMATCH,
                                    f"batch of gateway {batch.gateway_id!r} on topic {topic!r}")
        except (msgspec.DecodeError, msgspec.ValidationError, ProtocolError) as exc:
            # The ACL lets a gateway publish only on its own topic, so this is a bug or an attack at
            # that gateway; without a trustworthy envelope there is nobody to ack. Count and go on.
            self.metrics.bad_envelopes.inc()
            log.warning("bad batch envelope on %s (%d bytes): %s", topic, len(payload or b""), exc)
            return
        plan = await self._persist_with_retry(batch)
        self._commits += 1
        if self._crash_after is not None and self._commits >= self._crash_after:
            log.warning("%s=%d: exiting after commit, before the ack", CRASH_AFTER_COMMIT_ENV, self._crash_after)
            logging.shutdown()
            os._exit(137)
        ack = Ack(gateway_id=batch.gateway_id, batch_id=batch.batch_id, results=plan.results())
        await client.publish(topics.acks(batch.gateway_id), encode(ack), qos=1)
        self.metrics.record(plan)
        self.metrics.batches.inc()

    async def _persist_with_retry(self, batch: Batch) -> Plan:
        """Postgres being away is a dependency failure, not bad input: retry the same batch (the
        write is idempotent) with backoff; the edge's readings stay unacked meanwhile."""
        backoff = _BACKOFF_START
        while True:
            try:
                return await self.persist(batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("persisting batch %s failed (%s); retrying in %.1f s", batch.batch_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def persist(self, batch: Batch) -> Plan:
        assert self._pool is not None
        started = time.perf_counter()
        parsed = parse_items(batch)
        keys = [p.signed.key for p in parsed if p.signed is not None]
        async with self._pool.acquire() as conn:
            await self.registry.refresh_if_due(conn)
            await self.registry.ensure(conn, {k[0] for k in keys})
            db_started = time.perf_counter()
            context = await fetch_context(conn, keys)
            cpu_started = time.perf_counter()
            plan = classify(batch, parsed, context, self.registry.get, limits=self.limits,
                            now=int(self._clock()))
            write_started = time.perf_counter()
            await write_plan(conn, plan)
            done = time.perf_counter()
        for meter_id in plan.quarantine:
            self.registry.mark(meter_id, "quarantined")
            log.warning("meter %s quarantined: %s", meter_id, plan.quarantine[meter_id])
        self.metrics.verify_seconds.observe((db_started - started) + (write_started - cpu_started))
        self.metrics.commit_seconds.observe((cpu_started - db_started) + (done - write_started))
        return plan

