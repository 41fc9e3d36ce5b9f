"""The MQTT shell of ingest: batches in from `$share/{group}/edge/+/batches`, acks out after commit.

Per batch: boundary checks (`boundary`, no database work) → parse → registry → verify signatures
(the CPU-bound part, in a worker thread, overlapping the previous batch's commit) → context read →
classify (rules) → one write statement → ack. A database step that fails for a non-transient
reason is isolated by splitting the batch (`store`); a transient one is retried (`dbsteps`).
More throughput comes from more consumer processes on the shared subscription, never from acking
early. The MQTT session is persistent (clean_session False, QoS 1), so batches queued while this
consumer was away are delivered when it returns; anything lost anyway is re-sent by the edge,
which keeps every reading until it sees an ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import asyncpg

from cloud.ingest.boundary import BadEnvelope, check_envelope
from cloud.ingest.commit import decide_and_write
from cloud.ingest.dbsteps import Abandoned, Database, Poison
from cloud.ingest.fairness import FairQueue
from cloud.ingest.metrics import IngestMetrics
from cloud.ingest.pipeline import Parsed, Plan, parse_items, verify_signatures
from cloud.ingest.registry import Registry
from cloud.ingest.rules import Limits
from cloud.ingest.store import record_bad_envelope, record_dead_letter
from cloud.settings import CloudSettings
from protocol import topics
from protocol.envelopes import Ack, AckItem, Batch, encode
from protocol.reasons import Reason
from runtime.backoff import Backoff, pause

log = logging.getLogger(__name__)

_BACKOFF_START, _BACKOFF_MAX = 0.5, 15.0
#: Ack size when neither the settings nor the broker (MQTT 5 CONNACK) give a limit.
DEFAULT_ACK_MAX_BYTES = 256 * 1024
_EVIDENCE_WINDOW_SECS = 3600.0
_SEEN_BAD_MAX = 4096


class CapabilityError(Exception):
    """The broker lacks a feature ingest depends on; the message is one sentence for the operator."""


def share_group(password: str | None) -> str:
    """The consumers' shared-subscription group. Mosquitto's ACL cannot stop a gateway from
    subscribing to `$share/<group>/edge/+/batches`, and a member of the group takes its share of
    everyone's batches; so the group name is derived from the consumers' broker password, which
    no gateway knows. Without a password (a dev broker) it is the documented `cloud`."""
    if not password:
        return "cloud"
    return "cloud-" + hashlib.sha256(b"gridtokenx/share-group/1\n" + password.encode()).hexdigest()[:24]


def split_ack(ack: Ack, max_bytes: int) -> list[Ack]:
    """`ack` as one or more acks of the same batch, each encoded within `max_bytes` (the edge
    applies each part by item; items an earlier part did not mention wait for the later one)."""
    if len(encode(ack)) <= max_bytes or len(ack.results) <= 1:
        return [ack]
    mid = len(ack.results) // 2
    return [*split_ack(Ack(ack.gateway_id, ack.batch_id, ack.results[:mid]), max_bytes),
            *split_ack(Ack(ack.gateway_id, ack.batch_id, ack.results[mid:]), max_bytes)]


class EvidenceQuota:
    """Bytes of rejected evidence each gateway may store per hour (fixed windows)."""

    def __init__(self, bytes_per_window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = bytes_per_window
        self._clock = clock
        self._used: dict[str, tuple[float, int]] = {}

    def admit(self, gateway_id: str, size: int) -> bool:
        now = self._clock()
        start, used = self._used.get(gateway_id, (now, 0))
        if now - start >= _EVIDENCE_WINDOW_SECS:
            start, used = now, 0
        if used + size > self.limit:
            self._used[gateway_id] = (start, used)
            return False
        self._used[gateway_id] = (start, used + size)
        return True


class IngestConsumer:
    def __init__(self, settings: CloudSettings, *, metrics: IngestMetrics,
                 clock: Callable[[], float] = time.time, after_commit: Callable[[int], None] | None = None) -> None:
        """`after_commit(n)` runs after the n-th commit, before its ack is published: the seam the
        crash-between-commit-and-ack test uses; production leaves it None."""
        self.settings = settings
        self.metrics = metrics
        self.limits = Limits.from_settings(settings.tokenization)
        self.registry = Registry()
        self._clock = clock
        self._stop = asyncio.Event()
        self.db = self._database(self._stop)
        metrics.db_up.set(1)
        self.evidence = EvidenceQuota(settings.ingest.evidence_quota_bytes)
        self.group = share_group(settings.broker_url.password)
        self.batches_filter = topics.shared_batches_filter(self.group)
        self.ack_max_bytes = settings.ingest.ack_max_bytes or DEFAULT_ACK_MAX_BYTES
        self._connected = False
        self._commits = 0
        self._seen_bad: dict[bytes, None] = {}
        """Hashes of recent bad envelopes (insertion-ordered, bounded): a flood of copies is counted, not logged."""
        self._after_commit = after_commit

    def _database(self, stop: asyncio.Event) -> Database:
        return Database(self.settings.database_url, deadline=self.settings.ingest.db_timeout_secs, stop=stop,
                        on_health=lambda up: self.metrics.db_up.set(1 if up else 0))

    def health(self) -> dict[str, Any]:
        problem = self.db.problem
        doc: dict[str, Any] = {
            "healthy": self._connected and problem is None, "component": "cloud-ingest",
            "mqtt_connected": self._connected, "database": "ok" if problem is None else "not answering",
            "meters_cached": len(self.registry), "batches_committed": self._commits}
        if problem is not None:
            doc["reason"] = f"the database is not answering: {problem}"
        elif not self._connected:
            doc["reason"] = "not connected to the cloud broker"
        return doc

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and acked first."""
        self._stop = stop
        self.db = self._database(stop)
        await self.db.open()
        try:
            await self.db.run("load the registry", self.registry.load)
            log.info("registry loaded: %d meters", len(self.registry))
            # Owned here rather than by a TaskGroup, so that errors reach the caller unwrapped.
            watcher = asyncio.create_task(self.db.watch())
            try:
                await self._consume(stop)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        except Abandoned as exc:
            log.warning("stopping while the database does not answer (%s); unacked batches will be re-sent",
                        exc.what)
        finally:
            await self.db.close()

    async def _consume(self, stop: asyncio.Event) -> None:
        url = self.settings.broker_url
        backoff = Backoff(_BACKOFF_START, _BACKOFF_MAX)
        probed = False
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    url.host, url.port, username=url.username, password=url.password,
                    identifier=self.settings.client_id, clean_session=False,
                    tls_params=self._tls_params(), queue_type=FairQueue,
                ) as client:
                    if not probed:
                        await self._probe_shared_subscription(client)
                        probed = True
                    await client.subscribe(self.batches_filter, qos=1)
                    self._connected = True
                    backoff.reset()
                    log.info("consuming %s on %s as %s", self.batches_filter.replace(self.group, "<group>"),
                             url, self.settings.client_id)
                    await self._loop(client, stop)
                    await self._leave(client)
            except Abandoned as exc:
                log.warning("stopping while the database does not answer (step: %s); the batches in hand "
                            "stay unacked and the edge re-sends them", exc.what)
                return
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection to %s failed or was lost (%s); reconnecting", url, exc)
            finally:
                self._connected = False
            if not stop.is_set():
                await pause(stop, backoff.next())

    async def _probe_shared_subscription(self, client: aiomqtt.Client) -> None:
        """Prove that a message published to a topic of our own comes back through a `$share`
        group; brokers that grant `$share` SUBSCRIBEs and then deliver nothing (NATS's and
        RabbitMQ's MQTT gateways) are refused with one sentence instead of consuming nothing."""
        topic = topics.probe(self.settings.client_id)
        shared = f"$share/{self.group}/{topic}"
        nonce = secrets.token_bytes(16)
        timeout = self.settings.ingest.probe_timeout_secs
        await client.subscribe(shared, qos=1)
        try:
            await client.publish(topic, nonce, qos=1)
            async with asyncio.timeout(timeout):
                async for message in client.messages:
                    if message.topic.value == topic and message.payload == nonce:
                        break
        except TimeoutError:
            raise CapabilityError(
                f"the broker at {self.settings.broker_url} accepted a shared subscription ($share/<group>/{topic}) "
                "but did "
                f"not deliver a probe through it within {timeout:g} s: it lacks MQTT shared subscriptions, "
                "which cloud ingest needs (use Mosquitto 2, EMQX or HiveMQ)") from None
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(shared)

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
        await client.unsubscribe(self.batches_filter)
        messages = aiter(client.messages)
        while len(client.messages) > 0:
            await self.handle(client, await anext(messages))
        log.info("left the shared subscription after draining; %d batches committed", self._commits)

    async def handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """One message start to end (used while draining)."""
        prepared = await self.prepare(message)
        if prepared is not None:
            await self.commit(client, prepared)

    async def prepare(self, message: aiomqtt.Message) -> Prepared | None:
        """Check the envelope at the boundary, parse the items, verify signatures; None for a bad
        envelope (counted, recorded once, never retried: without a trustworthy envelope there is
        nobody to ack)."""
        payload = message.payload
        raw = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
        checked = check_envelope(raw, message.topic.value, retained=bool(message.retain))
        if isinstance(checked, BadEnvelope):
            await self._bad_envelope(checked)
            return None
        return await self._prepare_batch(checked)

    async def _prepare_batch(self, batch: Batch) -> Prepared:
        started = time.perf_counter()
        parsed = parse_items(batch)
        meter_ids = {p.signed.reading.meter_id for p in parsed if p.signed is not None}
        try:
            await self.db.run(f"registry for batch {batch.batch_id}",
                              lambda conn: self._refresh_registry(conn, meter_ids))
        except Poison as exc:  # the registry is ours, not the gateway's: say so, verify with what we have
            log.error("registry refresh for batch %s failed: %s", batch.batch_id, exc)
        verified = await asyncio.to_thread(verify_signatures, parsed, self.registry.get)
        self.metrics.verify_seconds.observe(time.perf_counter() - started)
        return Prepared(batch, parsed, verified)

    async def _bad_envelope(self, bad: BadEnvelope) -> None:
        self.metrics.bad_envelopes.labels(reason=bad.reason.value).inc()
        if bad.sha256 in self._seen_bad:
            return  # counted; logged and recorded when first seen (a re-sent copy adds nothing)
        self._seen_bad[bad.sha256] = None
        if len(self._seen_bad) > _SEEN_BAD_MAX:
            del self._seen_bad[next(iter(self._seen_bad))]
        log.warning("bad batch envelope from gateway %s (%d bytes, sha256 %s): %s: %s", bad.gateway_id, bad.size,
                    bad.sha256.hex()[:16], bad.reason.value, bad.detail[:300])
        try:
            await self.db.run("record a bad envelope", lambda conn: record_bad_envelope(conn, bad))
        except Poison as exc:
            log.error("could not record the bad envelope %s: %s", bad.sha256.hex()[:16], exc)

    async def _refresh_registry(self, conn: asyncpg.Connection, meter_ids: set[str]) -> None:
        await self.registry.sync(conn)  # registry_version moved → refresh now (no cache window)
        await self.registry.ensure(conn, meter_ids)

    async def commit(self, client: aiomqtt.Client, prepared: Prepared) -> None:
        batch = prepared.batch
        results = await self.store(prepared)
        self._commits += 1
        if self._after_commit is not None:
            self._after_commit(self._commits)
        for part in split_ack(Ack(gateway_id=batch.gateway_id, batch_id=batch.batch_id, results=results),
                              self.ack_max_bytes):
            await client.publish(topics.acks(batch.gateway_id), encode(part), qos=1)
        self.metrics.batches.inc()

    async def store(self, prepared: Prepared) -> list[AckItem]:
        """Persist one batch; the ack results, one per item in item order. Poison (a non-transient
        database failure) is isolated by halving the batch until the items that fail are alone;
        those are set aside in ingest_dead_letters and acked as `unstorable`."""
        try:
            plan = await self.db.run(f"commit batch {prepared.batch.batch_id}",
                                     lambda conn: self.persist(conn, prepared))
        except Poison as exc:
            return await self._isolate(prepared.batch, exc)
        self._note_commit(plan)
        return plan.results()

    async def _isolate(self, batch: Batch, error: Poison) -> list[AckItem]:
        if len(batch.items) <= 1:
            kind = "item" if batch.items else "batch"
            raw = batch.items[0].payload if batch.items else encode(batch)
            log.error("batch %s of gateway %s: %s set aside after PostgreSQL refused it: %s", batch.batch_id,
                      batch.gateway_id, kind, error)
            self.metrics.dead_letters.labels(kind=kind).inc()
            try:
                await self.db.run("record a dead letter", lambda conn: record_dead_letter(
                    conn, kind=kind, detail=str(error), gateway_id=batch.gateway_id, batch_id=batch.batch_id,
                    raw=raw))
            except Poison as exc:
                log.error("could not record the dead letter of batch %s: %s", batch.batch_id, exc)
            self.metrics.rejected.labels(reason=Reason.UNSTORABLE.value).inc(len(batch.items))
            return [AckItem(i.meter_id, i.seq, "rejected", Reason.UNSTORABLE) for i in batch.items]
        mid = len(batch.items) // 2
        results: list[AckItem] = []
        for items in (batch.items[:mid], batch.items[mid:]):
            half = await self._prepare_batch(Batch(batch.gateway_id, batch.batch_id, batch.sent_at, items, batch.v))
            results.extend(await self.store(half))
        return results

    def _note_commit(self, plan: Plan) -> None:
        for meter_id, why in plan.quarantine.items():
            self.registry.mark(meter_id, "quarantined")
            log.warning("meter %s quarantined: %s", meter_id, why)
        self.metrics.record(plan)

    async def persist(self, conn: asyncpg.Connection, prepared: Prepared) -> Plan:
        started = time.perf_counter()
        gateway = prepared.batch.gateway_id
        plan, over = await decide_and_write(conn, prepared.batch, prepared.parsed, prepared.verified,
                                            self.registry.get, limits=self.limits, now=int(self._clock()),
                                            admit=lambda n: self.evidence.admit(gateway, n))
        if over:
            self.metrics.evidence_over_quota.labels(gateway_id=gateway).inc(over)
            log.warning("gateway %s is over its evidence quota: %d rejected payload(s) stored as length and "
                        "SHA-256 only", gateway, over)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        return plan


@dataclass(frozen=True, slots=True)
class Prepared:
    batch: Batch
    parsed: list[Parsed]
    verified: frozenset[int]
