"""Token buckets keyed by client or meter, bounded in memory (least recently used keys are dropped).

Limits are per API process: behind a load balancer with N processes a key may get up to N times
the rate. That bounds abuse without a shared store; the per-meter limit also protects the meter's
MQTT path, which shares the database.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class Buckets:
    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self._clock = clock
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Spend one token; None when allowed, else the seconds until a token is available."""
        if self.rate <= 0:
            return None
        now = self._clock()
        tokens, last = self._state.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            allowed = True
        else:
            self._state[key] = (tokens, now)
            allowed = False
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate
