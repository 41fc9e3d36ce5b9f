"""`gridtokenx localnet`: run the JSON-RPC endpoint over LiteSVM until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import click
from aiohttp import web

from cloud.chain.localnet import Faults, Localnet
from cloud.chain.svm import SvmLedger
from runtime.runner import run_component


@click.command(help="Serve Solana JSON-RPC over LiteSVM (real SPL Token, ATA and Memo programs) with "
               "optional faults, so the rpc backend and wallet tools work without a validator. "
               "Blockhashes live --blockhash-ttl slots of --slot-ms each.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8899, show_default=True, help="0 picks a free port (printed at start)")
@click.option("--ws-port", type=int, help="also serve the WebSocket here (default: port + 1 as a validator "
              "does; 0 picks a free one; -1: only on --port)")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="keep the ledger (accounts + signature history) in DIR/ledger.jsonl across restarts")
@click.option("--drop-sends", default=0.0, show_default=True, help="share of sendTransaction silently dropped")
@click.option("--timeout-after-land", default=0.0, show_default=True,
              help="share of sends that land but answer HTTP 504")
@click.option("--status-delay", default=0.0, show_default=True, help="seconds a landed status stays hidden")
@click.option("--rate-limit", default=0, show_default=True, help="requests per second before HTTP 429 (0: off)")
@click.option("--rate-limit-code", type=click.Choice(["429", "-32005"]), default="429", show_default=True,
              help="answer over the limit with HTTP 429 + Retry-After, or JSON-RPC error -32005")
@click.option("--congestion-price", default=0, show_default=True,
              help="drop transactions paying under this many micro-lamports per compute unit (0: off)")
@click.option("--blockhash-ttl", default=150, show_default=True, help="slots a blockhash stays valid")
@click.option("--slot-ms", default=400, show_default=True, help="milliseconds per slot")
@click.option("--seed", type=int, help="seed for the fault RNG (reproducible runs)")
@click.option("--ready-file", type=click.Path(path_type=Path, dir_okay=False),
              help="write {\"url\": ...} here once listening (for scripts and tests)")
def localnet(host: str, port: int, ws_port: int | None, state_dir: Path | None, drop_sends: float,
             timeout_after_land: float,
             status_delay: float, rate_limit: int, rate_limit_code: str, congestion_price: int,
             blockhash_ttl: int, slot_ms: int, seed: int | None, ready_file: Path | None) -> None:
    for name, rate in (("--drop-sends", drop_sends), ("--timeout-after-land", timeout_after_land)):
        if not 0.0 <= rate <= 1.0:
            raise click.BadParameter(f"{name} is a share between 0 and 1, not {rate}")
    ledger = SvmLedger(journal=state_dir / "ledger.jsonl" if state_dir else None, blockhash_ttl=blockhash_ttl,
                       slot_secs=slot_ms / 1000)
    net = Localnet(ledger, Faults(drop_sends, timeout_after_land, status_delay, rate_limit, seed,
                                  congestion_price=congestion_price, rate_limit_code=int(rate_limit_code)))
    try:
        asyncio.run(run_component(lambda stop: _serve(net, host, port, ready_file, ws_port, stop),
                                  name="localnet", drain_seconds=10.0))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc}); pick another --port") from exc
    finally:
        ledger.close()


async def _serve(net: Localnet, host: str, port: int, ready_file: Path | None, ws_port: int | None,
                 stop: asyncio.Event) -> None:
    runner = web.AppRunner(net.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None)
    explicit_ws_port = ws_port is not None
    if ws_port is None:
        ws_port = port + 1 if port else 0
    if port == 0 and sockets:
        port = sockets[0].getsockname()[1]
    url = f"http://{host}:{port}"
    ws_url = f"ws://{host}:{port}"
    ws_runner: web.AppRunner | None = None
    if ws_port >= 0:
        ws_runner = web.AppRunner(net.ws_app(), access_log=None)
        await ws_runner.setup()
        ws_site = web.TCPSite(ws_runner, host, ws_port)
        try:
            await ws_site.start()
        except OSError as exc:
            if explicit_ws_port:
                raise
            # port + 1 is taken: the WebSocket is still served on the RPC port itself.
            click.echo(f"localnet: WebSocket port {ws_port} unavailable ({exc}); serving it on {port} only",
                       err=True)
            await ws_runner.cleanup()
            ws_runner = None
        else:
            ws_sockets = getattr(ws_site._server, "sockets", None)
            if ws_port == 0 and ws_sockets:
                ws_port = ws_sockets[0].getsockname()[1]
            ws_url = f"ws://{host}:{ws_port}"
    click.echo(f"localnet listening on {url}, WebSocket {ws_url} (faults: {net.faults})", err=True)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": url, "ws_url": ws_url}))
        tmp.replace(ready_file)
    try:
        await stop.wait()
    finally:
        click.echo(f"localnet stopping: {net.counters}", err=True)
        with contextlib.suppress(Exception):
            await runner.cleanup()
        if ws_runner is not None:
            with contextlib.suppress(Exception):
                await ws_runner.cleanup()
