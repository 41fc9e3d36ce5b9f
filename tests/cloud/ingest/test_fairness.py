"""The consumer's incoming queue serves gateways in turn and keeps each gateway's order."""

from __future__ import annotations

import asyncio

import aiomqtt

from cloud.ingest.fairness import FairQueue


def _message(gateway: str, n: int) -> aiomqtt.Message:
    return aiomqtt.Message(f"edge/{gateway}/batches", f"{gateway}-{n}".encode(), qos=1, retain=False, mid=n,
                           properties=None)


def test_round_robin_per_gateway_in_order_within_each() -> None:
    async def run() -> list[bytes]:
        queue = FairQueue()
        for n in range(5):
            queue.put_nowait(_message("flood", n))
        queue.put_nowait(_message("honest", 0))
        queue.put_nowait(_message("other", 0))
        queue.put_nowait(_message("honest", 1))
        assert queue.qsize() == 8 and not queue.empty()
        out = [(await queue.get()).payload for _ in range(8)]
        assert queue.empty()
        return [p for p in out if isinstance(p, bytes)]

    assert asyncio.run(run()) == [b"flood-0", b"honest-0", b"other-0", b"flood-1", b"honest-1", b"flood-2",
                                  b"flood-3", b"flood-4"]
