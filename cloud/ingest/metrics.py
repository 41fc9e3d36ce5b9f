"""Prometheus series of the ingest consumer (names fixed by docs/INTERFACES.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cloud.ingest.pipeline import Plan
from protocol.reasons import READING_REASONS


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("gridtokenx_cloud_readings_received", "Batch items received", registry=r)
        self.accepted = Counter("gridtokenx_cloud_readings_accepted", "Readings stored in meter_readings",
                                registry=r)
        self.duplicate = Counter("gridtokenx_cloud_readings_duplicate",
                                 "Items whose identical bytes were already stored", registry=r)
        self.rejected = Counter("gridtokenx_cloud_readings_rejected", "Items rejected, by reason code",
                                ["reason"], registry=r)
        self.bad_envelopes = Counter("gridtokenx_cloud_bad_envelopes",
                                     "Batch messages that were not a valid envelope, by reason code", ["reason"],
                                     registry=r)
        self.dead_letters = Counter("gridtokenx_cloud_dead_letters",
                                    "Batches or items set aside because PostgreSQL refused them (not transient)",
                                    ["kind"], registry=r)
        self.evidence_over_quota = Counter(
            "gridtokenx_cloud_evidence_over_quota",
            "Rejected payloads stored without their bytes: the gateway's evidence quota was used up",
            ["gateway_id"], registry=r)
        self.db_up = Gauge("gridtokenx_cloud_db_up", "1 while the database answers within its deadline", registry=r)
        self.batches = Counter("gridtokenx_cloud_batches", "Batches committed and acknowledged", registry=r)
        self.commit_seconds = Histogram(
            "gridtokenx_cloud_batch_commit_seconds", "Time to persist one batch (context read + write)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.verify_seconds = Histogram(
            "gridtokenx_cloud_verify_seconds", "CPU time to parse, verify and validate one batch",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=r)
        for reason in sorted(READING_REASONS):
            self.rejected.labels(reason=reason.value)

    def record(self, plan: Plan) -> None:
        self.received.inc(len(plan.batch.items))
        self.accepted.inc(len(plan.accepted))
        self.duplicate.inc(len(plan.duplicates))
        for row in plan.rejected:
            self.rejected.labels(reason=row.reason.value).inc()
