"""`sim run` settings: simulator.yaml < environment < command-line flags (runtime.config).

The YAML keeps the GridTokenX simulator's shape, with the HTTP gateway replaced by the MQTT broker:

    broker:   {url: mqtt://127.0.0.1:1883, connections: 0}
    meter:    {ids: [M-00001], count: null, reading_interval_seconds: 900, format: v1}
    signing:  {keys_dir: ./keys}
    run:      {speed: 1.0, duration: null, rate: null, seed: 0}
    faults:   {bad_signature: 0.01}

The wallet comes from each meter's key file (the registry row), never from the YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.legacy import LEGACY_INTERVAL_SECONDS
from runtime import config
from runtime.config import BrokerURL, ConfigError
from simulator.faults import FaultRates

#: The cloud rejects readings older than 7 days; a fresh fleet never starts further back than this.
MAX_BACKFILL_SECONDS = 6 * 86_400


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    url: str = field(default="mqtt://127.0.0.1:1883", metadata={"env": "GRIDTOKENX_SIM_BROKER_URL"})
    """Kept as text: runtime.config reads a dataclass-typed field as a YAML section."""
    connections: int = 0
    """0: one connection per meter with its own client id and credentials (what real meters do).
    K > 0: multiplex the meters over K connections of the fleet user (dev and load tests only)."""
    fleet_user: str | None = None
    fleet_password: str | None = None
    ca_file: Path | None = None
    """CA certificate for mqtts:// (default: the system's trust store)."""
    window: int | None = None
    """QoS 1 publishes in flight per connection (default 8 per meter connection, 256 per fleet one)."""

    @property
    def broker_url(self) -> BrokerURL:
        return BrokerURL.parse(self.url)


@dataclass(frozen=True, slots=True)
class MeterSettings:
    ids: tuple[str, ...] = ()
    """Meters to run (default: every key in keys_dir, or the first `count`)."""
    count: int | None = None
    reading_interval_seconds: int = 900
    format: str = "v1"
    """v1, or legacy (the GridTokenX gateway string; its interval is fixed at 300 s)."""


@dataclass(frozen=True, slots=True)
class SigningSettings:
    keys_dir: Path = Path("keys")


@dataclass(frozen=True, slots=True)
class RunSettings:
    speed: float = 1.0
    """Simulated seconds per real second."""
    duration: float | None = None
    """Real seconds to run (default: until SIGTERM)."""
    rate: float | None = None
    """Load mode: target readings/s for the whole fleet; sets speed = rate × interval / meters."""
    backfill: float | None = None
    """Simulated seconds before now at which a fresh meter's clock starts (default duration × speed)."""
    seed: int = 0
    max_buffer: int = 2_880
    """Messages a meter keeps while offline (30 days of 15-minute readings); oldest dropped first."""
    state: Path | None = None
    """Counters and outbox (default keys_dir/state.sqlite)."""
    metrics_port: int | None = None
    utc_offset_hours: float = 7.0
    max_reading_wh: int = 100_000
    """TOKENIZATION_MAX_READING_KWH × 1000: good readings never exceed it."""
    drain_timeout: float = 10.0
    """On stop, seconds to wait for in-flight publishes before leaving them in the outbox."""
    mode: str = "live"
    """live: each meter signs each reading when its interval ends. replay: every reading of the run
    is signed (and written to the outbox) before the run starts, then only published at the same
    pace (simulator.replay); needs a duration."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    meter: MeterSettings = field(default_factory=MeterSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    run: RunSettings = field(default_factory=RunSettings)
    faults: FaultRates = field(default_factory=FaultRates)

    @property
    def interval(self) -> int:
        return self.meter.reading_interval_seconds

    @property
    def multiplexed(self) -> bool:
        return self.broker.connections > 0

    @property
    def state_path(self) -> Path:
        return self.run.state or self.signing.keys_dir / "state.sqlite"

    def check(self) -> None:
        """Raise ConfigError with a one-sentence fix for settings that cannot run."""
        self.broker.broker_url  # noqa: B018 - raises ConfigError for a bad URL
        if self.meter.format not in ("v1", "legacy"):
            raise ConfigError(f"--format must be v1 or legacy, not {self.meter.format!r}")
        if self.meter.format == "legacy" and self.interval != LEGACY_INTERVAL_SECONDS:
            raise ConfigError(f"legacy readings cover {LEGACY_INTERVAL_SECONDS} s: use --interval "
                              f"{LEGACY_INTERVAL_SECONDS} with --format legacy")
        if self.interval < 1:
            raise ConfigError("--interval must be at least 1 second")
        if self.run.speed <= 0:
            raise ConfigError("--speed must be positive")
        if self.run.rate is not None and self.run.rate <= 0:
            raise ConfigError("--rate must be positive")
        if self.run.duration is not None and self.run.duration <= 0:
            raise ConfigError("--duration must be positive")
        if self.run.mode not in ("live", "replay"):
            raise ConfigError(f"--mode must be live or replay, not {self.run.mode!r}")
        if self.run.mode == "replay" and self.run.duration is None:
            raise ConfigError("--mode replay signs every reading of the run before it starts: give --duration")
        if self.multiplexed and not (self.broker.fleet_user and self.broker.fleet_password):
            raise ConfigError("--connections K needs --fleet-user and --fleet-password (a broker user "
                              "allowed to write meters/+/readings, e.g. sim-fleet)")
        if self.broker.window is not None and self.broker.window < 1:
            raise ConfigError("--window must be at least 1")
        try:
            self.faults.check()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def load(path: Path | None, overrides: dict[str, dict[str, Any]]) -> SimSettings:
    """YAML < env < flags; `overrides` maps a section name to the flags given for it (None = not given)."""
    settings = config.load(SimSettings, path)
    for section, values in overrides.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            settings = dataclasses.replace(
                settings, **{section: dataclasses.replace(getattr(settings, section), **given)})
    settings.check()
    return settings
