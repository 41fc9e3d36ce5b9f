"""`rpc` backend: solana-py's AsyncClient against any cluster (devnet, a validator, `gridtokenx localnet`).

Commitments: blockhashes and statuses at `confirmed`; the block height used to decide "expired"
at `finalized`, so a transaction still able to land on some fork is never declared dead. Sends skip
preflight (our own rebroadcast loop replaces the node's) with maxRetries 0. Balances are read from
the raw token account data, so an account that does not exist yet is simply 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed, Finalized
from solana.rpc.core import RPCException, RPCNoResultException
from solana.rpc.models import TxOpts
from solders.pubkey import Pubkey
from solders.signature import Signature

from cloud.chain.base import (
    ChainUnavailable,
    MintIdentity,
    RecentBlockhash,
    SendRefused,
    SignatureInfo,
    SignatureStatus,
)
from cloud.chain.tokens import decode_mint_supply, decode_token_amount

T = TypeVar("T")
_SEND_OPTS = TxOpts(skip_preflight=True, skip_confirmation=True, max_retries=0)
_STATUS_CHUNK = 256  # getSignatureStatuses takes at most 256 signatures


class RpcBackend:
    identity: MintIdentity

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.client = AsyncClient(url, commitment=Confirmed, timeout=timeout, http2=False)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Transport trouble and node errors alike mean "we do not know": retry later."""
        try:
            return await awaitable
        except (TimeoutError, SolanaRpcException, OSError, RPCNoResultException, RPCException) as exc:
            raise ChainUnavailable(f"{self.url}: {_why(exc)}") from exc

    async def latest_blockhash(self) -> RecentBlockhash:
        resp = await self._call(self.client.get_latest_blockhash(Confirmed))
        return RecentBlockhash(resp.value.blockhash, resp.value.last_valid_block_height)

    async def block_height(self) -> int:
        return (await self._call(self.client.get_block_height(Finalized))).value

    async def send(self, raw: bytes) -> None:
        try:
            await self.client.send_raw_transaction(raw, _SEND_OPTS)
        except RPCException as exc:
            raise SendRefused(str(exc)) from exc
        except (TimeoutError, SolanaRpcException, OSError, RPCNoResultException) as exc:
            raise ChainUnavailable(f"{self.url}: {_why(exc)}") from exc

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        out: list[SignatureStatus | None] = []
        for i in range(0, len(signatures), _STATUS_CHUNK):
            chunk = [Signature.from_string(s) for s in signatures[i:i + _STATUS_CHUNK]]
            resp = await self._call(self.client.get_signature_statuses(chunk, search_transaction_history=True))
            for st in resp.value:
                if st is None:
                    out.append(None)
                else:
                    level = str(st.confirmation_status) if st.confirmation_status is not None else ""
                    out.append(SignatureStatus(st.slot, None if st.err is None else str(st.err),
                                               confirmed=level.lower().endswith(("confirmed", "finalized"))))
        return out

    async def block_time(self, signature: str, slot: int) -> int | None:
        try:
            return (await self._call(self.client.get_block_time(slot))).value
        except ChainUnavailable:
            return None  # block time is informative; the slot is what we record

    async def signatures_for_address(self, address: Pubkey, *, before: str | None = None,
                                     limit: int = 1000) -> list[SignatureInfo]:
        resp = await self._call(self.client.get_signatures_for_address(
            address, before=Signature.from_string(before) if before else None, limit=limit))
        return [SignatureInfo(str(r.signature), r.slot, r.block_time, r.memo,
                              None if r.err is None else str(r.err)) for r in resp.value]

    async def _data(self, address: Pubkey) -> bytes | None:
        resp = await self._call(self.client.get_account_info(address))
        return None if resp.value is None else bytes(resp.value.data)

    async def token_balance(self, token_account: Pubkey) -> int:
        data = await self._data(token_account)
        return 0 if data is None else decode_token_amount(data)

    async def token_supply(self) -> int:
        data = await self._data(self.identity.mint)
        return 0 if data is None else decode_mint_supply(data)

    async def account_exists(self, address: Pubkey) -> bool:
        return (await self._call(self.client.get_account_info(address))).value is not None

    async def account_info(self, address: Pubkey) -> tuple[Pubkey, bytes] | None:
        resp = await self._call(self.client.get_account_info(address))
        return None if resp.value is None else (resp.value.owner, bytes(resp.value.data))

    async def lamports(self, address: Pubkey) -> int:
        return (await self._call(self.client.get_balance(address))).value

    async def airdrop(self, address: Pubkey, lamports: int) -> None:
        before = await self.lamports(address)
        try:
            await self.client.request_airdrop(address, lamports)
        except (RPCException, SolanaRpcException) as exc:
            raise SendRefused(f"airdrop refused ({_why(exc)}); fund {address} by hand") from exc
        for _ in range(100):
            if await self.lamports(address) > before:
                return
            await asyncio.sleep(0.2)
        raise ChainUnavailable(f"airdrop to {address} did not arrive; fund it by hand")

    async def close(self) -> None:
        await self.client.close()


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
