"""Mint transactions: idempotent ATA create + mint_to per wallet, a memo naming the batch.

Sizes were measured (see tests/cloud/chain/test_tx.py): a legacy and a v0 message without lookup
tables are within 2 bytes of each other, and 10 wallets plus a short memo fit in 1,232 bytes while
11 do not. `pack` measures the real serialized size instead of trusting a constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import spl.token.instructions as spl
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import VersionedTransaction
from spl.token.models import InitializeMintParams, MintToParams

from cloud.chain.base import MintIdentity
from cloud.chain.svm import MEMO_PROGRAM_ID

PACKET_DATA_SIZE = 1232
MINT_ACCOUNT_SIZE = 82
_DUMMY_HASH = Hash.default()


def token_account(identity: MintIdentity, wallet: Pubkey) -> Pubkey:
    return spl.get_associated_token_address(wallet, identity.mint, identity.token_program)


def mint_instructions(identity: MintIdentity, wallet: Pubkey, amount: int) -> list[Instruction]:
    payer = identity.authority.pubkey()
    return [
        spl.create_idempotent_associated_token_account(payer, wallet, identity.mint, identity.token_program),
        spl.mint_to(MintToParams(program_id=identity.token_program, mint=identity.mint,
                                 dest=token_account(identity, wallet), mint_authority=payer, amount=amount)),
    ]


def build_mint_tx(identity: MintIdentity, entries: Sequence[tuple[Pubkey, int]], memo: str,
                  blockhash: Hash) -> VersionedTransaction:
    ixs: list[Instruction] = []
    for wallet, amount in entries:
        ixs.extend(mint_instructions(identity, wallet, amount))
    ixs.append(Instruction(MEMO_PROGRAM_ID, memo.encode(), []))
    message = MessageV0.try_compile(identity.authority.pubkey(), ixs, [], blockhash)
    return VersionedTransaction(message, [identity.authority])


def fits(identity: MintIdentity, entries: Sequence[tuple[Pubkey, int]], memo: str) -> bool:
    return len(bytes(build_mint_tx(identity, entries, memo, _DUMMY_HASH))) <= PACKET_DATA_SIZE


def max_wallets_per_tx(identity: MintIdentity, memo: str) -> int:
    """How many (ATA create + mint_to) pairs fit with this memo, measured."""
    n = 1
    while fits(identity, [(Keypair().pubkey(), 2**64 - 1) for _ in range(n + 1)], memo):
        n += 1
    return n


def create_mint_tx(authority: Keypair, mint: Keypair, decimals: int, token_program: Pubkey, rent: int,
                   blockhash: Hash) -> VersionedTransaction:
    ixs = [
        create_account(CreateAccountParams(from_pubkey=authority.pubkey(), to_pubkey=mint.pubkey(),
                                           lamports=rent, space=MINT_ACCOUNT_SIZE, owner=token_program)),
        spl.initialize_mint(InitializeMintParams(decimals=decimals, program_id=token_program,
                                                 mint=mint.pubkey(), mint_authority=authority.pubkey())),
    ]
    message = MessageV0.try_compile(authority.pubkey(), ixs, [], blockhash)
    return VersionedTransaction(message, [authority, mint])
