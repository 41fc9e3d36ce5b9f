"""Fairness between gateways inside one consumer: the incoming-message queue hands out batches
round-robin per topic (one topic per gateway), so a gateway with a backlog of batches delays
another gateway's next batch by at most about one batch of its own, not by the whole backlog.

aiomqtt takes the queue class as `queue_type`; `asyncio.Queue` keeps its storage behind `_init`,
`_put` and `_get`, the same hooks `PriorityQueue` and `LifoQueue` use. Order within one gateway
is kept (a meter's readings stay in sequence).
"""

from __future__ import annotations

import asyncio
from collections import deque

import aiomqtt


class _RoundRobin:
    def __init__(self) -> None:
        self._queues: dict[str, deque[aiomqtt.Message]] = {}
        self._turns: deque[str] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, message: aiomqtt.Message) -> None:
        key = message.topic.value
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(message)
        self._size += 1

    def get(self) -> aiomqtt.Message:
        key = self._turns.popleft()
        queue = self._queues[key]
        message = queue.popleft()
        if queue:
            self._turns.append(key)
        else:
            del self._queues[key]
        self._size -= 1
        return message


class FairQueue(asyncio.Queue[aiomqtt.Message]):
    """An asyncio.Queue of MQTT messages that serves their topics in turn."""

    def _init(self, maxsize: int) -> None:
        self._rr = _RoundRobin()
        self._queue = self._rr  # what qsize() and empty() look at

    def _put(self, item: aiomqtt.Message) -> None:
        self._rr.put(item)

    def _get(self) -> aiomqtt.Message:
        return self._rr.get()
