"""SPL Token account layouts: the two integers the minter reads (no RPC JSON parsing needed)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from solders.pubkey import Pubkey

MINT_SIZE = 82


def decode_token_amount(data: bytes) -> int:
    """Token account: mint(32) owner(32) amount(u64 LE) ..."""
    return int(struct.unpack_from("<Q", data, 64)[0])


def decode_mint_supply(data: bytes) -> int:
    """Mint: mint_authority COption<Pubkey>(36) supply(u64 LE) decimals(u8) ..."""
    return int(struct.unpack_from("<Q", data, 36)[0])


@dataclass(frozen=True, slots=True)
class MintState:
    mint_authority: Pubkey | None
    supply: int
    decimals: int
    initialized: bool


def decode_mint(data: bytes) -> MintState | None:
    """Mint: mint_authority COption<Pubkey>(4 + 32) supply(u64) decimals(u8) is_initialized(u8) ...;
    None when `data` is not a mint account (wrong size)."""
    if len(data) < MINT_SIZE:
        return None
    tag = struct.unpack_from("<I", data, 0)[0]
    authority = Pubkey.from_bytes(data[4:36]) if tag == 1 else None
    return MintState(authority, int(struct.unpack_from("<Q", data, 36)[0]), data[44], data[45] == 1)
