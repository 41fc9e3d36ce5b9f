"""One jittered backoff for every reconnect and retry loop, and a wait that a stop event cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import random


class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is uniform in [c/2, c], c = min(cap, initial·2ⁿ).

    Half the ceiling is kept so a fleet that lost the same broker does not return in one burst, and no
    delay collapses to zero (AWS architecture blog's "equal jitter").
    """

    def __init__(self, initial: float, cap: float) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff needs 0 < initial <= cap, not initial={initial} cap={cap}")
        self.initial, self.cap = initial, cap
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(self.attempt, 60))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
