"""Cloud settings: YAML (`--config cloud.yaml`) < environment (the GridTokenX Phase 2 guide's names) < flags.

Every default is the GridTokenX Phase 2 guide's (ratio 1.0, decimals 9, polling 60 s, batch 50, 100 kWh per
reading, 7 days, 10 attempts, 5 minutes first retry). Sections may grow; keep names stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from protocol.units import parse_ratio
from runtime.config import BrokerURL


@dataclass(frozen=True, slots=True)
class TokenizationSettings:
    kwh_to_token_ratio: str = field(default="1.0", metadata={"env": "TOKENIZATION_KWH_TO_TOKEN_RATIO"})
    decimals: int = field(default=9, metadata={"env": "TOKENIZATION_DECIMALS"})
    auto_mint_enabled: bool = field(default=True, metadata={"env": "TOKENIZATION_AUTO_MINT_ENABLED"})
    polling_interval_secs: float = field(default=60.0, metadata={"env": "TOKENIZATION_POLLING_INTERVAL_SECS"})
    batch_size: int = field(default=50, metadata={"env": "TOKENIZATION_BATCH_SIZE"})
    max_reading_kwh: str = field(default="100.0", metadata={"env": "TOKENIZATION_MAX_READING_KWH"})
    reading_max_age_days: float = field(default=7.0, metadata={"env": "TOKENIZATION_READING_MAX_AGE_DAYS"})
    clock_skew_secs: int = field(default=300, metadata={"env": "TOKENIZATION_CLOCK_SKEW_SECS"})
    max_interval_secs: int = field(default=3600, metadata={"env": "TOKENIZATION_MAX_INTERVAL_SECS"})
    """Longest interval one reading may cover; longer ones are rejected interval_too_long."""
    retry_enabled: bool = field(default=True, metadata={"env": "TOKENIZATION_RETRY_ENABLED"})
    max_retry_attempts: int = field(default=10, metadata={"env": "TOKENIZATION_MAX_RETRY_ATTEMPTS"})
    initial_retry_delay_minutes: float = field(
        default=5.0, metadata={"env": "TOKENIZATION_INITIAL_RETRY_DELAY_MINUTES"})
    max_retry_delay_minutes: float = field(
        default=24 * 60.0, metadata={"env": "TOKENIZATION_MAX_RETRY_DELAY_MINUTES"})
    resign_attempts: int = field(default=3, metadata={"env": "TOKENIZATION_RESIGN_ATTEMPTS"})
    """Times a batch is re-signed after its blockhash expired unseen, before its readings go to retry."""
    max_batches_per_poll: int = field(default=64, metadata={"env": "TOKENIZATION_MAX_BATCHES_PER_POLL"})
    """Transactions one poll may plan (each wallet costs one mint_to, ~10 wallets per transaction)."""

    @property
    def ratio(self) -> Fraction:
        return parse_ratio(self.kwh_to_token_ratio)

    @property
    def max_reading_wh(self) -> int:
        """TOKENIZATION_MAX_READING_KWH in whole Wh (exact decimal arithmetic)."""
        return int(Decimal(self.max_reading_kwh) * 1000)


@dataclass(frozen=True, slots=True)
class ChainSettings:
    backend: str = field(default="embedded", metadata={"env": "GRIDTOKENX_CHAIN_BACKEND"})
    """`embedded` (LiteSVM in this process) or `rpc` (solana-py AsyncClient)."""
    rpc_url: str = field(default="http://127.0.0.1:8899", metadata={"env": "SOLANA_RPC_URL"})
    ws_url: str = field(default="", metadata={"env": "SOLANA_WS_URL"})
    """Empty: derived from SOLANA_RPC_URL as the Solana CLI does (http→ws, https→wss, port + 1)."""
    mint_address: str | None = field(default=None, metadata={"env": "GRIDTOKENX_MINT_ADDRESS"})
    authority_keypair: Path | None = field(default=None, metadata={"env": "GRIDTOKENX_MINT_AUTHORITY_KEYPAIR"})
    token_program: str = field(default="spl-token", metadata={"env": "GRIDTOKENX_TOKEN_PROGRAM"})
    """`spl-token` or `token-2022`."""
    state_dir: Path = field(default=Path(".gridtokenx/chain"), metadata={"env": "GRIDTOKENX_CHAIN_STATE_DIR"})
    rpc_timeout_secs: float = field(default=10.0, metadata={"env": "SOLANA_RPC_TIMEOUT_SECS"})
    confirm_poll_secs: float = field(default=0.4, metadata={"env": "GRIDTOKENX_CONFIRM_POLL_SECS"})
    """How often open batches are checked for confirmation and rebroadcast."""
    embedded_slot_secs: float = field(default=0.4, metadata={"env": "GRIDTOKENX_EMBEDDED_SLOT_SECS"})
    embedded_blockhash_ttl: int = field(default=150, metadata={"env": "GRIDTOKENX_EMBEDDED_BLOCKHASH_TTL"})
    """Embedded chain: wall-clock slot length and blockhash lifetime in slots (mainnet: 0.4 s, 150)."""
    priority_fee_mode: str = field(default="dynamic", metadata={"env": "GRIDTOKENX_PRIORITY_FEE_MODE"})
    """`none` (price 0), `fixed` (GRIDTOKENX_PRIORITY_FEE_MICROLAMPORTS) or `dynamic` (a percentile of
    getRecentPrioritizationFees over the mint's accounts, at least the fixed price)."""
    priority_fee_micro_lamports: int = field(default=0, metadata={"env": "GRIDTOKENX_PRIORITY_FEE_MICROLAMPORTS"})
    priority_fee_max_micro_lamports: int = field(
        default=100_000, metadata={"env": "GRIDTOKENX_PRIORITY_FEE_MAX_MICROLAMPORTS"})
    """Cap on the price per compute unit, whatever the mode (100,000 µlamports x ~300k units = 0.0003 SOL)."""
    priority_fee_percentile: int = field(default=75, metadata={"env": "GRIDTOKENX_PRIORITY_FEE_PERCENTILE"})
    compute_unit_margin: float = field(default=1.2, metadata={"env": "GRIDTOKENX_COMPUTE_UNIT_MARGIN"})
    """Unit limit = measured units of the transaction's shape x this margin."""
    confirm_mode: str = field(default="subscribe", metadata={"env": "GRIDTOKENX_CONFIRM_MODE"})
    """rpc backend: `subscribe` (signatureSubscribe over SOLANA_WS_URL, polling while the socket is down)
    or `poll` (getSignatureStatuses every GRIDTOKENX_CONFIRM_POLL_SECS)."""
    rebroadcast_secs: float = field(default=1.0, metadata={"env": "GRIDTOKENX_REBROADCAST_SECS"})
    """An open batch's bytes are sent again at most this often (and a subscribed batch is checked this often)."""
    rate_limit_retries: int = field(default=4, metadata={"env": "GRIDTOKENX_RPC_RATE_LIMIT_RETRIES"})
    rate_limit_max_backoff_secs: float = field(
        default=10.0, metadata={"env": "GRIDTOKENX_RPC_RATE_LIMIT_MAX_BACKOFF_SECS"})
    fee_payer_min_batches: int = field(default=100, metadata={"env": "GRIDTOKENX_FEE_PAYER_MIN_BATCHES"})
    """Alert (gridtokenx_alert{name="fee_payer_low"}) when the authority's SOL pays fewer worst-case batches."""


def websocket_url(chain: ChainSettings) -> str:
    """SOLANA_WS_URL, or the RPC URL's WebSocket twin (http://h:8899 → ws://h:8900)."""
    if chain.ws_url:
        return chain.ws_url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(chain.rpc_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    netloc = parts.netloc
    if parts.port is not None:
        netloc = netloc.rsplit(":", 1)[0] + f":{parts.port + 1}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Bounds of the ingest consumer against a hostile gateway and a hanging database (docs/cloud-ingest.md)."""

    db_timeout_secs: float = field(default=5.0, metadata={"env": "GRIDTOKENX_INGEST_DB_TIMEOUT_SECS"})
    """Deadline of every database step; past it the step counts as a transient fault."""
    evidence_quota_bytes: int = field(default=64 * 1024 * 1024,
                                      metadata={"env": "GRIDTOKENX_INGEST_EVIDENCE_QUOTA_BYTES"})
    """Rejected-payload bytes stored per gateway per hour; beyond it only length and SHA-256 are kept."""
    ack_max_bytes: int = field(default=0, metadata={"env": "GRIDTOKENX_INGEST_ACK_MAX_BYTES"})
    """Largest ack message; 0 = the broker's limit from the MQTT 5 CONNACK, else 256 KiB."""
    probe_timeout_secs: float = field(default=5.0, metadata={"env": "GRIDTOKENX_INGEST_PROBE_TIMEOUT_SECS"})
    """How long the startup check waits for its probe through the shared subscription."""


@dataclass(frozen=True, slots=True)
class CloudSettings:
    database_url: str = field(default="postgresql://postgres@127.0.0.1:5432/gridtokenx",
                              metadata={"env": "DATABASE_URL"})
    broker_url: BrokerURL = field(default_factory=lambda: BrokerURL(username="cloud-consumer"),
                                  metadata={"env": "GRIDTOKENX_CLOUD_BROKER_URL"})
    broker_ca: Path | None = field(default=None, metadata={"env": "GRIDTOKENX_CLOUD_BROKER_CA"})
    client_id: str = field(default="cloud-consumer-1", metadata={"env": "GRIDTOKENX_CLOUD_CLIENT_ID"})
    host: str = field(default="0.0.0.0", metadata={"env": "HOST"})
    port: int = field(default=8080, metadata={"env": "PORT"})
    """HTTP port for /metrics and /healthz (the GridTokenX Phase 2 guide's server settings)."""
    log_level: str = field(default="INFO", metadata={"env": "LOG_LEVEL"})
    log_format: str = field(default="plain", metadata={"env": "LOG_FORMAT"})
    log_file: Path | None = field(default=None, metadata={"env": "LOG_FILE"})
    tokenization: TokenizationSettings = field(default_factory=TokenizationSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
