-- 020: what ingest sets aside instead of retrying it (cloud/ingest/boundary.py, consumer.py).
--  * ingest_dead_letters: batch messages that are not a valid envelope (reason: malformed,
--    oversized, topic_mismatch, retained) and batches or items PostgreSQL refused for a reason
--    other than a transient fault (reason: unstorable, with the error). The envelope is kept up to
--    64 KiB; envelope_bytes and envelope_sha256 describe the whole message. Recorded once per
--    (sha256, kind, reason): a gateway re-sending the same bad message adds no rows.
--  * rejected_readings.payload_bytes: the full length of a rejected payload. The stored payload is
--    cut to the protocol's maximum (4096 bytes), and is empty when the gateway's evidence quota
--    was exhausted; payload_sha256 is always the hash of the whole payload.
CREATE TABLE ingest_dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('envelope', 'batch', 'item')),
    reason          TEXT NOT NULL,
    detail          TEXT NOT NULL,
    gateway_id      TEXT,
    batch_id        TEXT,
    envelope        BYTEA NOT NULL,
    envelope_bytes  BIGINT NOT NULL,
    envelope_sha256 BYTEA NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ingest_dead_letters_once UNIQUE (envelope_sha256, kind, reason)
);
CREATE INDEX idx_dead_letters_gateway ON ingest_dead_letters (gateway_id, received_at);

ALTER TABLE rejected_readings ADD COLUMN payload_bytes INTEGER;
