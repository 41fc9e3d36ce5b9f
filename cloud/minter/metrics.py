"""The minter's Prometheus metrics (names in docs/INTERFACES.md), on the process-wide registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNMINTED_BACKLOG = Gauge("gridtokenx_unminted_backlog", "Readings with minted = FALSE")
SUCCESS_RATE = Gauge("gridtokenx_minting_success_rate",
                     "Share (0-100) of readings submitted in the last hour that are minted")
RETRY_QUEUE_SIZE = Gauge("gridtokenx_retry_queue_size", "Rows in minting_retry_queue")
RETRY_AVG_ATTEMPTS = Gauge("gridtokenx_retry_queue_avg_attempts", "Average attempts in the retry queue")
RETRY_MAX_ATTEMPTS = Gauge("gridtokenx_retry_queue_max_attempts", "Maximum attempts in the retry queue")
LATENCY_AVG = Gauge("gridtokenx_minting_latency_avg_seconds",
                    "Average ingest commit → minted latency over the last hour")
LATENCY = Histogram("gridtokenx_mint_latency_seconds", "Ingest commit → confirmed mint, per reading",
                    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600))
MINTED_READINGS = Counter("gridtokenx_minted_readings_total", "Readings marked minted")
MINTED_UNITS = Counter("gridtokenx_minted_base_units_total", "Token base units confirmed minted")
BATCHES = Counter("gridtokenx_mint_batches_total", "Mint batches by outcome", ["outcome"])
DEAD_LETTER = Counter("gridtokenx_dead_letter_total", "Readings moved to manual review")
ALERT = Gauge("gridtokenx_alert", "1 when the GridTokenX Phase 2 guide's alert threshold is crossed", ["name"])

# Paying for it (issue 19): fee payer, priority fee, RPC economy.
FEE_PAYER_LAMPORTS = Gauge("gridtokenx_fee_payer_lamports", "SOL (lamports) of the mint authority, which pays")
FEE_PAYER_BATCHES_LEFT = Gauge("gridtokenx_fee_payer_batches_left",
                               "Worst-case batches (fee + rent of a new token account per wallet) it can pay")
PRIORITY_PRICE = Gauge("gridtokenx_priority_fee_micro_lamports", "Price per compute unit of the last signed batch")
FEES_PAID = Counter("gridtokenx_mint_fees_lamports_total", "Signature + priority fees of confirmed batches")
RPC_CALLS_PER_BATCH = Gauge("gridtokenx_rpc_calls_per_minted_batch",
                            "HTTP RPC requests since start divided by batches confirmed since start")
