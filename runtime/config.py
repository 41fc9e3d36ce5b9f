"""Settings: YAML file, then environment variables (the GridTokenX Phase 2 guide's names), then command-line flags.

Each component declares a frozen dataclass; a field's metadata names its environment variable:
``field(default=60, metadata={"env": "TOKENIZATION_POLLING_INTERVAL_SECS"})``. Nested sections are
dataclasses too, and their YAML keys are the section's field names.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import yaml

from runtime.errors import RuntimeFailure
from runtime.redact import redact_url

T = TypeVar("T")


class ConfigError(RuntimeFailure, ValueError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """`mqtt[s]://user:pass@host:port`, parsed."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL {redact_url(url)!r} must start with mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {redact_url(url)!r} has an invalid port") from None
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"

    def with_credentials(self, username: str, password: str) -> BrokerURL:
        return dataclasses.replace(self, username=username, password=password)


def env_of(f: dataclasses.Field[Any]) -> str | None:
    value = f.metadata.get("env")
    return str(value) if value else None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(value, args[0], name)
    if hint is BrokerURL:  # a dataclass too, but written as one URL string
        return value if isinstance(value, BrokerURL) else BrokerURL.parse(str(value))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping")
        return build(hint, value, env={}, prefix=f"{name}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    if hint is Path:
        return Path(str(value)).expanduser()
    if hint in (int, float, str):
        try:
            return hint(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be {hint.__name__}, not {value!r}") from exc
    if origin is tuple or hint is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(i).strip() for i in items if str(i).strip())
    return value


def build(cls: type[T], values: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
          prefix: str = "") -> T:
    """Build `cls` from a mapping, with env vars (by field metadata) taking precedence."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(prefix + u for u in unknown))}; "
                          f"known: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = prefix + f.name
        var = env_of(f)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) and hint is not BrokerURL and isinstance(hint, type):
            section = values.get(f.name, {})
            if isinstance(section, hint):
                kwargs[f.name] = section
                continue
            if not isinstance(section, Mapping):
                raise ConfigError(f"{name} must be a mapping of settings")
            kwargs[f.name] = build(hint, section, env=env, prefix=f"{name}.")
            continue
        if var and var in env:
            kwargs[f.name] = _coerce(env[var], hints[f.name], var)
        elif f.name in values:
            kwargs[f.name] = _coerce(values[f.name], hints[f.name], name)
    return cls(**kwargs)


def load(cls: type[T], path: Path | None, *, overrides: Mapping[str, Any] | None = None,
         env: Mapping[str, str] | None = None) -> T:
    """YAML file (optional) < environment < explicit overrides (CLI flags that were given)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        values.update(loaded)
    settings = build(cls, values, env=env)
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        hints = typing.get_type_hints(cls)
        settings = dataclasses.replace(  # type: ignore[type-var]
            settings, **{k: _coerce(v, hints[k], k) for k, v in given.items()}
        )
    return settings


def env_names(cls: type[Any]) -> set[str]:
    """Every environment variable a settings class (and its sections) reads."""
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        var = env_of(f)
        if var:
            names.add(var)
        if dataclasses.is_dataclass(hints[f.name]) and hints[f.name] is not BrokerURL:
            names |= env_names(hints[f.name])
    return names
