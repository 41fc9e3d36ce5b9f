"""Edge agent settings: YAML (`--config edge.yaml`) < environment (GRIDTOKENX_EDGE_*) < flags.

Every field has a default that works on a gateway, so the agent runs with flags alone. Names are
part of the interface (docs/INTERFACES.md, docs/edge-agent.md): keep them stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from runtime.config import BrokerURL, ConfigError

Policy = Literal["drop_oldest", "reject_new"]
POLICIES: tuple[str, ...] = ("drop_oldest", "reject_new")
SYNCHRONOUS: tuple[str, ...] = ("NORMAL", "FULL")
#: 1,000 × 4096-byte payloads, base64 in a JSON batch, is about 5.5 MB: under the cloud broker's
#: max_packet_size (6,000,000, broker-config/cloud/mosquitto.conf).
MAX_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    # URLs are kept as text and parsed by the properties below: runtime.config coerces a
    # dataclass-typed field from a mapping only, and BrokerURL is a dataclass.
    edge_broker_url: str = field(default="mqtt://edge-agent@127.0.0.1:1883",
                                 metadata={"env": "GRIDTOKENX_EDGE_BROKER_URL"})
    cloud_broker_url: str = field(default="mqtt://127.0.0.1:1883", metadata={"env": "GRIDTOKENX_CLOUD_BROKER_URL"})
    """Username defaults to gateway_id (the cloud ACL's pattern user)."""
    gateway_id: str = field(default="gw-1", metadata={"env": "GRIDTOKENX_GATEWAY_ID"})
    buffer: Path = field(default=Path("edge-buffer.db"), metadata={"env": "GRIDTOKENX_EDGE_BUFFER"})
    metrics_host: str = field(default="0.0.0.0", metadata={"env": "GRIDTOKENX_EDGE_METRICS_HOST"})
    metrics_port: int = field(default=9101, metadata={"env": "GRIDTOKENX_EDGE_METRICS_PORT"})
    """0 = any free port (the bound port is logged)."""
    edge_broker_ca: Path | None = field(default=None, metadata={"env": "GRIDTOKENX_EDGE_BROKER_CA"})
    cloud_broker_ca: Path | None = field(default=None, metadata={"env": "GRIDTOKENX_CLOUD_BROKER_CA"})
    client_id: str | None = field(default=None, metadata={"env": "GRIDTOKENX_EDGE_CLIENT_ID"})
    """MQTT client id on both brokers; default `edge-agent-{gateway_id}`. Must be stable: it names the
    persistent session that holds unacknowledged readings across restarts."""
    meter_keys: Path | None = field(default=None, metadata={"env": "GRIDTOKENX_EDGE_METER_KEYS"})
    """meters.csv (meter_id, public_key base58): enables the signature pre-check."""

    # Buffer
    max_rows: int = field(default=2_000_000, metadata={"env": "GRIDTOKENX_EDGE_MAX_ROWS"})
    max_bytes: int = field(default=1_073_741_824, metadata={"env": "GRIDTOKENX_EDGE_MAX_BYTES"})
    max_evidence_bytes: int = field(default=64 * 1024 * 1024, metadata={"env": "GRIDTOKENX_EDGE_MAX_EVIDENCE_BYTES"})
    """Quarantined payloads + rejected readings kept as evidence; the oldest go first beyond it."""
    quota_policy: str = field(default="drop_oldest", metadata={"env": "GRIDTOKENX_EDGE_QUOTA_POLICY"})
    ttl_seconds: float = field(default=7 * 86400.0, metadata={"env": "GRIDTOKENX_EDGE_TTL_SECONDS"})
    """0 = readings never expire. Default matches the cloud's 7-day maximum reading age."""
    synchronous: str = field(default="NORMAL", metadata={"env": "GRIDTOKENX_EDGE_SYNCHRONOUS"})
    commit_max: int = field(default=500, metadata={"env": "GRIDTOKENX_EDGE_COMMIT_MAX"})
    commit_linger_ms: float = field(default=5.0, metadata={"env": "GRIDTOKENX_EDGE_COMMIT_LINGER_MS"})

    # Per-meter limits (edge/guard.py): a meter above them is cut off and disabled at the broker.
    meter_rate: float = field(default=100.0, metadata={"env": "GRIDTOKENX_EDGE_METER_RATE"})
    """Messages/s one meter may sustain; 0 turns the limits off."""
    meter_burst: float = field(default=10_000.0, metadata={"env": "GRIDTOKENX_EDGE_METER_BURST"})
    meter_byte_rate: float = field(default=1024 * 1024.0, metadata={"env": "GRIDTOKENX_EDGE_METER_BYTE_RATE"})
    meter_byte_burst: float = field(default=8 * 1024 * 1024.0, metadata={"env": "GRIDTOKENX_EDGE_METER_BYTE_BURST"})

    # Forwarding
    batch_size: int = field(default=500, metadata={"env": "GRIDTOKENX_EDGE_BATCH_SIZE"})
    batch_interval_ms: float = field(default=200.0, metadata={"env": "GRIDTOKENX_EDGE_BATCH_INTERVAL_MS"})
    window: int = field(default=8, metadata={"env": "GRIDTOKENX_EDGE_WINDOW"})
    """Batches in flight (sent, not yet acked) at most: throughput vs. memory."""
    ack_timeout_s: float = field(default=10.0, metadata={"env": "GRIDTOKENX_EDGE_ACK_TIMEOUT_S"})
    backoff_initial_s: float = field(default=0.5, metadata={"env": "GRIDTOKENX_EDGE_BACKOFF_INITIAL_S"})
    backoff_max_s: float = field(default=30.0, metadata={"env": "GRIDTOKENX_EDGE_BACKOFF_MAX_S"})
    drain_timeout_s: float = field(default=5.0, metadata={"env": "GRIDTOKENX_EDGE_DRAIN_TIMEOUT_S"})

    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL"})
    log_format: str = field(default="plain", metadata={"env": "LOG_FORMAT"})
    log_file: Path | None = field(default=None, metadata={"env": "LOG_FILE"})

    @property
    def mqtt_client_id(self) -> str:
        return self.client_id or f"edge-agent-{self.gateway_id}"

    @property
    def edge_url(self) -> BrokerURL:
        return BrokerURL.parse(self.edge_broker_url)

    @property
    def cloud_url(self) -> BrokerURL:
        """The cloud broker URL with the gateway id as username when the URL names none."""
        url = BrokerURL.parse(self.cloud_broker_url)
        if url.username is None:
            return url.with_credentials(self.gateway_id, url.password or "")
        return url

    def validate(self) -> EdgeSettings:
        """Raise ConfigError (one sentence with the fix) for values the agent cannot run with."""
        self.edge_url, self.cloud_url  # noqa: B018  (raise ConfigError for a bad URL now, not later)
        if self.quota_policy not in POLICIES:
            raise ConfigError(f"quota policy {self.quota_policy!r} is unknown; use one of {', '.join(POLICIES)}")
        if self.synchronous.upper() not in SYNCHRONOUS:
            raise ConfigError(f"synchronous {self.synchronous!r} is unknown; use NORMAL or FULL")
        for name in ("max_rows", "max_bytes", "max_evidence_bytes", "batch_size", "window", "commit_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"batch size {self.batch_size} is too large: {MAX_BATCH_SIZE} readings of up to "
                              "4096 bytes, base64 in JSON, is what the cloud broker's 6 MB packet limit holds; "
                              "lower --batch-size")
        if not self.gateway_id or "/" in self.gateway_id or "+" in self.gateway_id or "#" in self.gateway_id:
            raise ConfigError(f"gateway id {self.gateway_id!r} must be a non-empty MQTT topic level "
                              "(no '/', '+', '#')")
        if self.meter_keys is not None and not self.meter_keys.exists():
            raise ConfigError(f"meter key file {self.meter_keys} does not exist; pass the meters.csv "
                              "written by `gridtokenx sim keygen` or drop --meter-keys")
        return self
