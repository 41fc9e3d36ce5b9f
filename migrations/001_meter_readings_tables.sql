-- 001: the seed guide's tables (meter_readings, minting_retry_queue), adapted to signed MQTT readings:
-- (meter_id, seq) is the idempotency key, energy is integer Wh, the exact signed payload is kept.
-- Plus the meter registry (with key rotation history) and rejected_readings (evidence with a reason).

CREATE TABLE meters (
    meter_id        TEXT PRIMARY KEY,
    public_key      TEXT NOT NULL,                 -- base58 Ed25519 public key (current)
    wallet_address  TEXT NOT NULL,                 -- base58 Solana wallet that is minted to
    meter_type      TEXT NOT NULL,                 -- solar | consumer | hybrid | battery | ...
    capacity_w      BIGINT NOT NULL CHECK (capacity_w >= 0),
    status          TEXT NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'suspended', 'revoked', 'quarantined')),
    status_reason   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every key a meter has had; a reading verifies against the key valid at acceptance time.
CREATE TABLE meter_keys (
    meter_id        TEXT NOT NULL REFERENCES meters (meter_id),
    public_key      TEXT NOT NULL,
    valid_from      TIMESTAMPTZ NOT NULL DEFAULT now(),
    valid_until     TIMESTAMPTZ,                   -- NULL: current key
    PRIMARY KEY (meter_id, public_key)
);

CREATE TABLE meter_readings (
    id                  BIGSERIAL PRIMARY KEY,
    meter_id            TEXT NOT NULL REFERENCES meters (meter_id),
    seq                 BIGINT NOT NULL,
    wallet_address      TEXT NOT NULL,             -- from the registry at acceptance, never from the reading
    interval_start      TIMESTAMPTZ NOT NULL,
    interval_end        TIMESTAMPTZ NOT NULL,
    export_wh           BIGINT NOT NULL CHECK (export_wh >= 0),
    export_register_wh  BIGINT,                    -- NULL for legacy-format readings
    import_wh           BIGINT,
    import_register_wh  BIGINT,
    flags               INTEGER NOT NULL DEFAULT 0,
    format              TEXT NOT NULL CHECK (format IN ('v1', 'legacy')),
    payload             BYTEA NOT NULL,            -- the meter's MQTT payload, byte for byte
    signature           TEXT NOT NULL,             -- base58
    gateway_id          TEXT,
    batch_id            TEXT,
    minted              BOOLEAN NOT NULL DEFAULT FALSE,
    mint_tx_signature   TEXT,
    submitted_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT meter_readings_meter_seq_key UNIQUE (meter_id, seq)
);

-- The minter's work list: unminted readings, oldest first.
CREATE INDEX idx_unminted ON meter_readings (id) WHERE minted = FALSE;
CREATE INDEX idx_meter_readings_wallet ON meter_readings (wallet_address);
CREATE INDEX idx_meter_readings_submitted ON meter_readings (submitted_at);

CREATE TABLE minting_retry_queue (
    id              BIGSERIAL PRIMARY KEY,
    reading_id      BIGINT NOT NULL UNIQUE REFERENCES meter_readings (id),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_retry_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    error_message   TEXT,
    dead_lettered   BOOLEAN NOT NULL DEFAULT FALSE,   -- TRUE: manual review, no more automatic retries
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_retry_next ON minting_retry_queue (next_retry_at) WHERE NOT dead_lettered;

-- Evidence of every reading that was not accepted: the raw bytes and a reason code (protocol.Reason).
CREATE TABLE rejected_readings (
    id              BIGSERIAL PRIMARY KEY,
    meter_id        TEXT,                          -- as claimed (the edge's claim when unparseable)
    seq             BIGINT,
    reason          TEXT NOT NULL,
    detail          TEXT,
    payload         BYTEA NOT NULL,
    payload_sha256  BYTEA NOT NULL,
    gateway_id      TEXT,
    batch_id        TEXT,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A re-sent batch must not count the same rejection twice.
    CONSTRAINT rejected_readings_payload_reason_key UNIQUE (payload_sha256, reason)
);

CREATE INDEX idx_rejected_reason ON rejected_readings (reason, received_at);
CREATE INDEX idx_rejected_meter ON rejected_readings (meter_id, seq);
