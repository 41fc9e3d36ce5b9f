"""Prometheus metrics of the edge agent; names are the contract in docs/INTERFACES.md."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from edge.buffer import Counts
from protocol.reasons import Reason


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        p = "gridtokenx_edge_"
        self.received = Counter(p + "received", "Messages taken from the edge broker (all, before screening)",
                                registry=registry)
        self.stored = Counter(p + "stored", "Readings newly stored in the buffer", registry=registry)
        self.duplicates = Counter(p + "duplicates", "Re-deliveries of a reading already buffered (stored once)",
                                  registry=registry)
        self.forwarded = Counter(p + "forwarded", "Readings sent to the cloud (first send of each batch)",
                                 registry=registry)
        self.resent = Counter(p + "resent", "Readings re-sent after an ack timeout or a reconnect",
                              registry=registry)
        self.acked = Counter(p + "acked", "Readings the cloud acked as accepted or duplicate (deleted)",
                             registry=registry)
        self.rejected = Counter(p + "rejected", "Readings the cloud rejected (kept with the reason)",
                                ["reason"], registry=registry)
        self.quarantined = Counter(p + "quarantined", "Messages quarantined at the edge, never forwarded",
                                   ["reason"], registry=registry)
        self.dropped = Counter(p + "dropped", "Readings removed without a cloud ack (quota, TTL)", ["reason"],
                               registry=registry)
        self.meter_limited = Counter(p + "meter_limited", "Messages of meters cut off by the per-meter limits "
                                     "(acked, not stored)", ["reason"], registry=registry)
        self.meter_limited_bytes = Counter(p + "meter_limited_bytes", "Bytes of meters cut off by the per-meter "
                                           "limits (acked, not stored)", registry=registry)
        self.meters_cut_off = Gauge(p + "meters_cut_off", "Meters cut off by the per-meter limits since the "
                                    "agent started", registry=registry)
        self.evidence_evicted = Counter(p + "evidence_evicted", "Quarantined payloads and rejected readings removed "
                                        "by the evidence quota (oldest first)", registry=registry)
        self.clock_steps = Gauge(p + "clock_steps", "Wall-clock steps noticed since the agent started (stored "
                                 "receive times were shifted by them)", registry=registry)
        self.expire_runs = Counter(p + "expire_runs", "TTL passes run by the agent", registry=registry)
        self.disk_full = Gauge(p + "disk_full", "1 while the buffer's disk is full (nothing is stored or acked; "
                               "the broker keeps the readings)", registry=registry)
        for reason in (Reason.QUOTA_DROPPED, Reason.EXPIRED):  # exported at 0, so a first burst is an increase
            self.dropped.labels(reason.value)
        self.bad_acks = Counter(p + "bad_acks", "Ack envelopes that could not be decoded or were not ours",
                                registry=registry)
        self.buffer_rows = Gauge(p + "buffer_rows", "Rows in the buffer by state", ["state"], registry=registry)
        self.buffer_bytes = Gauge(p + "buffer_bytes", "Payload bytes in the buffer (all states)",
                                  registry=registry)
        self.oldest_pending_age = Gauge(p + "oldest_pending_age_seconds", "Age of the oldest pending reading",
                                        registry=registry)
        self.batches_in_flight = Gauge(p + "batches_in_flight", "Batches sent and not yet acked",
                                       registry=registry)
        self.cloud_connected = Gauge(p + "cloud_connected", "1 while connected to the cloud broker",
                                     registry=registry)
        self.edge_connected = Gauge(p + "edge_connected", "1 while connected to the edge broker",
                                    registry=registry)
        self.forward_latency = Histogram(
            p + "forward_latency_seconds", "Batch first send → application ack",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=registry)
        self.commit_seconds = Histogram(
            p + "commit_seconds", "One group commit of received messages",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=registry)

    def watch_buffer(self, counts: Callable[[], Counts], oldest: Callable[[], float | None]) -> None:
        """Gauges read the writer's in-memory counts at scrape time (plain ints: no lock needed)."""
        self.buffer_rows.labels("pending").set_function(lambda: counts().pending)
        self.buffer_rows.labels("inflight").set_function(lambda: counts().inflight)
        self.buffer_rows.labels("rejected").set_function(lambda: counts().rejected)
        self.buffer_bytes.set_function(lambda: counts().backlog_bytes + counts().rejected_bytes)

        def age() -> float:
            at = oldest()
            return max(0.0, time.time() - at) if at is not None else 0.0

        self.oldest_pending_age.set_function(age)
