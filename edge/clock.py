"""Wall-clock steps, noticed: TTLs and ages count real waiting time, whatever the gateway's clock does.

The buffer stamps rows with the wall clock (`received_at`, UTC s): the inspector and the cloud need
real instants. But a wall clock can step (NTP after a dead RTC battery, an operator, a tampered
gateway): +8 days would make every fresh reading look 8 days old and the TTL would drop them. This
compares the wall clock with clocks that cannot step: CLOCK_MONOTONIC while the agent runs, and
CLOCK_BOOTTIME (with the kernel's boot id) across agent restarts on the same boot. A difference over
STEP_TOLERANCE_S is a step; the buffer then shifts the stamps of the rows it holds by that much.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

#: Differences below this are NTP slewing or scheduling noise, not a step.
STEP_TOLERANCE_S = 60.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def boottime() -> float:
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class StepDetector:
    def __init__(self, *, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 tolerance: float = STEP_TOLERANCE_S) -> None:
        self._wall, self._mono, self.tolerance = wall, mono, tolerance
        self._last = (wall(), mono())

    def step(self) -> float:
        """Seconds the wall clock jumped since the last call (0.0 when it only ran)."""
        w, m = self._wall(), self._mono()
        lw, lm = self._last
        self._last = (w, m)
        d = (w - lw) - (m - lm)
        return d if abs(d) > self.tolerance else 0.0


def anchor(wall: float) -> str:
    """What the buffer keeps in meta to measure a step across a restart: boot id, wall, boot time."""
    return f"{boot_id()} {wall!r} {boottime()!r}"


def step_since(saved: str | None, wall: float, *, tolerance: float = STEP_TOLERANCE_S) -> float:
    """The wall-clock step since `saved` (an anchor()), if it was taken on this boot; else 0.0."""
    if not saved:
        return 0.0
    try:
        then_boot, then_wall, then_boottime = saved.split()
        d = (wall - float(then_wall)) - (boottime() - float(then_boottime))
    except ValueError:
        return 0.0
    if then_boot != boot_id() or not then_boot:
        return 0.0  # a reboot: elapsed real time is unknown, trust the wall clock
    return d if abs(d) > tolerance else 0.0
