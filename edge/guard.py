"""Per-meter rate and byte limits: one abusive meter must never cost another meter a reading.

Every meter's messages and bytes pass two token buckets (sustained rate + burst). A meter that runs a
bucket dry is *cut off*: from then on its messages are acked without being stored (the flood drains
from the edge broker at the cost of a topic parse), counted per meter in the buffer's `meter_limits`
table with reason `rate_limited`, and the broker is asked to disable its account (Mosquitto's
dynamic-security plugin, `disableClient`), which disconnects it and refuses its reconnects until an
operator re-enables it. Honest meters publish one reading per interval (a catch-up after an outage
fits in the burst), so the defaults are far above what a meter needs and far below a flood.

Runs on the receiver's thread (paho's), before a message is queued for the writer: a cut-off
meter's QoS 0 messages never reach the writer's queue, so the agent's memory stays flat whatever
is thrown at it. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The meter id of a topic `meters/{meter_id}/readings`, without the protocol's full check (hot path).
PREFIX = "meters/"


@dataclass(frozen=True, slots=True)
class Limits:
    rate: float = 100.0
    """Messages per second, sustained."""
    burst: float = 10_000.0
    """Messages at once (a meter catching up after an outage)."""
    byte_rate: float = 1024 * 1024
    byte_burst: float = 8 * 1024 * 1024

    @property
    def enabled(self) -> bool:
        return self.rate > 0


@dataclass(slots=True)
class _Bucket:
    messages: float
    bytes: float
    at: float


def meter_of_topic(topic: str) -> str:
    """`meters/{id}/readings` → id; anything else → the whole topic (still one bucket per topic)."""
    if topic.startswith(PREFIX):
        end = topic.find("/", len(PREFIX))
        if end > len(PREFIX):
            return topic[len(PREFIX):end]
    return topic


class Guard:
    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic,
                 on_cut_off: Callable[[str, str], None] = lambda _meter, _why: None,
                 max_meters: int = 100_000) -> None:
        self.limits = limits
        self._clock = clock
        self._on_cut_off = on_cut_off
        self._buckets: dict[str, _Bucket] = {}
        self._max_meters = max_meters
        self._lock = threading.Lock()
        self.cut_off: dict[str, str] = {}
        """meter_id → why (one sentence), for meters cut off since the agent started."""

    def admit(self, topic: str, size: int) -> str | None:
        """None: the message goes on to the writer. Else the meter id it is charged to (cut off)."""
        if not self.limits.enabled:
            return None
        meter = meter_of_topic(topic)
        if meter in self.cut_off:
            return meter
        now = self._clock()
        lim = self.limits
        with self._lock:
            b = self._buckets.get(meter)
            if b is None:
                if len(self._buckets) >= self._max_meters:
                    self._buckets.clear()  # topics are ACL-bound to accounts: this is a huge fleet, not an attack
                b = self._buckets[meter] = _Bucket(lim.burst, lim.byte_burst, now)
            elapsed = max(0.0, now - b.at)
            b.at = now
            b.messages = min(lim.burst, b.messages + elapsed * lim.rate) - 1
            b.bytes = min(lim.byte_burst, b.bytes + elapsed * lim.byte_rate) - size
            if b.messages >= 0 and b.bytes >= 0:
                return None
            why = (f"more than {lim.burst:g} messages at once or {lim.rate:g}/s sustained"
                   if b.messages < 0 else
                   f"more than {lim.byte_burst:g} bytes at once or {lim.byte_rate:g} B/s sustained")
            self.cut_off[meter] = why
            del self._buckets[meter]
        self._on_cut_off(meter, why)
        return meter

    def readmit(self, meter: str) -> None:
        with self._lock:
            self.cut_off.pop(meter, None)
