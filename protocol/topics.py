"""MQTT topics of the three hops (DESIGN.md, "Topics")."""

from __future__ import annotations

from protocol.errors import ProtocolError
from protocol.reading import METER_ID_RE
from protocol.reasons import Reason

METER_READINGS_FILTER = "meters/+/readings"
SHARED_BATCHES_FILTER = "$share/cloud/edge/+/batches"
BATCHES_FILTER = "edge/+/batches"


def meter_readings(meter_id: str) -> str:
    return f"meters/{meter_id}/readings"


def batches(gateway_id: str) -> str:
    return f"edge/{gateway_id}/batches"


def acks(gateway_id: str) -> str:
    return f"edge/{gateway_id}/acks"


def meter_of(topic: str) -> str:
    """The meter_id named by a `meters/{meter_id}/readings` topic."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "meters" or parts[2] != "readings" or not METER_ID_RE.match(parts[1]):
        raise ProtocolError(Reason.TOPIC_MISMATCH, f"topic {topic[:120]!r} is not meters/{{meter_id}}/readings")
    return parts[1]


def gateway_of(topic: str) -> str:
    """The gateway_id named by an `edge/{gateway_id}/batches` or `.../acks` topic."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "edge" or parts[2] not in ("batches", "acks") or not parts[1]:
        raise ProtocolError(Reason.TOPIC_MISMATCH, f"topic {topic[:120]!r} is not edge/{{gateway_id}}/...")
    return parts[1]


def shared_batches_filter(group: str) -> str:
    """The cloud consumers' shared subscription to every gateway's batches."""
    return f"$share/{group}/{BATCHES_FILTER}"


def probe(client_id: str) -> str:
    """A cloud consumer's own topic for its startup check of shared subscriptions."""
    return f"cloud/probe/{client_id}/ping"
