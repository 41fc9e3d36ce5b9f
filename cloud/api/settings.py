"""API settings: environment (GRIDTOKENX_API_*) < `gridtokenx cloud api` flags. The database, chain and
tokenization settings are the cloud's (`cloud.settings.CloudSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ApiSettings:
    config: Path | None = field(default=None, metadata={"env": "GRIDTOKENX_API_CONFIG"})
    """The cloud YAML (database, chain, tokenization); passed to every worker process."""
    max_body_bytes: int = field(default=16_384, metadata={"env": "GRIDTOKENX_API_MAX_BODY_BYTES"})
    """Largest request body; a reading is at most 4 KiB (protocol.wire.MAX_PAYLOAD_BYTES)."""
    client_rate: float = field(default=50.0, metadata={"env": "GRIDTOKENX_API_CLIENT_RATE"})
    """Requests per second per API token (token bucket; 0 = unlimited), per process."""
    client_burst: float = field(default=100.0, metadata={"env": "GRIDTOKENX_API_CLIENT_BURST"})
    meter_rate: float = field(default=1.0, metadata={"env": "GRIDTOKENX_API_METER_RATE"})
    """Readings per second per meter over HTTP (0 = unlimited), per process."""
    meter_burst: float = field(default=20.0, metadata={"env": "GRIDTOKENX_API_METER_BURST"})
    alert_interval_secs: float = field(default=10.0, metadata={"env": "GRIDTOKENX_API_ALERT_INTERVAL_SECS"})
    events_retention_days: float = field(default=7.0, metadata={"env": "GRIDTOKENX_API_EVENTS_RETENTION_DAYS"})
    max_mint_wait_secs: float = field(default=120.0, metadata={"env": "GRIDTOKENX_API_MAX_MINT_WAIT_SECS"})
    pool_size: int = field(default=8, metadata={"env": "GRIDTOKENX_API_POOL_SIZE"})
    health_timeout_secs: float = field(default=2.0, metadata={"env": "GRIDTOKENX_API_HEALTH_TIMEOUT_SECS"})
