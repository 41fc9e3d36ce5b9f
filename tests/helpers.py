"""Test helpers: wait for a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)
        last = predicate()
    return last


async def async_wait_for(predicate: Callable[[], Awaitable[T]], *, timeout: float = 30.0,
                         interval: float = 0.05, message: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last = await predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
        await asyncio.sleep(interval)
        last = await predicate()
    return last
