"""The `gridtokenx` root command. Each component owns its command group in its own `cli.py`."""

from __future__ import annotations

import importlib

import click

from gridtokenx import __version__

# name -> (module, attribute, one-line help shown in `gridtokenx --help` without importing it)
_GROUPS: dict[str, tuple[str, str, str]] = {
    "sim": ("simulator.cli", "sim", "Simulated smart meters: keys, fleets, load and fault injection."),
    "edge": ("edge.cli", "edge", "Edge agent: SQLite store-and-forward; inspection for field technicians."),
    "cloud": ("cloud.cli", "cloud", "Cloud: migrations, meter registry, ingest consumer, minter, status."),
    "broker": ("gridtokenx.broker_cli", "broker", "Broker credentials, ACLs and dev TLS certificates."),
    "localnet": ("cloud.chain.localnet_cli", "localnet", "JSON-RPC Solana endpoint over LiteSVM, with faults."),
    "bench": ("gridtokenx.bench.cli", "bench", "Benchmarks: end-to-end pipeline and per stage."),
    "demo": ("gridtokenx.demo", "demo", "Run the whole system locally and show it working."),
    "protocol": ("protocol.cli", "protocol_cli", "The meter protocol: test vectors and payload decoding."),
}


class LazyGroup(click.Group):
    """Imports a component's commands only when they are used, so `--help` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_GROUPS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _GROUPS:
            return None
        module, attr, _ = _GROUPS[name]
        try:
            command = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if not exc.name or not (module == exc.name or module.startswith(exc.name + ".")):
                raise
            return _missing(name)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, _GROUPS[name][2]) for name in sorted(_GROUPS)])


def _missing(name: str) -> click.Command:
    @click.command(name=name, help=f"{_GROUPS[name][2]} (not built yet in this checkout)")
    def missing() -> None:
        raise click.ClickException(f"`gridtokenx {name}` is not available in this build")

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gridtokenx")
def root() -> None:
    """GridTokenX Edge: signed smart-meter readings over MQTT, buffered at the edge, verified into
    PostgreSQL in the cloud, and minted as SPL tokens on Solana (1 kWh = 1 token).

    \b
    Data flow:
      meters ──MQTT──► edge broker ──► edge agent (SQLite) ──► cloud broker ──► cloud ingest (Postgres)
                                           ▲                                        │
                                           └──────────── application acks ◄─────────┘
                                                                      minter ──► Solana SPL mint_to

    Start with `gridtokenx demo` to see the whole chain run locally.
    """


def main() -> None:
    root(prog_name="gridtokenx")
