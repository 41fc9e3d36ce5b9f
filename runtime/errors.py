"""The root of the runtime package's errors."""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Root of the runtime package's errors; the message is one sentence with the fix."""
