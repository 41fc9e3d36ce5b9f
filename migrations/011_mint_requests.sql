-- 011: manual mint requests (`gridtokenx cloud mint`), served by the running minter even when
-- TOKENIZATION_AUTO_MINT_ENABLED=false (the seed's deployment phases 1-2). Owner: minter.
CREATE TABLE mint_requests (
    id            BIGSERIAL PRIMARY KEY,
    reading_ids   BIGINT[],
    meter_id      TEXT,
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    served_at     TIMESTAMPTZ,
    batch_ids     BIGINT[] NOT NULL DEFAULT '{}',
    CHECK (reading_ids IS NOT NULL OR meter_id IS NOT NULL)
);

CREATE INDEX idx_mint_requests_pending ON mint_requests (id) WHERE served_at IS NULL;
