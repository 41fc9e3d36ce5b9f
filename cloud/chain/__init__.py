"""Chain backends for the minter: `embedded` (LiteSVM in this process) and `rpc` (any Solana cluster,
including `gridtokenx localnet`). Pick one with `open_backend(settings)`."""
