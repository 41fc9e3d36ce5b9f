"""Open the configured chain backend and make sure the mint exists."""

from __future__ import annotations

from cloud.chain.base import ChainBackend, ChainError
from cloud.chain.identity import ensure_identity
from cloud.settings import CloudSettings


async def open_backend(settings: CloudSettings) -> ChainBackend:
    chain = settings.chain
    backend: ChainBackend
    if chain.backend == "embedded":
        from cloud.chain.embedded import EmbeddedBackend

        backend = EmbeddedBackend(chain.state_dir, slot_secs=chain.embedded_slot_secs,
                                  blockhash_ttl=chain.embedded_blockhash_ttl)
    elif chain.backend == "rpc":
        from cloud.chain.rpc import RpcBackend

        backend = RpcBackend(chain.rpc_url, timeout=chain.rpc_timeout_secs,
                             rate_limit_retries=chain.rate_limit_retries,
                             max_backoff_secs=chain.rate_limit_max_backoff_secs)
    else:
        raise ChainError(f"GRIDTOKENX_CHAIN_BACKEND must be embedded or rpc, not {chain.backend!r}")
    try:
        backend.identity = await ensure_identity(backend, chain, settings.tokenization)
    except BaseException:
        await backend.close()
        raise
    return backend
