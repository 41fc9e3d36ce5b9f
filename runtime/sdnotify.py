"""systemd's notify protocol, without a dependency: one datagram to $NOTIFY_SOCKET per state.

`Type=notify` units wait for READY=1; with `WatchdogSec=` systemd sets WATCHDOG_USEC and kills a
service that stops sending WATCHDOG=1. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
Protocol: sd_notify(3) — a datagram of newline-separated VAR=VALUE to a unix socket; a leading '@'
names an abstract socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1"); False when not under systemd or the socket is gone."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None without a watchdog for us."""
    env = env if env is not None else os.environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


async def serve(alive: Callable[[], bool], stop: asyncio.Event) -> None:
    """READY=1 now; then WATCHDOG=1 every interval while `alive()` holds, until `stop`; STOPPING=1 at the
    end. A stuck event loop or a dead worker stops the pings, and systemd restarts the service."""
    notify("READY=1")
    interval = watchdog_interval()
    try:
        while not stop.is_set():
            if interval is not None and alive():
                notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval if interval is not None else 3600)
    finally:
        notify("STOPPING=1")
