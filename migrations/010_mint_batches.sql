-- 010: the minter's write-ahead log and per-meter cumulative ledger (owner: minter, issue 7).
--
-- A mint batch is one Solana transaction's intent: its readings, per-wallet amounts and per-meter
-- ledger increments are fixed when it is planned, and its signature + serialized bytes are written
-- here BEFORE the first send. Re-signing (new blockhash) is a compare-and-swap on `signature`, allowed
-- only once the previous blockhash expired with no status; every signature ever used is kept.

CREATE TABLE mint_batches (
    id                       BIGSERIAL PRIMARY KEY,
    status                   TEXT NOT NULL DEFAULT 'planned'
                             CHECK (status IN ('planned', 'sent', 'confirmed', 'failed', 'expired')),
    mint_address             TEXT NOT NULL,
    authority                TEXT NOT NULL,
    memo                     TEXT NOT NULL,
    reading_ids              BIGINT[] NOT NULL,
    reading_units            NUMERIC(40, 0)[] NOT NULL,   -- base units attributed to each reading
    wallets                  TEXT[] NOT NULL,
    amounts                  NUMERIC(20, 0)[] NOT NULL,   -- u64 base units per wallet, same order
    meter_ids                TEXT[] NOT NULL,
    meter_wh                 BIGINT[] NOT NULL,           -- validated Wh this batch adds per meter
    meter_units              NUMERIC(40, 0)[] NOT NULL,   -- base units this batch adds per meter
    blockhash                TEXT,
    last_valid_block_height  BIGINT,
    signature                TEXT UNIQUE,
    tx_bytes                 BYTEA,
    sign_attempts            INTEGER NOT NULL DEFAULT 0,
    send_count               INTEGER NOT NULL DEFAULT 0,
    manual                   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at                  TIMESTAMPTZ,
    confirmed_at             TIMESTAMPTZ,
    slot                     BIGINT,
    block_time               TIMESTAMPTZ,
    error                    TEXT,
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_mint_batches_open ON mint_batches (id) WHERE status IN ('planned', 'sent');
CREATE INDEX idx_mint_batches_confirmed ON mint_batches (confirmed_at) WHERE status = 'confirmed';

CREATE TABLE mint_batch_signatures (
    signature                TEXT PRIMARY KEY,
    batch_id                 BIGINT NOT NULL REFERENCES mint_batches (id),
    blockhash                TEXT NOT NULL,
    last_valid_block_height  BIGINT NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_mint_batch_signatures_batch ON mint_batch_signatures (batch_id);

-- Cumulative minting per meter: mint = entitled(minted_wh + new Wh) - minted_units, dust carries.
-- open_batch_id: the one batch that may change this row; a meter with an open batch is not planned.
CREATE TABLE meter_mint_ledger (
    meter_id        TEXT PRIMARY KEY REFERENCES meters (meter_id),
    minted_wh       BIGINT NOT NULL DEFAULT 0 CHECK (minted_wh >= 0),
    minted_units    NUMERIC(40, 0) NOT NULL DEFAULT 0 CHECK (minted_units >= 0),
    open_batch_id   BIGINT REFERENCES mint_batches (id),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE meter_readings
    ADD COLUMN mint_batch_id    BIGINT REFERENCES mint_batches (id),
    ADD COLUMN mint_base_units  NUMERIC(40, 0),
    ADD COLUMN mint_slot        BIGINT,
    ADD COLUMN mint_block_time  TIMESTAMPTZ,
    ADD COLUMN minted_at        TIMESTAMPTZ;

CREATE INDEX idx_meter_readings_mint_batch ON meter_readings (mint_batch_id) WHERE mint_batch_id IS NOT NULL;
CREATE INDEX idx_meter_readings_minted_at ON meter_readings (minted_at) WHERE minted;
