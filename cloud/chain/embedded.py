"""`embedded` backend: the chain is an `SvmLedger` inside this process (LiteSVM, real SPL programs).

The ledger's journal lives in `state_dir/ledger.jsonl`; each processed transaction's written accounts
and status are fsynced there before `send` returns, so a restarted minter finds the same balances,
supply and signature history it was told about. Sends execute synchronously: a transaction has
landed (or been refused) by the time `send` returns. The embedded chain is single-process: run one
minter per state_dir (localnet is the shared, multi-process variant).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.base import (
    ChainError,
    MintIdentity,
    RecentBlockhash,
    SendRefused,
    SignatureInfo,
    SignatureStatus,
)
from cloud.chain.svm import DEFAULT_BLOCKHASH_TTL, SvmLedger, TxRefused
from cloud.chain.tokens import decode_mint_supply, decode_token_amount

LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = "ledger.lock"


class ChainBusy(ChainError):
    """Another process holds this embedded chain."""


class EmbeddedBackend:
    identity: MintIdentity

    def __init__(self, state_dir: Path | None, *, slot_secs: float = 0.4,
                 blockhash_ttl: int = DEFAULT_BLOCKHASH_TTL) -> None:
        self._lock_fd: int | None = None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                raise ChainBusy(f"the embedded chain in {state_dir} is in use by another process (a running "
                                "minter); talk to that process, or use GRIDTOKENX_CHAIN_BACKEND=rpc") from exc
            self._lock_fd = fd
        self.ledger = SvmLedger(journal=state_dir / LEDGER_FILE if state_dir else None,
                                blockhash_ttl=blockhash_ttl, slot_secs=slot_secs)

    async def latest_blockhash(self) -> RecentBlockhash:
        blockhash, last_valid = self.ledger.latest_blockhash()
        return RecentBlockhash(blockhash, last_valid)

    async def block_height(self) -> int:
        self.ledger.tick()
        return self.ledger.block_height

    async def send(self, raw: bytes) -> None:
        try:
            self.ledger.process(VersionedTransaction.from_bytes(raw))
        except TxRefused as exc:
            raise SendRefused(exc.reason) from exc

    async def simulate_units(self, raw: bytes) -> int:
        try:
            return self.ledger.simulate_units(VersionedTransaction.from_bytes(raw))
        except TxRefused as exc:
            raise SendRefused(exc.reason) from exc

    async def recent_priority_fees(self, accounts: list[Pubkey]) -> list[int]:
        return [fee for _, fee in self.ledger.prioritization_fees([str(a) for a in accounts])]

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        out: list[SignatureStatus | None] = []
        for sig in signatures:
            rec = self.ledger.history.get(sig)
            out.append(None if rec is None else SignatureStatus(rec.slot, rec.err))
        return out

    async def block_time(self, signature: str, slot: int) -> int | None:
        rec = self.ledger.history.get(signature)
        return None if rec is None else rec.block_time

    async def signatures_for_address(self, address: Pubkey, *, before: str | None = None,
                                     limit: int = 1000) -> list[SignatureInfo]:
        return [SignatureInfo(r.signature, r.slot, r.block_time, r.memo, r.err)
                for r in self.ledger.signatures_for(str(address), before=before, limit=limit)]

    async def token_balance(self, token_account: Pubkey) -> int:
        acc = self.ledger.get_account(token_account)
        return 0 if acc is None else decode_token_amount(bytes(acc.data))

    async def token_supply(self) -> int:
        acc = self.ledger.get_account(self.identity.mint)
        return 0 if acc is None else decode_mint_supply(bytes(acc.data))

    async def account_exists(self, address: Pubkey) -> bool:
        return self.ledger.get_account(address) is not None

    async def account_info(self, address: Pubkey) -> tuple[Pubkey, bytes] | None:
        acc = self.ledger.get_account(address)
        return None if acc is None else (acc.owner, bytes(acc.data))

    async def lamports(self, address: Pubkey) -> int:
        acc = self.ledger.get_account(address)
        return 0 if acc is None else acc.lamports

    async def airdrop(self, address: Pubkey, lamports: int) -> None:
        self.ledger.airdrop(address, lamports)

    async def close(self) -> None:
        self.ledger.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


