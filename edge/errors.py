"""The root of the edge package's errors."""

from __future__ import annotations


class EdgeError(Exception):
    """Root of the edge agent's and the inspector's errors; the message is one sentence with the fix."""
