"""The protocol's exceptions: `ProtocolFailure` is the root; `ProtocolError` is bad input from a meter,
with a reason code and a sentence."""

from __future__ import annotations

from protocol.reasons import Reason


class ProtocolFailure(ValueError):
    """Root of the protocol package's errors."""


class ProtocolError(ProtocolFailure):
    """Raised by the parsers for any payload that is not a well-formed reading.

    Callers treat it as data: store the raw bytes with ``reason`` and ``detail``, count it, go on.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
