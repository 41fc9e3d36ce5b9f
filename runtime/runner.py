"""The one way a long-running command runs: signals → one stop event, a bounded drain, a forced exit.

Every long-running command (`edge run`, `cloud run`, `sim run`, `localnet`, the minter entry point)
hands its work to `run_component` as `async work(stop)`. The first SIGTERM or SIGINT sets `stop`;
the work drains and returns. If it has not returned within `drain_seconds` it is cancelled and the
process ends with `DrainTimeout`. A second signal ends the process at once (exit 128 + signal):
an operator who presses Ctrl-C twice means it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from runtime.errors import RuntimeFailure

log = logging.getLogger("runtime.runner")

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainTimeout(RuntimeFailure):
    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"{name} did not finish draining within {seconds:g} s after the stop signal; "
                         "work in flight was cancelled (nothing acknowledged is lost: it is re-sent)")


@contextlib.asynccontextmanager
async def signals_to(stop: asyncio.Event, *, name: str) -> AsyncIterator[None]:
    """While inside: the first SIGTERM/SIGINT sets `stop`, a second one exits the process at once."""
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            log.info("%s: %s received, draining (a second signal forces exit)", name, sig.name)
            stop.set()
            return
        log.warning("%s: second %s, exiting now without draining", name, sig.name)
        logging.shutdown()
        os._exit(128 + int(sig))

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def run_component(work: Callable[[asyncio.Event], Awaitable[T]], *, name: str, drain_seconds: float = 30.0,
                        stop: asyncio.Event | None = None) -> T:
    """Run `work(stop)` under `signals_to`; once `stop` is set, give it `drain_seconds` to return."""
    stop = stop if stop is not None else asyncio.Event()
    async with signals_to(stop, name=name):
        task: asyncio.Future[T] = asyncio.ensure_future(work(stop))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            either: set[asyncio.Future[Any]] = {task, stopped}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                done, _ = await asyncio.wait({task}, timeout=drain_seconds)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise DrainTimeout(name, drain_seconds)
            return task.result()
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
