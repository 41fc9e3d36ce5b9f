"""The edge agent process: receiver → writer (SQLite) → forwarder, plus /metrics, /healthz and housekeeping.

Shutdown (SIGTERM/SIGINT) drains in this order: stop taking messages; wait until every message
already taken is committed and acked; disconnect from the edge broker; give batches in flight
`drain_timeout_s` to be acked; close the buffer. Nothing is lost at any step: what was not
acked stays with the edge broker, what was not cloud-acked stays in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import Any

from edge.buffer import Buffer, Quota
from edge.forwarder import Forwarder
from edge.guard import Guard, Limits
from edge.metrics import EdgeMetrics
from edge.receiver import Receiver
from edge.settings import EdgeSettings
from edge.writer import Writer
from protocol.meters_csv import read_public_keys
from runtime import sdnotify
from runtime.observability import ObservabilityServer

log = logging.getLogger("edge.agent")

HOUSEKEEPING_S = 1.0
EXPIRE_EVERY_S = 10.0
RESYNC_EVERY_S = 60.0


async def run_agent(settings: EdgeSettings, stopping: asyncio.Event) -> int:
    """Run until `stopping` is set (the runner sets it on SIGTERM/SIGINT); returns the exit code."""
    keys = read_public_keys(settings.meter_keys) if settings.meter_keys else None
    buffer = Buffer.open(settings.buffer, gateway_id=settings.gateway_id,
                         quota=Quota(settings.max_rows, settings.max_bytes, settings.quota_policy,
                                     settings.max_evidence_bytes),
                         ttl_seconds=settings.ttl_seconds, synchronous=settings.synchronous)
    metrics = EdgeMetrics()
    metrics.watch_buffer(lambda: buffer.counts, lambda: buffer.oldest_pending_at)
    loop = asyncio.get_running_loop()
    failed: list[BaseException] = []

    writer = Writer(buffer, metrics=metrics, keys=keys, commit_max=settings.commit_max,
                    linger_s=settings.commit_linger_ms / 1000)
    forwarder = Forwarder(settings, writer, metrics)
    receiver = Receiver(settings.edge_url, client_id=settings.mqtt_client_id, sink=writer.submit,
                        ca_file=str(settings.edge_broker_ca) if settings.edge_broker_ca else None,
                        on_connection=lambda up: metrics.edge_connected.set(1 if up else 0))
    writer.ack_all = receiver.ack_all

    def cut_off(meter_id: str, why: str) -> None:
        metrics.meters_cut_off.inc()
        receiver.disable_meter(meter_id, why)

    writer.guard = Guard(Limits(settings.meter_rate, settings.meter_burst, settings.meter_byte_rate,
                                settings.meter_byte_burst), on_cut_off=cut_off)

    def stored() -> None:
        loop.call_soon_threadsafe(forwarder.wake)

    writer.on_stored = stored

    def writer_failed(exc: BaseException) -> None:
        failed.append(exc)
        loop.call_soon_threadsafe(stopping.set)

    writer.on_failure = writer_failed
    writer.on_disk_full = lambda full: metrics.disk_full.set(1 if full else 0)
    metrics.clock_steps.set_function(lambda: buffer.clock_steps)

    def health() -> dict[str, Any]:
        # Healthy = meters' readings are being taken and committed. A cloud outage is the agent's job
        # (store and forward), so it shows in the ages and connection flags, not as 503.
        c = buffer.counts
        oldest = buffer.oldest_pending_at
        last_ack = forwarder.last_ack_at
        return {"healthy": writer.alive and receiver.connected, "edge_connected": receiver.connected,
                "cloud_connected": forwarder.connected, "writer_alive": writer.alive,
                "oldest_pending_age_s": round(time.time() - oldest, 1) if oldest else None,
                "last_cloud_ack_age_s": round(time.monotonic() - last_ack, 1) if last_ack else None,
                "disk_full": writer.disk_full, "pending": c.pending, "inflight": c.inflight, "rejected": c.rejected,
                "batches_in_flight": forwarder.in_flight, "gateway_id": settings.gateway_id}

    server = ObservabilityServer(host=settings.metrics_host, port=settings.metrics_port, health=health)
    await server.start()
    log.info("metrics on http://%s:%d/metrics (healthz on /healthz)", settings.metrics_host, server.port,
             extra={"metrics_port": server.port})
    log.info("edge agent %s: buffer %s (%d pending, %d rejected), quota %d rows / %d bytes (%s), "
             "synchronous %s", settings.gateway_id, settings.buffer, buffer.counts.pending,
             buffer.counts.rejected, settings.max_rows, settings.max_bytes, settings.quota_policy,
             settings.synchronous.upper())
    writer.start()
    receiver.start()
    try:
        async with asyncio.TaskGroup() as tg:
            forwarding = tg.create_task(forwarder.run())
            chores = tg.create_task(_housekeeping(writer, forwarder, stopping, settings.ttl_seconds))
            tg.create_task(sdnotify.serve(lambda: writer.alive, stopping))  # systemd Type=notify + watchdog
            await stopping.wait()
            log.info("stopping: draining received messages and batches in flight")
            receiver.pause()
            if not failed:
                await writer.barrier()  # every message taken so far is committed and acked
            receiver.stop()
            forwarder.stop()
            await forwarding
            chores.cancel()
    except* RuntimeError:
        if not failed:
            raise
        # The writer failed and said why once; the forwarder's calls into it fail after that.
    finally:
        receiver.stop()
        writer.stop()
        await server.stop()
        with contextlib.suppress(Exception):
            buffer.close()
    if failed:
        return 1
    log.info("stopped cleanly")
    return 0


async def _housekeeping(writer: Writer, forwarder: Forwarder, stopping: asyncio.Event,
                        ttl_seconds: float) -> None:
    """Every second: the oldest pending age, and a recount when the inspector changed the buffer
    (then the forwarder is woken, so requeued rows flow even when no reading arrives). TTL every
    10 s (sooner for short TTLs); every minute a recount, batch-history pruning, and the safety net
    for rows in flight in a batch the forwarder no longer holds."""
    expire_every = min(EXPIRE_EVERY_S, max(HOUSEKEEPING_S, ttl_seconds / 4))
    last_expire = last_resync = time.monotonic()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HOUSEKEEPING_S)
        if stopping.is_set():
            return
        try:
            await _chores(writer, forwarder)
        except sqlite3.OperationalError as exc:  # a full disk: the writer says so; try again next second
            log.debug("housekeeping skipped: %s", exc)
            continue
        now = time.monotonic()
        if now - last_expire >= expire_every:
            last_expire = now
            with contextlib.suppress(sqlite3.OperationalError):
                drops = await writer.call(lambda b: b.expire(time.time()))
                if drops:
                    writer.account_drops(drops)
                await writer.call(lambda b: b.expire_evidence(time.time()))
                writer.metrics.expire_runs.inc()
        if now - last_resync >= RESYNC_EVERY_S:
            last_resync = now
            with contextlib.suppress(sqlite3.OperationalError):
                await writer.call(lambda b: (b.resync(), b.prune_batches(time.time()), b.keep_reserve()))
                await forwarder.requeue_orphans()


async def _chores(writer: Writer, forwarder: Forwarder) -> None:
    if await writer.call(lambda b: b.changed_elsewhere()):
        counts = await writer.call(lambda b: b.resync())
        log.info("the buffer was changed by another process (inspector?): now %d pending, %d rejected",
                 counts.pending, counts.rejected)
        forwarder.wake()
    await writer.call(lambda b: b.refresh_oldest())
    await writer.call(lambda _b: writer.flush_limited())  # counts of cut-off meters' QoS 0 messages
