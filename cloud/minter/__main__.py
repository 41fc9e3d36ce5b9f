"""`python -m cloud.minter [--config cloud.yaml]`: only the minter, settings from YAML < environment.

`gridtokenx cloud run --role mint` is the documented way; this entry point has no ingest or HTTP
dependencies, which is what the chaos tests kill -9 and restart.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cloud.minter import MinterRefused
from cloud.minter.service import run_minter
from cloud.settings import CloudSettings
from runtime import logs
from runtime.config import load
from runtime.runner import run_component


def main(argv: list[str]) -> None:
    config = Path(argv[argv.index("--config") + 1]) if "--config" in argv else None
    settings = load(CloudSettings, config)
    logs.setup(level=settings.log_level, json_format=settings.log_format == "json", log_file=settings.log_file)
    try:
        asyncio.run(run_component(lambda stop: run_minter(settings, stop), name="minter", drain_seconds=30.0))
    except MinterRefused as exc:  # the sentence is on stderr already
        sys.exit(exc.code)


if __name__ == "__main__":
    main(sys.argv[1:])
