"""`rpc` backend: solana-py's AsyncClient against any cluster (devnet, a validator, `gridtokenx localnet`).

Commitments: blockhashes and statuses at `confirmed`; the block height used to decide "expired"
at `finalized`, so a transaction still able to land on some fork is never declared dead. Sends skip
preflight (our own rebroadcast loop replaces the node's) with maxRetries 0. Balances are read from
the raw token account data, so an account that does not exist yet is simply 0.

Rate limits: HTTP 429 and JSON-RPC -32005 are retried here with exponential backoff that honours
`Retry-After` (at most `rate_limit_retries` times, never sleeping longer than `max_backoff_secs`
in total) before the caller sees `ChainUnavailable`. Every HTTP request is counted per method
(`calls`, and the `gridtokenx_rpc_calls_total` metric), so the minter can report RPC calls per
minted batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Counter
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed, Finalized
from solana.rpc.core import RPCException, RPCNoResultException
from solana.rpc.models import TxOpts
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

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
_TRANSPORT = (TimeoutError, SolanaRpcException, OSError, RPCNoResultException)

RPC_CALLS = Counter("gridtokenx_rpc_calls_total", "HTTP JSON-RPC requests the minter made, by method", ["method"])
RPC_RATE_LIMITED = Counter("gridtokenx_rpc_rate_limited_total",
                           "Answers HTTP 429 / JSON-RPC -32005 (each retried after a backoff)")


class RateLimited(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class RpcBackend:
    identity: MintIdentity

    def __init__(self, url: str, *, timeout: float = 10.0, rate_limit_retries: int = 4,
                 max_backoff_secs: float = 10.0) -> None:
        self.url = url
        self.client = AsyncClient(url, commitment=Confirmed, timeout=timeout, http2=False)
        self.rate_limit_retries = rate_limit_retries
        self.max_backoff_secs = max_backoff_secs
        self.calls: dict[str, int] = {}
        self.rate_limited = 0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    async def _request(self, method: str, make: Callable[[], Awaitable[T]]) -> T:
        """One logical call: counted per HTTP request, rate limits retried with backoff (Retry-After)."""
        slept = 0.0
        attempt = 0
        while True:
            self.calls[method] = self.calls.get(method, 0) + 1
            RPC_CALLS.labels(method=method).inc()
            try:
                return await make()
            except (SolanaRpcException, RPCException) as exc:
                limited = _rate_limit_of(exc)
                if limited is None:
                    raise
                self.rate_limited += 1
                RPC_RATE_LIMITED.inc()
                attempt += 1
                wait = limited.retry_after if limited.retry_after is not None else 0.25 * 2 ** attempt
                wait = min(wait, self.max_backoff_secs - slept)
                if attempt > self.rate_limit_retries or wait <= 0:
                    raise
                start = time.monotonic()
                await asyncio.sleep(wait)
                slept += time.monotonic() - start

    async def _call(self, method: str, make: Callable[[], Awaitable[T]]) -> T:
        """Transport trouble and node errors alike mean "we do not know": retry later."""
        try:
            return await self._request(method, make)
        except (*_TRANSPORT, RPCException) as exc:
            raise ChainUnavailable(f"{self.url}: {_why(exc)}") from exc

    async def latest_blockhash(self) -> RecentBlockhash:
        resp = await self._call("getLatestBlockhash", lambda: self.client.get_latest_blockhash(Confirmed))
        return RecentBlockhash(resp.value.blockhash, resp.value.last_valid_block_height)

    async def block_height(self) -> int:
        return (await self._call("getBlockHeight", lambda: self.client.get_block_height(Finalized))).value

    async def send(self, raw: bytes) -> None:
        try:
            await self._request("sendTransaction", lambda: self.client.send_raw_transaction(raw, _SEND_OPTS))
        except RPCException as exc:
            if _rate_limit_of(exc) is not None:
                raise ChainUnavailable(f"{self.url}: rate limited") from exc
            raise SendRefused(str(exc)) from exc
        except _TRANSPORT as exc:
            raise ChainUnavailable(f"{self.url}: {_why(exc)}") from exc

    async def simulate_units(self, raw: bytes) -> int:
        tx = VersionedTransaction.from_bytes(raw)
        resp = await self._call("simulateTransaction", lambda: self.client.simulate_transaction(
            tx, sig_verify=False, commitment=Confirmed))
        if resp.value.err is not None:
            raise SendRefused(f"simulation failed: {resp.value.err}")
        if resp.value.units_consumed is None:
            raise ChainUnavailable(f"{self.url}: simulateTransaction reported no unitsConsumed")
        return int(resp.value.units_consumed)

    async def recent_priority_fees(self, accounts: list[Pubkey]) -> list[int]:
        resp = await self._call("getRecentPrioritizationFees",
                                lambda: self.client.get_recent_prioritization_fees(accounts))
        return [int(f.prioritization_fee) for f in resp.value]

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        out: list[SignatureStatus | None] = []
        for i in range(0, len(signatures), _STATUS_CHUNK):
            chunk = [Signature.from_string(s) for s in signatures[i:i + _STATUS_CHUNK]]
            resp = await self._call("getSignatureStatuses", lambda c=chunk: self.client.get_signature_statuses(  # type: ignore[misc]
                c, search_transaction_history=True))
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
            return (await self._call("getBlockTime", lambda: self.client.get_block_time(slot))).value
        except ChainUnavailable:
            return None  # block time is informative; the slot is what we record

    async def signatures_for_address(self, address: Pubkey, *, before: str | None = None,
                                     limit: int = 1000) -> list[SignatureInfo]:
        resp = await self._call("getSignaturesForAddress", lambda: self.client.get_signatures_for_address(
            address, before=Signature.from_string(before) if before else None, limit=limit))
        return [SignatureInfo(str(r.signature), r.slot, r.block_time, r.memo,
                              None if r.err is None else str(r.err)) for r in resp.value]

    async def _data(self, address: Pubkey) -> bytes | None:
        resp = await self._call("getAccountInfo", lambda: self.client.get_account_info(address))
        return None if resp.value is None else bytes(resp.value.data)

    async def token_balance(self, token_account: Pubkey) -> int:
        data = await self._data(token_account)
        return 0 if data is None else decode_token_amount(data)

    async def token_supply(self) -> int:
        data = await self._data(self.identity.mint)
        return 0 if data is None else decode_mint_supply(data)

    async def account_exists(self, address: Pubkey) -> bool:
        return (await self._call("getAccountInfo", lambda: self.client.get_account_info(address))).value is not None

    async def account_info(self, address: Pubkey) -> tuple[Pubkey, bytes] | None:
        resp = await self._call("getAccountInfo", lambda: self.client.get_account_info(address))
        return None if resp.value is None else (resp.value.owner, bytes(resp.value.data))

    async def lamports(self, address: Pubkey) -> int:
        return (await self._call("getBalance", lambda: self.client.get_balance(address))).value

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


def _rate_limit_of(exc: BaseException) -> RateLimited | None:
    """HTTP 429 (with its Retry-After, seconds) or JSON-RPC -32005; None for anything else."""
    response = getattr(exc.__cause__, "response", None)  # solana-py wraps its HTTP client's status error
    if response is not None and getattr(response, "status_code", None) == 429:
        return RateLimited(_retry_after(response.headers.get("retry-after")))
    if isinstance(exc, RPCException):
        payload: Any = exc.args[0] if exc.args else None
        code = getattr(payload, "code", None)
        # solders parses -32005 as NodeUnhealthyMessage (no code field left), others keep theirs.
        if code == -32005 or type(payload).__name__ == "NodeUnhealthyMessage" or "-32005" in str(payload):
            return RateLimited(None)
    return None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
