"""Replay mode: every payload of the run is built and signed before it starts, then only published.

Real meters sign on their own processors; a simulator that signs 1,000 meters' readings on one core
measures its own signing as much as the pipeline. In replay mode the fleet calls each meter's own
interval job (`Meter.next_interval`, the live payload builder, so the bytes are the live bytes) for
every interval the run will publish, writes the new counters and all those messages to the state
store's outbox in one transaction (the write-ahead rule holds: a crash resends, never reuses a seq),
and keeps them in memory. The run then releases each meter's messages when the simulated clock
passes their interval end, exactly as live mode would produce them, and does no signing and no
SQLite write until it ends (acknowledged rows leave the outbox in one transaction after the drain).

Interval → wall time: the run signs the intervals that end at or before
`min(sim_start + duration × speed, now)`, the last instant live mode's clock may reach (it never
passes real time). Every pre-signed interval has therefore ended before it is published, so the
cloud never sees it as in the future, and consecutive seqs cover consecutive, disjoint intervals.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from simulator.faults import Fault
from simulator.meter import Meter, Outgoing
from simulator.publish import publish_head
from simulator.report import PresignReport
from simulator.state import StateStore

NEVER = float("inf")


class Presigned:
    """Each meter's pre-signed messages, by interval end, in publish order."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[int, list[Outgoing]]]] = {}

    def add(self, meter_id: str, end: int, items: list[Outgoing]) -> None:
        self._queues.setdefault(meter_id, deque()).append((end, items))

    def next_end(self, meter_id: str) -> float:
        """End of the meter's next unreleased interval (infinite once all are released)."""
        queue = self._queues.get(meter_id)
        return queue[0][0] if queue else NEVER

    def take(self, meter_id: str) -> list[Outgoing]:
        return self._queues[meter_id].popleft()[1]


def presign(meters: Iterable[Meter], store: StateStore, *, until: int, wall: int) -> tuple[Presigned, PresignReport]:
    """Run every meter's interval job up to `until` and persist the result; time it (wall and CPU)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    presigned = Presigned()
    meters = list(meters)
    items: list[Outgoing] = []
    for meter in meters:
        while meter.next_end <= until:
            end = meter.next_end
            out = meter.next_interval(wall)
            for item in out:  # the run then only adds a packet id (simulator.publish)
                item.head = publish_head(item.topic, len(item.payload))
            presigned.add(meter.meter_id, end, out)
            items.extend(out)
    store.commit(((m.meter_id, m.state) for m in meters), items)
    seconds = time.perf_counter() - started
    signs = sum(1 for item in items if item.fault is not Fault.REPLAY)
    return presigned, PresignReport(seconds=round(seconds, 3), cpu_s=round(time.process_time() - cpu_started, 3),
                                    messages=len(items), signs=signs,
                                    signs_per_s=round(signs / seconds, 1) if seconds > 0 else 0.0, until=until)
