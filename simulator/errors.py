"""The root of the simulator package's errors."""

from __future__ import annotations


class SimulatorError(ValueError):
    """Root of the simulator's errors; the message is one sentence with the fix."""
