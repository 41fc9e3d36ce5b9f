from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.config import BrokerURL, ConfigError, env_names, load


@dataclass(frozen=True)
class Section:
    batch: int = field(default=50, metadata={"env": "X_BATCH"})


@dataclass(frozen=True)
class Settings:
    broker: BrokerURL = field(default_factory=BrokerURL, metadata={"env": "X_BROKER"})
    enabled: bool = field(default=True, metadata={"env": "X_ENABLED"})
    section: Section = field(default_factory=Section)


def test_yaml_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("broker: mqtt://a:b@h1:1884\nsection:\n  batch: 7\n")
    s = load(Settings, path, env={})
    assert s.broker == BrokerURL("h1", 1884, "a", "b") and s.section.batch == 7
    s = load(Settings, path, env={"X_BROKER": "mqtts://u:p%40ss@h2", "X_BATCH": "9", "X_ENABLED": "false"})
    assert s.broker == BrokerURL("h2", 8883, "u", "p@ss", tls=True)
    assert s.section.batch == 9 and s.enabled is False
    s = load(Settings, path, env={}, overrides={"enabled": "no", "broker": None})
    assert s.enabled is False and s.broker.host == "h1"


def test_errors_say_which_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="X_ENABLED must be true or false"):
        load(Settings, None, env={"X_ENABLED": "maybe"})
    with pytest.raises(ConfigError, match="must start with mqtt"):
        load(Settings, None, env={"X_BROKER": "http://x"})
    (tmp_path / "bad.yaml").write_text("nope: 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(Settings, tmp_path / "bad.yaml", env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load(Settings, tmp_path / "missing.yaml", env={})


def test_env_names_include_sections() -> None:
    assert env_names(Settings) == {"X_BROKER", "X_ENABLED", "X_BATCH"}
