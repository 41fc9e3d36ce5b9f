-- 031: economic settings are records, not environment (owner: minter, issue 16).
--
-- mint_settings: the ratio, decimals, mint and token program in force, recorded on the minter's first
-- start and by every `gridtokenx cloud settings set-ratio`. A record applies to the readings whose id
-- is at or above its from_reading_id, up to the next record's: a change applies from a point forward,
-- never to history. Every batch names the record it was computed with.

CREATE TABLE mint_settings (
    id               BIGSERIAL PRIMARY KEY,
    mint_address     TEXT NOT NULL,
    token_program    TEXT NOT NULL,
    decimals         INTEGER NOT NULL CHECK (decimals BETWEEN 0 AND 255),
    ratio            TEXT NOT NULL,                       -- as the operator wrote it ("1.0", "3/2")
    ratio_num        NUMERIC(40, 0) NOT NULL CHECK (ratio_num >= 0),
    ratio_den        NUMERIC(40, 0) NOT NULL CHECK (ratio_den > 0),
    from_reading_id  BIGINT NOT NULL UNIQUE,
    reason           TEXT NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE mint_batches ADD COLUMN settings_id BIGINT REFERENCES mint_settings (id);

-- Cumulative minting per meter and settings record: mint = entitled(minted_wh + new Wh, that record's
-- ratio) - minted_units. meter_mint_ledger keeps the totals and the open-batch lock.
CREATE TABLE meter_mint_ledger_settings (
    meter_id      TEXT NOT NULL REFERENCES meters (meter_id),
    settings_id   BIGINT NOT NULL REFERENCES mint_settings (id),
    minted_wh     BIGINT NOT NULL DEFAULT 0 CHECK (minted_wh >= 0),
    minted_units  NUMERIC(40, 0) NOT NULL DEFAULT 0 CHECK (minted_units >= 0),
    PRIMARY KEY (meter_id, settings_id)
);

-- What the running minter does (for `cloud why`, instead of the caller's environment).
CREATE TABLE minter_runtime (
    authority          TEXT PRIMARY KEY,
    auto_mint_enabled  BOOLEAN NOT NULL,
    polling_secs       DOUBLE PRECISION NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
