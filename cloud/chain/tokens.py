"""SPL Token account layouts: the two integers the minter reads (no RPC JSON parsing needed)."""

from __future__ import annotations

import struct


def decode_token_amount(data: bytes) -> int:
    """Token account: mint(32) owner(32) amount(u64 LE) ..."""
    return int(struct.unpack_from("<Q", data, 64)[0])


def decode_mint_supply(data: bytes) -> int:
    """Mint: mint_authority COption<Pubkey>(36) supply(u64 LE) decimals(u8) ..."""
    return int(struct.unpack_from("<Q", data, 36)[0])
