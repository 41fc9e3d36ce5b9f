"""The priority fee: one rule for every transaction we sign (mint creation and mint batches).

`none` pays 0; `fixed` pays GRIDTOKENX_PRIORITY_FEE_MICROLAMPORTS; `dynamic` pays the configured
percentile of getRecentPrioritizationFees over the accounts the transaction writes (at least the
fixed price). Whatever the mode, never more than GRIDTOKENX_PRIORITY_FEE_MAX_MICROLAMPORTS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from solders.pubkey import Pubkey

from cloud.chain.base import ChainBackend, ChainError
from cloud.settings import ChainSettings

MODES = ("none", "fixed", "dynamic")


def percentile(values: Sequence[int], pct: int) -> int:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def wanted_price(backend: ChainBackend, chain: ChainSettings, accounts: list[Pubkey]) -> int:
    """Micro-lamports per unit the mode asks for, before the cap."""
    if chain.priority_fee_mode not in MODES:
        raise ChainError(f"GRIDTOKENX_PRIORITY_FEE_MODE must be one of {', '.join(MODES)}, "
                         f"not {chain.priority_fee_mode!r}")
    if chain.priority_fee_mode == "none":
        return 0
    wanted = chain.priority_fee_micro_lamports
    if chain.priority_fee_mode == "dynamic":
        wanted = max(wanted, percentile(await backend.recent_priority_fees(accounts), chain.priority_fee_percentile))
    return wanted


async def unit_price(backend: ChainBackend, chain: ChainSettings, accounts: list[Pubkey]) -> int:
    return min(await wanted_price(backend, chain, accounts), chain.priority_fee_max_micro_lamports)
