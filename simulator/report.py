"""What a fleet run did: counters while it runs (Prometheus too), and the final `FleetReport`.

The report is what tests and benchmarks compare against the edge and the cloud: per-meter totals
of good readings the broker acknowledged, and every injected fault with the reason the system is
expected to give and the (meter_id, seq) it affects.
"""

from __future__ import annotations

import random
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

import msgspec
from prometheus_client import Counter

from simulator.faults import Fault, expected_reason
from simulator.meter import Outgoing

PUBLISHED = Counter("gridtokenx_sim_readings_published_total",
                    "Messages (readings and injected faults) published by the simulator")
ACKED = Counter("gridtokenx_sim_readings_acked_total", "Messages the broker acknowledged (PUBACK)")
ERRORS = Counter("gridtokenx_sim_publish_errors_total", "Publish and connection errors", ["kind"])
INJECTED = Counter("gridtokenx_sim_injected_total", "Faulty messages injected", ["fault"])

#: Latency samples kept for percentiles (reservoir sampling beyond this).
_RESERVOIR = 200_000


class Percentiles(msgspec.Struct, frozen=True):
    p50: float
    p95: float
    p99: float
    max: float


class FaultSummary(msgspec.Struct):
    count: int
    expected: str
    """The protocol Reason value the edge/cloud should give, `duplicate`, or `denied` (broker ACL)."""
    affected: list[tuple[str, int]]


class MeterTotals(msgspec.Struct):
    """Good readings of one meter that the broker acknowledged in this run."""

    readings: int = 0
    export_wh: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_register_wh: int | None = None


class PresignReport(msgspec.Struct, kw_only=True):
    """Replay mode's preparation, before the run: kept out of the run's figures."""

    seconds: float
    """Wall time to build, sign and persist (outbox) every payload of the run."""
    cpu_s: float
    """Process CPU time (user + system) of that phase."""
    messages: int
    signs: int
    """Ed25519 signatures made (a replay fault re-sends signed bytes without signing)."""
    signs_per_s: float
    until: int
    """Every interval ending at or before this instant (UTC seconds) was signed."""


class FleetReport(msgspec.Struct, kw_only=True):
    meters: int
    connections: int
    format: str
    interval_s: int
    speed: float
    elapsed_s: float
    sim_start: int
    sim_end: int
    generated: int
    """Messages produced (good readings + faults), including those resent from a previous run."""
    published: int
    """Publish calls handed to the MQTT client (a resend after a reconnect counts again)."""
    acked: int
    pending: int
    """Messages still unacknowledged at the end: kept in the state outbox for the next run."""
    dropped: int
    """Messages dropped because a meter's offline buffer was full (oldest first)."""
    errors: dict[str, int]
    rate: float
    """Acknowledged messages per second, from the first publish to the last PUBACK."""
    latency_ms: Percentiles
    """Publish → PUBACK latency."""
    faults: dict[str, FaultSummary]
    per_meter: dict[str, MeterTotals]
    mode: str = "live"
    """live (each reading signed as its interval ends) or replay (signed before the run)."""
    presign: PresignReport | None = None
    """Replay mode only: the cost of signing before the run, not included in `rate` or `elapsed_s`."""


@dataclass
class Stats:
    multiplexed: bool = False
    started: float = field(default_factory=time.monotonic)
    generated: int = 0
    published: int = 0
    acked: int = 0
    dropped: int = 0
    errors: Tally[str] = field(default_factory=Tally)
    faults: dict[Fault, list[tuple[str, int]]] = field(default_factory=dict)
    per_meter: dict[str, MeterTotals] = field(default_factory=dict)
    first_sent: float | None = None
    last_ack: float | None = None
    _latency: list[float] = field(default_factory=list)
    _recent: list[float] = field(default_factory=list)
    _samples: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def generated_items(self, items: list[Outgoing]) -> None:
        self.generated += len(items)
        for item in items:
            if item.fault is not None:
                self.faults.setdefault(item.fault, []).append((item.meter_id, item.seq))
                INJECTED.labels(item.fault.value).inc()

    def sent(self, count: int = 1) -> None:
        if self.first_sent is None:
            self.first_sent = time.monotonic()
        self.published += count
        PUBLISHED.inc(count)

    def acked_item(self, item: Outgoing, latency_s: float) -> None:
        self.acked += 1
        self.last_ack = time.monotonic()
        ACKED.inc()
        self._sample(latency_s * 1000)
        if item.fault is None:
            totals = self.per_meter.setdefault(item.meter_id, MeterTotals())
            totals.readings += 1
            totals.export_wh += item.export_wh
            if totals.first_seq is None or item.seq < totals.first_seq:
                totals.first_seq = item.seq
            if totals.last_seq is None or item.seq > totals.last_seq:
                totals.last_seq, totals.last_register_wh = item.seq, item.register_wh

    def error(self, kind: str, count: int = 1) -> None:
        self.errors[kind] += count
        ERRORS.labels(kind).inc(count)

    def _sample(self, ms: float) -> None:
        self._samples += 1
        if len(self._recent) < _RESERVOIR:
            self._recent.append(ms)
        if len(self._latency) < _RESERVOIR:
            self._latency.append(ms)
        else:
            slot = self._rng.randrange(self._samples)
            if slot < _RESERVOIR:
                self._latency[slot] = ms

    def percentiles(self) -> Percentiles:
        return _percentiles(self._latency)

    def recent_percentiles(self) -> Percentiles:
        """Latency since the previous call: what the live view shows each second."""
        recent, self._recent = self._recent, []
        return _percentiles(recent)

    def rate(self) -> float:
        if self.first_sent is None or self.last_ack is None or self.last_ack <= self.first_sent:
            return 0.0
        return round(self.acked / (self.last_ack - self.first_sent), 1)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fault_summaries(self) -> dict[str, FaultSummary]:
        return {f.value: FaultSummary(len(keys), expected_reason(f, multiplexed=self.multiplexed), keys)
                for f, keys in sorted(self.faults.items())}


def _percentiles(samples: list[float]) -> Percentiles:
    data = sorted(samples)
    if not data:
        return Percentiles(0.0, 0.0, 0.0, 0.0)

    def at(q: float) -> float:
        return round(data[min(len(data) - 1, int(q * len(data)))], 3)

    return Percentiles(at(0.50), at(0.95), at(0.99), round(data[-1], 3))
