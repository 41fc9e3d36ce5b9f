"""The root of the gridtokenx (roof) package's errors."""

from __future__ import annotations


class GridtokenxError(RuntimeError):
    """Root of the orchestration and harness errors; the message says what to do."""
