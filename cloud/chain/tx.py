"""Mint transactions: compute budget, idempotent ATA create + mint_to per wallet, a memo naming the batch.

Every mint transaction starts with SetComputeUnitLimit (from the measured cost of its shape, see
the minter) and SetComputeUnitPrice (the priority fee, micro-lamports per unit). Sizes were
measured (see tests/cloud/chain/test_tx_and_ledger.py): a legacy and a v0 message without lookup
tables are within 2 bytes of each other; without the two compute-budget instructions 10 wallets
plus a short memo fit in 1,232 bytes, with them 9 do and 10 do not. `max_wallets_per_tx` measures
the real serialized size (with both budget instructions) instead of trusting a constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import spl.token.instructions as spl
from solders.compute_budget import ID as COMPUTE_BUDGET_ID
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import VersionedTransaction
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID
from spl.token.models import InitializeMintParams, MintToParams

from cloud.chain.base import MintIdentity
from cloud.chain.svm import MEMO_PROGRAM_ID

PACKET_DATA_SIZE = 1232
MINT_ACCOUNT_SIZE = 82
_DUMMY_HASH = Hash.default()
MAX_COMPUTE_UNITS = 1_400_000  # per transaction, the runtime's ceiling
UNITS_PER_BUMP_ITERATION = 1500  # measured: each bump find_program_address tries past 255 costs this
LAMPORTS_PER_SIGNATURE = 5000


@dataclass(frozen=True, slots=True)
class ComputeBudget:
    """The two compute-budget instructions of a transaction: unit limit and price (micro-lamports/unit)."""

    unit_limit: int
    unit_price: int = 0

    def priority_fee(self) -> int:
        """Lamports paid on top of the signature fee: ceil(limit x price / 1e6), as the runtime charges."""
        return math.ceil(self.unit_limit * self.unit_price / 1_000_000)

    def fee(self, signatures: int = 1) -> int:
        return LAMPORTS_PER_SIGNATURE * signatures + self.priority_fee()

    def instructions(self) -> list[Instruction]:
        return [set_compute_unit_limit(self.unit_limit), set_compute_unit_price(self.unit_price)]


def budget_of(tx: VersionedTransaction) -> ComputeBudget | None:
    """The compute budget a signed transaction carries (None without a unit limit instruction)."""
    msg = tx.message
    keys = msg.account_keys
    limit: int | None = None
    price = 0
    for ix in msg.instructions:
        if keys[ix.program_id_index] != COMPUTE_BUDGET_ID:
            continue
        data = bytes(ix.data)
        if data[:1] == b"\x02" and len(data) >= 5:
            limit = int.from_bytes(data[1:5], "little")
        elif data[:1] == b"\x03" and len(data) >= 9:
            price = int.from_bytes(data[1:9], "little")
    return None if limit is None else ComputeBudget(limit, price)


def token_account(identity: MintIdentity, wallet: Pubkey) -> Pubkey:
    return spl.get_associated_token_address(wallet, identity.mint, identity.token_program)


def ata_bump_iterations(identity: MintIdentity, wallet: Pubkey) -> int:
    """Bumps tried beyond the first when deriving this wallet's token account: the ATA program pays
    UNITS_PER_BUMP_ITERATION compute units for each, so a transaction's cost depends on its wallets."""
    _, bump = Pubkey.find_program_address(
        [bytes(wallet), bytes(identity.token_program), bytes(identity.mint)], ASSOCIATED_TOKEN_PROGRAM_ID)
    return 255 - bump


def mint_instructions(identity: MintIdentity, wallet: Pubkey, amount: int) -> list[Instruction]:
    payer = identity.authority.pubkey()
    return [
        spl.create_idempotent_associated_token_account(payer, wallet, identity.mint, identity.token_program),
        spl.mint_to(MintToParams(program_id=identity.token_program, mint=identity.mint,
                                 dest=token_account(identity, wallet), mint_authority=payer, amount=amount)),
    ]


def build_mint_tx(identity: MintIdentity, entries: Sequence[tuple[Pubkey, int]], memo: str,
                  blockhash: Hash, budget: ComputeBudget | None = None) -> VersionedTransaction:
    """`budget` None: no compute-budget instructions (only to measure the cost of the rest)."""
    ixs: list[Instruction] = [] if budget is None else budget.instructions()
    for wallet, amount in entries:
        ixs.extend(mint_instructions(identity, wallet, amount))
    ixs.append(Instruction(MEMO_PROGRAM_ID, memo.encode(), []))
    message = MessageV0.try_compile(identity.authority.pubkey(), ixs, [], blockhash)
    return VersionedTransaction(message, [identity.authority])


def fits(identity: MintIdentity, entries: Sequence[tuple[Pubkey, int]], memo: str) -> bool:
    """With both compute-budget instructions (their size does not depend on their values)."""
    widest = ComputeBudget(MAX_COMPUTE_UNITS, 2**64 - 1)
    return len(bytes(build_mint_tx(identity, entries, memo, _DUMMY_HASH, widest))) <= PACKET_DATA_SIZE


def max_wallets_per_tx(identity: MintIdentity, memo: str) -> int:
    """How many (ATA create + mint_to) pairs fit with this memo, measured."""
    n = 1
    while fits(identity, [(Keypair().pubkey(), 2**64 - 1) for _ in range(n + 1)], memo):
        n += 1
    return n


def create_mint_tx(authority: Keypair, mint: Keypair, decimals: int, token_program: Pubkey, rent: int,
                   blockhash: Hash, budget: ComputeBudget | None = None) -> VersionedTransaction:
    ixs = [*(budget.instructions() if budget else []),
        create_account(CreateAccountParams(from_pubkey=authority.pubkey(), to_pubkey=mint.pubkey(),
                                           lamports=rent, space=MINT_ACCOUNT_SIZE, owner=token_program)),
        spl.initialize_mint(InitializeMintParams(decimals=decimals, program_id=token_program,
                                                 mint=mint.pubkey(), mint_authority=authority.pubkey())),
    ]
    message = MessageV0.try_compile(authority.pubkey(), ixs, [], blockhash)
    return VersionedTransaction(message, [authority, mint])
