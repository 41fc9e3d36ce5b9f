"""The forwarder's calls jump the writer's queue (issue 20): with a burst of readings queued, a claim
runs before the next group is stored instead of behind the whole burst; `barrier()` stays in order."""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from edge.buffer import Buffer, Quota
from edge.metrics import EdgeMetrics
from edge.writer import Writer
from gridtokenx.harness.standin import make_meters, reading_payload

BURST = 3000
COMMIT_MAX = 200


async def test_an_urgent_call_runs_before_the_queued_burst_and_a_barrier_after_it(tmp_path: Path) -> None:
    buf = Buffer.open(tmp_path / "b.db", gateway_id="gw", quota=Quota(10**6, 10**9, "drop_oldest"))
    writer = Writer(buf, metrics=EdgeMetrics(CollectorRegistry()), keys=None, commit_max=COMMIT_MAX)
    writer.start()
    try:
        held = threading.Event()
        blocker = writer.call_soon(lambda _b: held.wait(30))  # the writer is busy: the burst queues up
        (meter,) = make_meters(1)
        topic = f"meters/{meter.meter_id}/readings"
        for seq in range(BURST):
            writer.submit(topic, reading_payload(meter, seq), seq + 1, 1, 0)
        in_order = writer.call_soon(lambda b: b.counts.pending)
        urgent = writer.call_soon(lambda b: b.counts.pending, urgent=True)
        held.set()
        assert blocker.result(30)
        # At most one group was stored before the urgent call; the ordinary call saw the whole burst.
        assert urgent.result(30) <= COMMIT_MAX
        assert in_order.result(30) == BURST
        await writer.barrier()
        assert buf.counts.pending == BURST
    finally:
        writer.stop()
        buf.close()
