"""The small interface the minter needs from a chain, and the errors it distinguishes.

Two kinds of failure matter for money: `ChainUnavailable` (we do not know what happened: retry the
same bytes, ask again later) and `SendRefused` (this node refused this transaction now). Neither
says the transaction can never land; only an expired blockhash with no signature status says that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from cloud.errors import CloudError


class ChainError(CloudError):
    """Base for chain backend errors."""


class ChainUnavailable(ChainError):
    """Unreachable, timed out, rate limited: outcome unknown, try again."""


class SendRefused(ChainError):
    """The node refused the transaction (preflight failure, blockhash not found, ...)."""


@dataclass(frozen=True, slots=True)
class RecentBlockhash:
    blockhash: Hash
    last_valid_block_height: int


@dataclass(frozen=True, slots=True)
class SignatureStatus:
    slot: int
    err: str | None
    confirmed: bool = True
    """False while only `processed`: it may still be rolled back, so it is neither landed nor dead."""


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """One entry of the mint authority's history (getSignaturesForAddress)."""

    signature: str
    slot: int
    block_time: int | None
    memo: str | None
    err: str | None


@dataclass(frozen=True, slots=True)
class MintIdentity:
    authority: Keypair
    mint: Pubkey
    decimals: int
    token_program: Pubkey


class ChainBackend(Protocol):
    identity: MintIdentity

    async def latest_blockhash(self) -> RecentBlockhash: ...

    async def block_height(self) -> int: ...

    async def send(self, raw: bytes) -> None:
        """Broadcast; success means "accepted for processing", not landed."""

    async def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]: ...

    async def block_time(self, signature: str, slot: int) -> int | None: ...

    async def signatures_for_address(self, address: Pubkey, *, before: str | None = None,
                                     limit: int = 1000) -> list[SignatureInfo]: ...

    async def simulate_units(self, raw: bytes) -> int:
        """Compute units a signed transaction would consume now (nothing is kept)."""

    async def recent_priority_fees(self, accounts: list[Pubkey]) -> list[int]:
        """Per recent slot, the lowest priority fee (micro-lamports/unit) that landed writing `accounts`."""

    async def token_balance(self, token_account: Pubkey) -> int:
        """Base units in a token account; 0 when it does not exist."""

    async def token_supply(self) -> int: ...

    async def account_exists(self, address: Pubkey) -> bool: ...

    async def account_info(self, address: Pubkey) -> tuple[Pubkey, bytes] | None:
        """(owner program, data) of an account; None when it does not exist."""

    async def lamports(self, address: Pubkey) -> int: ...

    async def airdrop(self, address: Pubkey, lamports: int) -> None: ...

    async def close(self) -> None: ...
