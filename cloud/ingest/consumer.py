"""The MQTT shell of ingest: batches in from `$share/cloud/edge/+/batches`, acks out after commit.

Per batch: parse → registry → verify signatures (the CPU-bound part, in a worker thread, overlapping
the previous batch's commit) → context read → classify (rules) → one write statement → ack.
More throughput comes from more consumer processes on the shared subscription, never from acking
early. The MQTT session is persistent (clean_session False, QoS 1), so batches queued while this
consumer was away are delivered when it returns; anything lost anyway is re-sent by the edge,
which keeps every reading until it sees an ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt
import asyncpg
import msgspec

from cloud.db import create_pool
from cloud.ingest.metrics import IngestMetrics
from cloud.ingest.pipeline import Parsed, Plan, classify, parse_items, verify_signatures
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.ingest.store import fetch_context, lock_meters, write_plan
from cloud.settings import CloudSettings
from protocol import topics
from protocol.envelopes import Ack, Batch, decode_batch, encode
from protocol.errors import ProtocolError
from protocol.reasons import Reason

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Test-only: exit with status 137 right after the Nth commit, before its ack is published.
CRASH_AFTER_COMMIT_ENV = "GRIDTOKENX_TEST_CRASH_AFTER_COMMIT"
_BACKOFF_START, _BACKOFF_MAX = 0.5, 15.0
#: A dependency failure (retried), as opposed to a bug. InternalClientError is what asyncpg raises
#: on a connection whose server backend was terminated mid-statement.
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


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
        self._stop = asyncio.Event()
        crash = os.environ.get(CRASH_AFTER_COMMIT_ENV)
        self._crash_after = int(crash) if crash else None

    def health(self) -> dict[str, Any]:
        return {"healthy": self._connected and self._pool is not None, "component": "cloud-ingest",
                "mqtt_connected": self._connected, "meters_cached": len(self.registry),
                "batches_committed": self._commits}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and acked first."""
        self._stop = stop
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
                    tls_params=self._tls_params(),
                ) as client:
                    await client.subscribe(topics.SHARED_BATCHES_FILTER, qos=1)
                    self._connected = True
                    backoff = _BACKOFF_START
                    log.info("consuming %s on %s as %s", topics.SHARED_BATCHES_FILTER, url,
                             self.settings.client_id)
                    await self._loop(client, stop)
                    await self._leave(client)
            except Abandoned as exc:
                log.warning("stopping without committing batch %s (the database is unreachable); "
                            "the edge will re-send it", exc.batch_id)
                return
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection to %s failed or was lost (%s); reconnecting in %.1f s", url, exc, backoff)
            finally:
                self._connected = False
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _tls_params(self) -> aiomqtt.TLSParameters | None:
        """mqtts:// uses the CA file when one is configured, else the system's trust store."""
        if not self.settings.broker_url.tls:
            return None
        ca = self.settings.broker_ca
        return aiomqtt.TLSParameters(ca_certs=str(ca) if ca else None)

    async def _loop(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        """Two-stage pipeline: batch N+1 is parsed and verified (worker thread) while batch N
        commits and is acked; commits stay in arrival order, one at a time."""
        messages = aiter(client.messages)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            async with asyncio.TaskGroup() as tasks:
                committing: asyncio.Task[None] | None = None
                while True:
                    get = asyncio.ensure_future(anext(messages))
                    done, _ = await asyncio.wait({get, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await get
                        return  # the TaskGroup waits for the commit in hand
                    prepared = await self.prepare(get.result())
                    if committing is not None:
                        await committing
                    committing = tasks.create_task(self.commit(client, prepared)) if prepared else None
        except* (aiomqtt.MqttError, Abandoned) as group:
            # Surface these as themselves, so that `_consume` reconnects or stops.
            raise group.exceptions[0] from None
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
        """One message start to end (used while draining)."""
        prepared = await self.prepare(message)
        if prepared is not None:
            await self.commit(client, prepared)

    async def prepare(self, message: aiomqtt.Message) -> Prepared | None:
        """Decode the envelope, parse the items, verify signatures; None for a bad envelope."""
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
            return None
        started = time.perf_counter()
        parsed = parse_items(batch)
        meter_ids = {p.signed.reading.meter_id for p in parsed if p.signed is not None}
        await self._with_db_retry(batch, lambda conn: self._refresh_registry(conn, meter_ids))
        verified = await asyncio.to_thread(verify_signatures, parsed, self.registry.get)
        self.metrics.verify_seconds.observe(time.perf_counter() - started)
        return Prepared(batch, parsed, verified)

    async def _refresh_registry(self, conn: asyncpg.Connection, meter_ids: set[str]) -> None:
        await self.registry.sync(conn)  # registry_version moved → refresh now (no cache window)
        await self.registry.ensure(conn, meter_ids)

    async def commit(self, client: aiomqtt.Client, prepared: Prepared) -> None:
        batch = prepared.batch
        plan = await self._with_db_retry(batch, lambda conn: self.persist(conn, prepared))
        for meter_id, why in plan.quarantine.items():
            self.registry.mark(meter_id, "quarantined")
            log.warning("meter %s quarantined: %s", meter_id, why)
        self._commits += 1
        if self._crash_after is not None and self._commits >= self._crash_after:
            log.warning("%s=%d: exiting after commit, before the ack", CRASH_AFTER_COMMIT_ENV, self._crash_after)
            logging.shutdown()
            os._exit(137)
        ack = Ack(gateway_id=batch.gateway_id, batch_id=batch.batch_id, results=plan.results())
        await client.publish(topics.acks(batch.gateway_id), encode(ack), qos=1)
        self.metrics.record(plan)
        self.metrics.batches.inc()

    async def _with_db_retry(self, batch: Batch, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Postgres being away is a dependency failure, not bad input: retry the same step (every
        write is idempotent) with backoff; the edge's readings stay unacked meanwhile."""
        assert self._pool is not None
        backoff = _BACKOFF_START
        while True:
            try:
                async with self._pool.acquire() as conn:
                    try:
                        return await work(conn)
                    except _DB_ERRORS:
                        # Never hand a connection that failed mid-protocol back to the pool.
                        conn.terminate()
                        raise
            except _DB_ERRORS as exc:
                if self._stop.is_set():
                    raise Abandoned(batch.batch_id) from exc
                log.error("database step for batch %s failed (%s); retrying in %.1f s", batch.batch_id, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def persist(self, conn: asyncpg.Connection, prepared: Prepared) -> Plan:
        started = time.perf_counter()
        keys = [p.signed.key for p in prepared.parsed if p.signed is not None]
        async with conn.transaction():  # per-meter locks from the context read to the commit
            await lock_meters(conn, sorted({k[0] for k in keys}))
            context = await fetch_context(conn, keys)
            plan = classify(prepared.batch, prepared.parsed, prepared.verified, context, self.registry.get,
                            limits=self.limits, now=int(self._clock()))
            await write_plan(conn, plan)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        return plan


class Abandoned(Exception):
    """Stopping while the database is unreachable: the batch is left unacked for the edge to re-send."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(batch_id)
        self.batch_id = batch_id


@dataclass(frozen=True, slots=True)
class Prepared:
    batch: Batch
    parsed: list[Parsed]
    verified: frozenset[int]
