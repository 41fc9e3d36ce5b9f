"""The mint authority keypair and the mint: loaded from config or `state_dir`, created on first start.

Files in state_dir (0600): `mint-authority.json` (Solana CLI keypair format, a JSON array of 64
bytes) and `mint.json` ({"mint": address, "decimals": n, "token_program": id}). Creating the mint
goes through the same backend interface as minting, so `embedded`, `localnet` and a devnet behave
alike; on a cluster that funds by airdrop (localnet, devnet) the authority is funded first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from spl.token.constants import TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID

from cloud.chain.base import ChainBackend, ChainError, MintIdentity
from cloud.settings import ChainSettings, TokenizationSettings
from runtime.files import write_atomic

log = logging.getLogger(__name__)

AUTHORITY_FILE = "mint-authority.json"
MINT_FILE = "mint.json"
RENT_EXEMPT_MINT = (128 + 82) * 3480 * 2  # lamports; rent-exempt minimum for an 82-byte account
AIRDROP_LAMPORTS = 10 * 10**9
CREATE_MINT_UNITS = 20_000  # create_account + initialize_mint use ~3,100 units (SPL Token), more for Token-2022


class IdentityError(ChainError):
    pass


def token_program_id(name: str) -> Pubkey:
    if name in ("spl-token", "spl_token", "token"):
        return TOKEN_PROGRAM_ID
    if name in ("token-2022", "token2022", "spl-token-2022"):
        return TOKEN_2022_PROGRAM_ID
    raise IdentityError(f"GRIDTOKENX_TOKEN_PROGRAM must be spl-token or token-2022, not {name!r}")


def load_keypair(path: Path) -> Keypair:
    try:
        raw = json.loads(path.read_text())
        return Keypair.from_bytes(bytes(raw))
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError(f"cannot read keypair {path} ({exc}); it must be a Solana CLI keypair "
                            "file (JSON array of 64 numbers)") from exc


def load_or_create_keypair(path: Path) -> Keypair:
    if path.exists():
        return load_keypair(path)
    kp = Keypair()
    write_atomic(path, json.dumps(list(bytes(kp))))
    log.info("created mint authority keypair %s (%s)", path, kp.pubkey())
    return kp


async def ensure_identity(backend: ChainBackend, chain: ChainSettings,
                          tokenization: TokenizationSettings) -> MintIdentity:
    """The authority and mint for this deployment, creating the mint on first start."""
    program = token_program_id(chain.token_program)
    authority = (load_keypair(chain.authority_keypair) if chain.authority_keypair
                 else load_or_create_keypair(chain.state_dir / AUTHORITY_FILE))
    if chain.mint_address:
        mint = Pubkey.from_string(chain.mint_address)
        await check_mint_on_chain(backend, mint, authority.pubkey(), program, tokenization.decimals,
                                  source="GRIDTOKENX_MINT_ADDRESS")
        return MintIdentity(authority, mint, tokenization.decimals, program)
    mint_file = chain.state_dir / MINT_FILE
    if mint_file.exists():
        doc = json.loads(mint_file.read_text())
        mint = Pubkey.from_string(doc["mint"])
        if doc["decimals"] != tokenization.decimals:
            raise IdentityError(f"mint {mint} has {doc['decimals']} decimals but TOKENIZATION_DECIMALS is "
                                f"{tokenization.decimals}; set it back or use a new GRIDTOKENX_CHAIN_STATE_DIR")
        if not await backend.account_exists(mint):
            raise IdentityError(f"mint {mint} from {mint_file} is not on this cluster; point at the cluster "
                                "that has it, or remove the file to create a new mint")
        await check_mint_on_chain(backend, mint, authority.pubkey(), program, tokenization.decimals,
                                  source=str(mint_file))
        return MintIdentity(authority, mint, int(doc["decimals"]), program)
    return await _create_mint(backend, authority, tokenization.decimals, program, mint_file, chain)


async def check_mint_on_chain(backend: ChainBackend, mint: Pubkey, authority: Pubkey, program: Pubkey,
                              decimals: int, *, source: str) -> None:
    """The mint on chain must be what the configuration says: owned by the configured token program,
    with TOKENIZATION_DECIMALS decimals and our authority as mint authority. One sentence otherwise."""
    from cloud.chain.tokens import decode_mint

    info = await backend.account_info(mint)
    if info is None:
        raise IdentityError(f"mint {mint} ({source}) does not exist on the cluster")
    owner, data = info
    if owner != program:
        raise IdentityError(f"mint {mint} is owned by program {owner}, not by the configured token program "
                            f"{program} (GRIDTOKENX_TOKEN_PROGRAM); the minter refuses to start")
    state = decode_mint(data)
    if state is None or not state.initialized:
        raise IdentityError(f"account {mint} ({source}) is not an initialized mint; the minter refuses to start")
    if state.decimals != decimals:
        raise IdentityError(f"mint {mint} has {state.decimals} decimals on chain but TOKENIZATION_DECIMALS is "
                            f"{decimals}; set TOKENIZATION_DECIMALS={state.decimals} (amounts would be off by "
                            f"10^{abs(state.decimals - decimals)}); the minter refuses to start")
    if state.mint_authority != authority:
        raise IdentityError(f"the mint authority of {mint} on chain is {state.mint_authority}, not the configured "
                            f"authority {authority}; the minter refuses to start")


async def _create_mint(backend: ChainBackend, authority: Keypair, decimals: int, program: Pubkey,
                       mint_file: Path, chain: ChainSettings) -> MintIdentity:
    from cloud.chain.fees import unit_price
    from cloud.chain.tx import ComputeBudget, create_mint_tx

    if await backend.lamports(authority.pubkey()) < AIRDROP_LAMPORTS // 10:
        await backend.airdrop(authority.pubkey(), AIRDROP_LAMPORTS)
    mint = Keypair()
    recent = await backend.latest_blockhash()
    budget = ComputeBudget(CREATE_MINT_UNITS, await unit_price(backend, chain, [authority.pubkey()]))
    tx = create_mint_tx(authority, mint, decimals, program, RENT_EXEMPT_MINT, recent.blockhash, budget)
    raw, sig = bytes(tx), str(tx.signatures[0])
    while True:
        try:
            await backend.send(raw)  # rebroadcast until it lands: sends may be lost
        except ChainError as exc:
            log.debug("mint creation send: %s", exc)
        height = await backend.block_height()
        status = (await backend.signature_statuses([sig]))[0]
        if status is not None and status.confirmed:
            if status.err:
                raise IdentityError(f"creating the mint failed on chain: {status.err}")
            break
        if status is None and height > recent.last_valid_block_height:
            raise IdentityError("creating the mint timed out (blockhash expired unconfirmed); start again")
        await asyncio.sleep(0.2)
    write_atomic(mint_file, json.dumps({"mint": str(mint.pubkey()), "decimals": decimals,
                                          "token_program": str(program)}))
    log.info("created mint %s (decimals %d, authority %s)", mint.pubkey(), decimals, authority.pubkey())
    return MintIdentity(authority, mint.pubkey(), decimals, program)
