"""`embedded` backend: the chain is an `SvmLedger` inside this process (LiteSVM, real SPL programs).

The ledger's journal lives in `state_dir/ledger.jsonl`; each processed transaction's written accounts
and status are fsynced there before `send` returns, so a restarted minter finds the same balances,
supply and signature history it was told about. Sends execute synchronously: a transaction has
landed (or been refused) by the time `send` returns. The embedded chain is single-process: run one
minter per state_dir (localnet is the shared, multi-process variant).
"""

from __future__ import annotations

from pathlib import Path

from solders.pubkey import Pubkey
from solders.transaction import VersionedTransaction

from cloud.chain.base import (
    MintIdentity,
    RecentBlockhash,
    SendRefused,
    SignatureInfo,
    SignatureStatus,
)
from cloud.chain.svm import SvmLedger, TxRefused
from cloud.chain.tokens import decode_mint_supply, decode_token_amount

LEDGER_FILE = "ledger.jsonl"


class EmbeddedBackend:
    identity: MintIdentity

    def __init__(self, state_dir: Path | None) -> None:
        self.ledger = SvmLedger(journal=state_dir / LEDGER_FILE if state_dir else None)

    async def latest_blockhash(self) -> RecentBlockhash:
        blockhash, last_valid = self.ledger.latest_blockhash()
        return RecentBlockhash(blockhash, last_valid)

    async def block_height(self) -> int:
        return self.ledger.block_height

    async def send(self, raw: bytes) -> None:
        try:
            self.ledger.process(VersionedTransaction.from_bytes(raw))
        except TxRefused as exc:
            raise SendRefused(exc.reason) from exc

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        out: list[SignatureStatus | None] = []
        for sig in signatures:
            rec = self.ledger.history.get(sig)
            out.append(None if rec is None else SignatureStatus(rec.slot, rec.err))
        return out

    async def block_time(self, signature: str) -> int | None:
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

    async def lamports(self, address: Pubkey) -> int:
        acc = self.ledger.get_account(address)
        return 0 if acc is None else acc.lamports

    async def airdrop(self, address: Pubkey, lamports: int) -> None:
        self.ledger.airdrop(address, lamports)

    async def close(self) -> None:
        self.ledger.close()


