"""Transaction sizes (measured, legacy vs v0), the ledger's expiry/dedup semantics and its journal."""

from __future__ import annotations

from pathlib import Path

import pytest
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.transaction import Transaction
from spl.token.constants import TOKEN_PROGRAM_ID

from cloud.chain.base import MintIdentity
from cloud.chain.svm import MEMO_PROGRAM_ID, SvmLedger, TxRefused
from cloud.chain.tokens import decode_mint_supply, decode_token_amount
from cloud.chain.tx import (
    MAX_COMPUTE_UNITS,
    PACKET_DATA_SIZE,
    ComputeBudget,
    budget_of,
    build_mint_tx,
    create_mint_tx,
    max_wallets_per_tx,
    mint_instructions,
    token_account,
)
from cloud.minter.store import memo_for


def _mint(ledger: SvmLedger) -> MintIdentity:
    authority, mint = Keypair(), Keypair()
    ledger.airdrop(authority.pubkey(), 10**10)
    blockhash, _ = ledger.latest_blockhash()
    ledger.process(create_mint_tx(authority, mint, 9, TOKEN_PROGRAM_ID, 1461600, blockhash))
    return MintIdentity(authority, mint.pubkey(), 9, TOKEN_PROGRAM_ID)


def test_nine_wallets_fit_a_transaction_and_v0_is_no_bigger_than_legacy() -> None:
    ledger = SvmLedger()
    identity = _mint(ledger)
    memo = memo_for(10**15)
    n = max_wallets_per_tx(identity, memo)
    assert n == 9  # the two compute-budget instructions cost one wallet (10 fit without them)
    wallets = [(Keypair().pubkey(), 10**9 + i) for i in range(n)]
    blockhash, _ = ledger.latest_blockhash()
    v0 = build_mint_tx(identity, wallets, memo, blockhash)
    ixs = [ix for w, a in wallets for ix in mint_instructions(identity, w, a)]
    ixs.append(Instruction(MEMO_PROGRAM_ID, memo.encode(), []))
    legacy = Transaction([identity.authority], Message(ixs, identity.authority.pubkey()), blockhash)
    assert abs(len(bytes(v0)) - len(bytes(legacy))) <= 2  # no lookup tables: the formats cost the same
    # With the compute budget (any values: the instructions have a fixed size) n fit and n + 1 do not;
    # without it one more wallet would.
    budget = ComputeBudget(MAX_COMPUTE_UNITS, 2**64 - 1)
    full = build_mint_tx(identity, wallets, memo, blockhash, ComputeBudget(300_000, 7))
    assert len(bytes(full)) <= PACKET_DATA_SIZE < len(bytes(build_mint_tx(
        identity, [*wallets, (Keypair().pubkey(), 1)], memo, blockhash, budget)))
    assert len(bytes(build_mint_tx(identity, [*wallets, (Keypair().pubkey(), 1)], memo, blockhash))) \
        <= PACKET_DATA_SIZE
    assert budget_of(full) == ComputeBudget(300_000, 7) and budget_of(v0) is None
    record = ledger.process(full)  # and the real SPL programs execute it
    assert record.err is None and record.memo == memo
    supply = ledger.get_account(identity.mint)
    assert supply is not None and decode_mint_supply(bytes(supply.data)) == sum(a for _, a in wallets)



def test_expired_blockhash_and_duplicates_are_refused(tmp_path: Path) -> None:
    ledger = SvmLedger(blockhash_ttl=3, slot_secs=3600)
    identity = _mint(ledger)
    blockhash, last_valid = ledger.latest_blockhash()
    wallet = Keypair().pubkey()
    tx = build_mint_tx(identity, [(wallet, 5)], memo_for(1), blockhash)
    ledger.process(tx)
    with pytest.raises(TxRefused, match="AlreadyProcessed"):
        ledger.process(tx)
    stale = build_mint_tx(identity, [(wallet, 6)], memo_for(2), blockhash)
    ledger.advance(last_valid - ledger.block_height + 1)
    with pytest.raises(TxRefused, match="BlockhashNotFound"):
        ledger.process(stale)


def test_journal_restores_balances_supply_and_history(tmp_path: Path) -> None:
    journal = tmp_path / "ledger.jsonl"
    ledger = SvmLedger(journal=journal)
    identity = _mint(ledger)
    wallet = Keypair().pubkey()
    blockhash, _ = ledger.latest_blockhash()
    tx = build_mint_tx(identity, [(wallet, 1234)], memo_for(7), blockhash)
    ledger.process(tx)
    height = ledger.block_height
    ledger.close()

    again = SvmLedger(journal=journal)
    try:
        acc = again.get_account(token_account(identity, wallet))
        mint = again.get_account(identity.mint)
        assert acc is not None and decode_token_amount(bytes(acc.data)) == 1234
        assert mint is not None and decode_mint_supply(bytes(mint.data)) == 1234
        sig = str(tx.signatures[0])
        assert again.history[sig].memo == memo_for(7)
        assert again.signatures_for(str(identity.authority.pubkey()))[0].signature == sig
        # Every hash handed out before the restart is expired now; the same bytes can never land twice.
        assert again.block_height > height + again.blockhash_ttl
        with pytest.raises(TxRefused):
            again.process(tx)
    finally:
        again.close()


def test_torn_journal_tail_is_cut_and_long_journals_are_compacted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    journal = tmp_path / "ledger.jsonl"
    ledger = SvmLedger(journal=journal)
    identity = _mint(ledger)
    wallet = Keypair().pubkey()
    sigs = []
    for i in range(3):
        blockhash, _ = ledger.latest_blockhash()
        tx = build_mint_tx(identity, [(wallet, 100)], memo_for(i), blockhash)
        ledger.process(tx)
        sigs.append(str(tx.signatures[0]))
    ledger.close()
    with journal.open("a") as fh:
        fh.write('{"t":"tx","record":{"sig":"torn')  # the crash happened mid-write

    import cloud.chain.svm as svm

    monkeypatch.setattr(svm, "COMPACT_AFTER_LINES", 2)
    reopened = SvmLedger(journal=journal)
    blockhash, _ = reopened.latest_blockhash()
    reopened.process(build_mint_tx(identity, [(wallet, 100)], memo_for(9), blockhash))
    reopened.close()
    lines = journal.read_text().splitlines()
    assert lines[0].startswith('{"t":"snapshot"')  # compacted at the second open
    final = SvmLedger(journal=journal)
    try:
        acc = final.get_account(token_account(identity, wallet))
        assert acc is not None and decode_token_amount(bytes(acc.data)) == 400
        assert all(s in final.history for s in sigs)
    finally:
        final.close()
