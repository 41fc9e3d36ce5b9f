"""`python -m protocol verify-vectors FILE` and `python -m protocol generate-vectors FILE`."""

from __future__ import annotations

import sys

from protocol.cli import protocol_cli

if __name__ == "__main__":
    sys.exit(protocol_cli.main(prog_name="python -m protocol"))

