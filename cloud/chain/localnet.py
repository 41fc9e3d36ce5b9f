"""`gridtokenx localnet`: Solana JSON-RPC over an `SvmLedger`, with fault injection.

It implements the methods the rpc backend and a wallet tool need (see METHODS), with a real
cluster's semantics where the minter's safety depends on them: blockhashes expire after
`blockhash_ttl` slots of wall-clock time, a signature is processed at most once, statuses are kept
forever. Faults are drawn per request from a seeded RNG:

- drop_sends: answer sendTransaction with the signature but never process it (a lost packet);
- timeout_after_land: process it, then answer HTTP 504 (the client cannot know it landed);
- status_delay: hide a landed signature's status for that many seconds (confirmation latency; the
  finalized block height lags by the same time, as on a real node);
- rate_limit: more than N requests in one second get HTTP 429.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import base58
from aiohttp import web
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.svm import SvmLedger, TxRecord, TxRefused
from cloud.chain.tokens import decode_mint_supply, decode_token_amount
from cloud.errors import CloudError

log = logging.getLogger(__name__)

Params = list[Any]


class RpcError(CloudError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Faults:
    drop_sends: float = 0.0
    timeout_after_land: float = 0.0
    status_delay: float = 0.0
    rate_limit: int = 0
    seed: int | None = None


class Localnet:
    def __init__(self, ledger: SvmLedger, faults: Faults = Faults()) -> None:
        self.ledger = ledger
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._landed_at: dict[str, float] = {}
        self._window = (0, 0)  # (second, requests in it)
        self._heights: deque[tuple[float, int]] = deque()  # (monotonic time, block height) samples
        self.counters = {"sends": 0, "dropped": 0, "timeouts_after_land": 0, "rate_limited": 0}
        self.methods: dict[str, Callable[[Params], Any]] = {
            "getHealth": lambda p: "ok",
            "getVersion": lambda p: {"solana-core": "gridtokenx-localnet", "feature-set": 0},
            "getSlot": lambda p: self._tick().slot,
            "getBlockHeight": self._block_height,
            "getLatestBlockhash": self._latest_blockhash,
            "isBlockhashValid": self._blockhash_valid,
            "sendTransaction": self._send_transaction,
            "getSignatureStatuses": self._signature_statuses,
            "getSignaturesForAddress": self._signatures_for_address,
            "getTransaction": self._transaction,
            "getBlockTime": self._block_time,
            "getAccountInfo": self._account_info,
            "getBalance": lambda p: self._ctx(self._lamports(p[0])),
            "requestAirdrop": lambda p: self.ledger.airdrop(Pubkey.from_string(p[0]), int(p[1])),
            "getTokenAccountBalance": self._token_account_balance,
            "getTokenSupply": self._token_supply,
            "getMinimumBalanceForRentExemption": lambda p: self.ledger.svm.minimum_balance_for_rent_exemption(
                int(p[0])),
        }

    # -- HTTP ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._handle)
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._rate_limited():
            self.counters["rate_limited"] += 1
            return web.Response(status=429, text="Too many requests for a specific RPC call")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"jsonrpc": "2.0", "id": None,
                                      "error": {"code": -32700, "message": "Parse error"}})
        if isinstance(body, list):
            return web.json_response([self._call(item)[0] for item in body])
        doc, timeout = self._call(body)
        if timeout:
            return web.Response(status=504, text="Gateway Timeout")
        return web.json_response(doc)

    def _call(self, req: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        rid = req.get("id")
        method = self.methods.get(str(req.get("method")))
        if method is None:
            return {"jsonrpc": "2.0", "id": rid,
                    "error": {"code": -32601, "message": f"Method not found: {req.get('method')}"}}, False
        try:
            result = method(list(req.get("params") or []))
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": exc.code, "message": exc.message}}, False
        except TimeoutAfterLand as exc:
            return {"jsonrpc": "2.0", "id": rid, "result": exc.signature}, True
        except (ValueError, TypeError, IndexError, KeyError, TxRefused) as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"Invalid params: {exc}"}}, False
        return {"jsonrpc": "2.0", "id": rid, "result": result}, False

    def _rate_limited(self) -> bool:
        if not self.faults.rate_limit:
            return False
        second = int(time.monotonic())
        start, count = self._window
        count = count + 1 if start == second else 1
        self._window = (second, count)
        return count > self.faults.rate_limit

    # -- methods ------------------------------------------------------------------------------
    def _tick(self) -> SvmLedger:
        self.ledger.tick()
        return self.ledger

    def _block_height(self, p: Params) -> int:
        """Processed/confirmed: the tip. Finalized: the tip as it was `status_delay` seconds ago, so a node
        that shows statuses late also finalizes late, as a real node does; otherwise a client would see a
        blockhash "expired" while the transaction that used it has landed but is not visible yet."""
        height = self._tick().block_height
        now = time.monotonic()
        self._heights.append((now, height))
        commitment = p[0].get("commitment") if p and isinstance(p[0], dict) else "finalized"
        if commitment != "finalized" or not self.faults.status_delay:
            return height
        horizon = now - self.faults.status_delay
        while len(self._heights) > 1 and self._heights[1][0] <= horizon:
            self._heights.popleft()
        oldest_time, oldest_height = self._heights[0]
        return oldest_height if oldest_time <= horizon else 0  # nothing old enough seen: claim nothing

    def _ctx(self, value: Any) -> dict[str, Any]:
        return {"context": {"slot": self.ledger.slot, "apiVersion": "2.0.0"}, "value": value}

    def _latest_blockhash(self, p: Params) -> dict[str, Any]:
        blockhash, last_valid = self.ledger.latest_blockhash()
        return self._ctx({"blockhash": str(blockhash), "lastValidBlockHeight": last_valid})

    def _blockhash_valid(self, p: Params) -> dict[str, Any]:
        from solders.hash import Hash

        self.ledger.tick()
        return self._ctx(self.ledger.blockhash_valid(Hash.from_string(p[0])))

    def _send_transaction(self, p: Params) -> str:
        config = p[1] if len(p) > 1 and isinstance(p[1], dict) else {}
        raw = base64.b64decode(p[0]) if config.get("encoding") == "base64" else base58.b58decode(p[0])
        tx = VersionedTransaction.from_bytes(raw)
        sig = str(tx.signatures[0])
        self.counters["sends"] += 1
        if self._rng.random() < self.faults.drop_sends:
            self.counters["dropped"] += 1
            return sig
        try:
            record = self.ledger.process(tx)
        except TxRefused as exc:
            if config.get("skipPreflight"):
                return sig  # a real node forwards it; it simply never lands
            raise RpcError(-32002, f"Transaction simulation failed: {exc.reason}") from exc
        if record.err is not None and not config.get("skipPreflight"):
            # Preflight would have caught it before it landed; keep the landed status anyway.
            raise RpcError(-32002, f"Transaction simulation failed: {record.err}")
        self._landed_at[sig] = time.monotonic()
        if self._rng.random() < self.faults.timeout_after_land:
            self.counters["timeouts_after_land"] += 1
            raise TimeoutAfterLand(sig)
        return sig

    def _visible(self, sig: str) -> TxRecord | None:
        record = self.ledger.history.get(sig)
        if record is None:
            return None
        landed = self._landed_at.get(sig)
        if landed is not None and time.monotonic() - landed < self.faults.status_delay:
            return None
        return record

    def _signature_statuses(self, p: Params) -> dict[str, Any]:
        out: list[dict[str, Any] | None] = []
        for sig in p[0]:
            rec = self._visible(sig)
            out.append(None if rec is None else {
                "slot": rec.slot, "confirmations": None, "err": _err_json(rec.err),
                "status": {"Ok": None} if rec.err is None else {"Err": _err_json(rec.err)},
                "confirmationStatus": "finalized"})
        return self._ctx(out)

    def _signatures_for_address(self, p: Params) -> list[dict[str, Any]]:
        config = p[1] if len(p) > 1 and isinstance(p[1], dict) else {}
        records = self.ledger.signatures_for(p[0], before=config.get("before"), limit=int(config.get("limit") or 1000))
        return [{"signature": r.signature, "slot": r.slot, "err": _err_json(r.err),
                 "memo": None if r.memo is None else f"[{len(r.memo.encode())}] {r.memo}",
                 "blockTime": r.block_time, "confirmationStatus": "finalized"} for r in records]

    def _transaction(self, p: Params) -> dict[str, Any] | None:
        rec = self._visible(p[0])
        if rec is None:
            return None
        return {"slot": rec.slot, "blockTime": rec.block_time,
                "meta": {"err": _err_json(rec.err), "logMessages": list(rec.logs), "fee": 5000}}

    def _block_time(self, p: Params) -> int:
        return int(time.time())

    def _account_info(self, p: Params) -> dict[str, Any]:
        acc = self.ledger.get_account(Pubkey.from_string(p[0]))
        if acc is None:
            return self._ctx(None)
        return self._ctx({"data": [base64.b64encode(bytes(acc.data)).decode(), "base64"],
                          "executable": acc.executable, "lamports": acc.lamports, "owner": str(acc.owner),
                          "rentEpoch": 0, "space": len(bytes(acc.data))})

    def _lamports(self, address: str) -> int:
        acc = self.ledger.get_account(Pubkey.from_string(address))
        return 0 if acc is None else acc.lamports

    def _token_account_balance(self, p: Params) -> dict[str, Any]:
        acc = self.ledger.get_account(Pubkey.from_string(p[0]))
        if acc is None:
            raise RpcError(-32602, "Invalid param: could not find account")
        data = bytes(acc.data)
        mint = self.ledger.get_account(Pubkey.from_bytes(data[:32]))
        decimals = bytes(mint.data)[44] if mint is not None else 0
        return self._ctx(_ui_amount(decode_token_amount(data), decimals))

    def _token_supply(self, p: Params) -> dict[str, Any]:
        acc = self.ledger.get_account(Pubkey.from_string(p[0]))
        if acc is None:
            raise RpcError(-32602, "Invalid param: could not find account")
        data = bytes(acc.data)
        return self._ctx(_ui_amount(decode_mint_supply(data), data[44]))


class TimeoutAfterLand(CloudError):
    def __init__(self, signature: str) -> None:
        super().__init__(signature)
        self.signature = signature


def _ui_amount(amount: int, decimals: int) -> dict[str, Any]:
    from protocol.units import base_units_to_tokens_text

    text = base_units_to_tokens_text(amount, decimals)
    return {"amount": str(amount), "decimals": decimals, "uiAmount": float(text), "uiAmountString": text}


def _err_json(err: str | None) -> Any:
    if err is None:
        return None
    # A real node reports structured errors; the minter only needs "not null". Keep the text.
    return {"InstructionError": [0, {"Custom": 0}]} if "InstructionError" in err else err
