"""The meter protocol: readings, their exact signed bytes, envelopes, topics, reason codes.

Pure: no I/O. PROTOCOL.md at the repository root is the specification this package implements.
"""

from protocol.envelopes import Ack, AckItem, Batch, BatchItem
from protocol.errors import ProtocolError
from protocol.reading import Quality, Reading, SignedReading
from protocol.reasons import Reason
from protocol.units import entitled_base_units, parse_ratio
from protocol.wire import (
    MAX_PAYLOAD_BYTES,
    V1_PREFIX,
    encode_v1_message,
    frame,
    parse_payload,
    secret_key_from_seed,
    sign,
    sign_reading,
    verify,
    verify_signed,
)

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "V1_PREFIX",
    "Ack",
    "AckItem",
    "Batch",
    "BatchItem",
    "ProtocolError",
    "Quality",
    "Reading",
    "Reason",
    "SignedReading",
    "encode_v1_message",
    "entitled_base_units",
    "frame",
    "parse_payload",
    "parse_ratio",
    "secret_key_from_seed",
    "sign",
    "sign_reading",
    "verify",
    "verify_signed",
]
