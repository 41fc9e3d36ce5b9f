"""Options and settings loading shared by every `gridtokenx cloud …` command group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cloud.settings import CloudSettings
from runtime.config import ConfigError, load

F = TypeVar("F", bound=Callable[..., Any])


def config_option(param: str = "config") -> Callable[[F], F]:
    return click.option("--config", param, type=click.Path(path_type=Path, dir_okay=False),
                        help="cloud YAML settings file (environment variables and flags override it)")


dsn_option = click.option("--database-url", default=None, help="PostgreSQL DSN [env DATABASE_URL]")
json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON document instead of text")


def load_settings(config: Path | None, **overrides: Any) -> CloudSettings:
    """YAML < environment < flags; a wrong value is one sentence, not a traceback."""
    try:
        return load(CloudSettings, config, overrides=overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
