"""`gridtokenx bench ...`. Stage benchmarks live in their packages' `bench.py` (COMMANDS lists)."""

from __future__ import annotations

import click

from gridtokenx.bench.registry import attach


@click.group(help="Benchmarks. Each prints a human summary, or one JSON document with --json. "
             "See BENCHMARKS.md for the figures on the reference machine.")
def bench() -> None:
    pass


attach(bench, ("gridtokenx.bench.e2e", "gridtokenx.bench.verify", "gridtokenx.bench.sim", "gridtokenx.bench.edge",
               "gridtokenx.bench.ingest", "gridtokenx.bench.mint", "gridtokenx.bench.confirm",
               "gridtokenx.bench.api", "gridtokenx.bench.preload"))
