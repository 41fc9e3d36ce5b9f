"""`gridtokenx localnet`: Solana JSON-RPC over an `SvmLedger`, with fault injection.

It implements the methods the rpc backend and a wallet tool need (see METHODS), with a real
cluster's semantics where the minter's safety depends on them: blockhashes expire after
`blockhash_ttl` slots of wall-clock time, a signature is processed at most once, statuses are kept
forever. Faults are drawn per request from a seeded RNG:

- drop_sends: answer sendTransaction with the signature but never process it (a lost packet);
- timeout_after_land: process it, then answer HTTP 504 (the client cannot know it landed);
- status_delay: hide a landed signature's status for that many seconds (confirmation latency; the
  finalized block height lags by the same time, as on a real node);
- rate_limit: more than N requests in one second get HTTP 429 with `Retry-After: 1` (or, with
  rate_limit_code -32005, a JSON-RPC error as some providers answer);
- congestion_price: a transaction paying less than this many micro-lamports per compute unit is
  accepted and never processed (a congested leader drops it), and getRecentPrioritizationFees
  reports that price in every recent slot, as the competing traffic paid it.

A WebSocket endpoint on the same address (`GET /` with Upgrade, as `ws://host:port`) and on
port + 1 (the validator's convention, `--ws-port`) serves
signatureSubscribe (notified at `confirmed` when the status becomes visible, then removed),
logsSubscribe ("all" or {"mentions": [address]}) and slotSubscribe. `POST /faults/ws` with
{"up": false} closes every socket and refuses new ones until {"up": true}: a cut connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import base58
from aiohttp import WSMsgType, web
from solders.message import from_bytes_versioned
from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.svm import COMPUTE_BUDGET_PROGRAM, SvmLedger, TxRecord, TxRefused, unit_price
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
    congestion_price: int = 0
    rate_limit_code: int = 429


@dataclass(slots=True)
class _Sub:
    ws: web.WebSocketResponse
    sub_id: int
    kind: str  # signature | logs | slot
    target: str | None = None  # the signature, or the address logs must mention (None: all)


class Localnet:
    def __init__(self, ledger: SvmLedger, faults: Faults = Faults()) -> None:
        self.ledger = ledger
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._landed_at: dict[str, float] = {}
        self._window = (0, 0)  # (second, requests in it)
        self._heights: deque[tuple[float, int]] = deque()  # (monotonic time, block height) samples
        self.counters = {"sends": 0, "dropped": 0, "timeouts_after_land": 0, "rate_limited": 0,
                         "congestion_dropped": 0, "ws_notifications": 0}
        self.ws_up = True
        self._sockets: set[web.WebSocketResponse] = set()
        self._subs: dict[int, _Sub] = {}
        self._sub_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
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
            "getTokenAccountsByOwner": self._token_accounts_by_owner,
            "getRecentPrioritizationFees": self._recent_prioritization_fees,
            "getFeeForMessage": self._fee_for_message,
            "simulateTransaction": self._simulate_transaction,
            "getTokenSupply": self._token_supply,
            "getMinimumBalanceForRentExemption": lambda p: self.ledger.svm.minimum_balance_for_rent_exemption(
                int(p[0])),
        }

    # -- HTTP ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._handle)
        app.router.add_get("/", self._websocket)
        app.router.add_get("/health", self._health)
        app.router.add_post("/faults/ws", self._ws_fault)
        return app

    def ws_app(self) -> web.Application:
        """The WebSocket alone, for a second port (port + 1, as solana-test-validator serves it)."""
        app = web.Application()
        app.router.add_get("/", self._websocket)
        return app

    # -- WebSocket ------------------------------------------------------------------------------
    async def _ws_fault(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.ws_up = bool(body.get("up", True))
        if not self.ws_up:
            for ws in list(self._sockets):
                await ws.close()
        return web.json_response({"up": self.ws_up})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.ws_up:
            return web.Response(status=503, text="WebSocket cut (fault)")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        self._sockets.add(ws)
        ticker = asyncio.create_task(self._slot_ticker(ws))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = json.loads(msg.data)
                except json.JSONDecodeError:
                    await ws.send_json({"jsonrpc": "2.0", "id": None,
                                        "error": {"code": -32700, "message": "Parse error"}})
                    continue
                await ws.send_json(self._ws_call(ws, req))
        finally:
            ticker.cancel()
            self._sockets.discard(ws)
            for sid in [i for i, sub in self._subs.items() if sub.ws is ws]:
                del self._subs[sid]
        return ws

    def _ws_call(self, ws: web.WebSocketResponse, req: dict[str, Any]) -> dict[str, Any]:
        rid = req.get("id")
        method = str(req.get("method"))
        params = list(req.get("params") or [])
        try:
            if method in ("signatureSubscribe", "logsSubscribe", "slotSubscribe"):
                kind = method.removesuffix("Subscribe")
                target: str | None = None
                if kind == "signature":
                    target = str(params[0])
                elif kind == "logs":
                    filt = params[0] if params else "all"
                    if isinstance(filt, dict):
                        target = str(filt["mentions"][0])
                sid = next(self._sub_ids)
                self._subs[sid] = _Sub(ws, sid, kind, target)
                return {"jsonrpc": "2.0", "id": rid, "result": sid}
            if method.endswith("Unsubscribe"):
                return {"jsonrpc": "2.0", "id": rid, "result": self._subs.pop(int(params[0]), None) is not None}
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"Invalid params: {exc}"}}
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}}

    async def _slot_ticker(self, ws: web.WebSocketResponse) -> None:
        last = self.ledger.slot
        while not ws.closed:
            await asyncio.sleep(self.ledger.slot_secs)
            self.ledger.tick()
            slot = self.ledger.slot
            if slot == last:
                continue
            last = slot
            for sub in [s for s in self._subs.values() if s.ws is ws and s.kind == "slot"]:
                await self._notify(sub, "slotNotification", {"parent": slot - 1, "root": slot, "slot": slot})

    async def _notify(self, sub: _Sub, method: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await sub.ws.send_json({"jsonrpc": "2.0", "method": method,
                                    "params": {"result": result, "subscription": sub.sub_id}})
            self.counters["ws_notifications"] += 1

    def _landed(self, record: TxRecord, accounts: list[str]) -> None:
        """Publish a landing once its status is visible (after status_delay)."""
        if not self._subs:
            return
        loop = asyncio.get_running_loop()

        def publish() -> None:
            task = loop.create_task(self._publish(record, accounts))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        if self.faults.status_delay:
            loop.call_later(self.faults.status_delay, publish)
        else:
            publish()

    async def _publish(self, record: TxRecord, accounts: list[str]) -> None:
        ctx = {"slot": record.slot}
        for sub in list(self._subs.values()):
            if sub.kind == "signature" and sub.target == record.signature:
                self._subs.pop(sub.sub_id, None)  # one notification, then the subscription is gone
                await self._notify(sub, "signatureNotification",
                                   {"context": ctx, "value": {"err": _err_json(record.err)}})
            elif sub.kind == "logs" and (sub.target is None or sub.target in accounts):
                await self._notify(sub, "logsNotification", {"context": ctx, "value": {
                    "signature": record.signature, "err": _err_json(record.err), "logs": list(record.logs)}})

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._rate_limited():
            self.counters["rate_limited"] += 1
            if self.faults.rate_limit_code == -32005:
                return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
                    "code": -32005, "message": "Node is behind by 42 slots", "data": {"numSlotsBehind": 42}}})
            return web.Response(status=429, text="Too many requests for a specific RPC call",
                                headers={"Retry-After": "1"})
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
        if self.faults.congestion_price and unit_price(tx) < self.faults.congestion_price:
            self.counters["congestion_dropped"] += 1
            return sig  # accepted, never scheduled: it pays less than the traffic it competes with
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
        self._landed(record, [str(k) for k in tx.message.account_keys])
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

    def _token_accounts_by_owner(self, p: Params) -> dict[str, Any]:
        owner = Pubkey.from_string(p[0])
        filt = p[1] if len(p) > 1 and isinstance(p[1], dict) else {}
        config = p[2] if len(p) > 2 and isinstance(p[2], dict) else {}
        encoding = config.get("encoding", "binary")
        if "mint" in filt:
            mint_acc = self.ledger.get_account(Pubkey.from_string(filt["mint"]))
            if mint_acc is None:
                raise RpcError(-32602, "Invalid param: could not find mint")
            programs = [mint_acc.owner]
        elif "programId" in filt:
            programs = [Pubkey.from_string(filt["programId"])]
        else:
            raise RpcError(-32602, "Invalid params: expected a mint or programId filter")
        out = []
        for program in programs:
            for address, acc in self.ledger.svm.get_program_accounts(program):
                data = bytes(acc.data)
                if len(data) < 165 or data[32:64] != bytes(owner) or data[108] == 0:
                    continue  # not a token account of this owner (a mint, or uninitialized)
                if "mint" in filt and str(Pubkey.from_bytes(data[:32])) != filt["mint"]:
                    continue
                out.append({"pubkey": str(address), "account": self._encode_token_account(acc, data, encoding)})
        return self._ctx(out)

    def _encode_token_account(self, acc: Any, data: bytes, encoding: str) -> dict[str, Any]:
        base = {"executable": acc.executable, "lamports": acc.lamports, "owner": str(acc.owner),
                "rentEpoch": 0, "space": len(data)}
        if encoding != "jsonParsed":
            return base | {"data": [base64.b64encode(data).decode(), "base64"]}
        mint = Pubkey.from_bytes(data[:32])
        mint_acc = self.ledger.get_account(mint)
        decimals = bytes(mint_acc.data)[44] if mint_acc is not None else 0
        program = "spl-token-2022" if str(acc.owner).startswith("TokenzQd") else "spl-token"
        info = {"isNative": data[44] == 1, "mint": str(mint), "owner": str(Pubkey.from_bytes(data[32:64])),
                "state": {1: "initialized", 2: "frozen"}.get(data[108], "uninitialized"),
                "tokenAmount": _ui_amount(decode_token_amount(data), decimals)}
        return base | {"data": {"program": program, "parsed": {"info": info, "type": "account"},
                                "space": len(data)}}

    def _recent_prioritization_fees(self, p: Params) -> list[dict[str, Any]]:
        self.ledger.tick()
        accounts = [str(a) for a in (p[0] if p else [])]
        floor = self.faults.congestion_price
        return [{"slot": slot, "prioritizationFee": max(fee, floor)}
                for slot, fee in self.ledger.prioritization_fees(accounts)]

    def _fee_for_message(self, p: Params) -> dict[str, Any]:
        message = from_bytes_versioned(base64.b64decode(p[0]))
        keys = message.account_keys
        limit = 200_000 * sum(1 for ix in message.instructions if str(keys[ix.program_id_index])
                              != COMPUTE_BUDGET_PROGRAM)
        price = 0
        for ix in message.instructions:
            data = bytes(ix.data)
            if str(keys[ix.program_id_index]) == COMPUTE_BUDGET_PROGRAM:
                if data[:1] == b"\x02":
                    limit = int.from_bytes(data[1:5], "little")
                elif data[:1] == b"\x03":
                    price = int.from_bytes(data[1:9], "little")
        signatures = message.header.num_required_signatures
        return self._ctx(5000 * signatures + -(-min(limit, 1_400_000) * price // 1_000_000))

    def _simulate_transaction(self, p: Params) -> dict[str, Any]:
        config = p[1] if len(p) > 1 and isinstance(p[1], dict) else {}
        raw = base64.b64decode(p[0]) if config.get("encoding") == "base64" else base58.b58decode(p[0])
        tx = VersionedTransaction.from_bytes(raw)  # replaceRecentBlockhash is not supported: sign a fresh one
        try:
            units = self.ledger.simulate_units(tx)
            err: Any = None
        except TxRefused as exc:
            units, err = 0, _sim_err(exc.reason)
        return self._ctx({"err": err, "logs": [], "accounts": None, "unitsConsumed": units,
                          "returnData": None})

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


def _sim_err(reason: str) -> Any:
    """A TransactionError as a node serializes it (solders parses only the known variants)."""
    if "InstructionError" in reason:
        return {"InstructionError": [0, {"Custom": 0}]}
    for fieldless in ("BlockhashNotFound", "AlreadyProcessed", "SignatureFailure", "InsufficientFundsForFee",
                      "AccountNotFound"):
        if fieldless in reason:
            return fieldless
    return "SanitizeFailure"


def _err_json(err: str | None) -> Any:
    if err is None:
        return None
    # A real node reports structured errors; the minter only needs "not null". Keep the text.
    return {"InstructionError": [0, {"Custom": 0}]} if "InstructionError" in err else err
