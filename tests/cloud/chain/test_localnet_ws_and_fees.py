"""What real tools use against localnet: solana-py's WebSocket client (slotSubscribe, logsSubscribe,
signatureSubscribe), getFeeForMessage, getRecentPrioritizationFees and simulateTransaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed
from solana.rpc.websocket_api import RpcTransactionLogsFilterMentions, SolanaWsClient
from solders.keypair import Keypair
from solders.rpc.responses import LogsNotification, SignatureNotification, SlotNotification

from cloud.chain.factory import open_backend
from cloud.chain.tx import ComputeBudget, build_mint_tx
from cloud.settings import ChainSettings, CloudSettings, websocket_url
from tests.cloud.chain.conftest import LocalnetFactory


async def test_solana_py_websocket_and_fee_methods(localnet_factory: LocalnetFactory, tmp_path: Path) -> None:
    url = localnet_factory("--slot-ms", "100")
    settings = CloudSettings(chain=ChainSettings(backend="rpc", rpc_url=url, state_dir=tmp_path / "chain"))

    backend = await open_backend(settings)
    client = AsyncClient(url)
    try:
        identity = backend.identity
        authority = identity.authority.pubkey()
        budget = ComputeBudget(60_000, 7_777)
        recent = await backend.latest_blockhash()
        tx = build_mint_tx(identity, [(Keypair().pubkey(), 5)], "gridtokenx:mint-batch:1", recent.blockhash,
                           budget)
        fee = (await client.get_fee_for_message(tx.message)).value
        assert fee == budget.fee() == 5000 + 467  # ceil(60,000 x 7,777 / 1e6)
        units = (await client.simulate_transaction(tx)).value.units_consumed
        assert units is not None and 0 < units < budget.unit_limit

        async with SolanaWsClient(url.replace("http://", "ws://")) as ws:
            await ws.slot_subscribe()
            slot_note = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(slot_note, SlotNotification) and slot_note.result.slot > 0
            await ws.logs_subscribe(filter_=RpcTransactionLogsFilterMentions(authority))
            await ws.signature_subscribe(signature=tx.signatures[0], commitment=Confirmed)
            await backend.send(bytes(tx))
            got: dict[type, object] = {}
            while LogsNotification not in got or SignatureNotification not in got:
                note = await asyncio.wait_for(ws.recv(), 10)
                got[type(note)] = note
            logs = got[LogsNotification]
            assert isinstance(logs, LogsNotification)
            assert logs.result.value.signature == tx.signatures[0] and logs.result.value.err is None
            assert any("CreateIdempotent" in line for line in logs.result.value.logs)
            sig = got[SignatureNotification]
            assert isinstance(sig, SignatureNotification) and sig.result.value.err is None

        # The price it paid is what getRecentPrioritizationFees reports for the mint's slot.
        fees = (await client.get_recent_prioritization_fees([identity.mint])).value
        assert max(f.prioritization_fee for f in fees) == budget.unit_price
        assert set(await backend.recent_priority_fees([Keypair().pubkey()])) == {0}  # untouched account
    finally:
        await client.close()
        await backend.close()



def test_websocket_url_defaults_to_the_rpc_urls_twin() -> None:
    assert websocket_url(ChainSettings(rpc_url="http://127.0.0.1:8899")) == "ws://127.0.0.1:8900"
    assert websocket_url(ChainSettings(rpc_url="https://api.devnet.solana.com")) == "wss://api.devnet.solana.com"
    assert websocket_url(ChainSettings(rpc_url="http://localnet:8899", ws_url="ws://elsewhere:1")) == "ws://elsewhere:1"


async def test_localnet_serves_the_websocket_on_port_plus_one(localnet_factory: LocalnetFactory) -> None:
    """The validator's convention, so SOLANA_WS_URL can be left to its default."""
    from gridtokenx.harness.brokers import free_port

    port = free_port()
    url = localnet_factory("--port", str(port))  # the last --port wins over the fixture's --port 0
    assert url.endswith(f":{port}")

    async with SolanaWsClient(websocket_url(ChainSettings(rpc_url=url))) as ws:
        assert (await ws.slot_subscribe()).subscription_id > 0

