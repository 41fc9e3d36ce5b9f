-- 040: the HTTP/WebSocket API (owner: cloud/api, issue 18).
--
-- api_tokens: bearer tokens, stored as the SHA-256 of the secret only (the secret is shown once, by
-- `gridtokenx cloud tokens create`). A token has one scope (admin | read | submit), an optional
-- expiry and a revocation time; nothing is ever deleted.
-- api_audit: one row per admin call (who, what, on what, with which parameters, outcome).
-- api_events: the live notifications, written by triggers on the tables ingest and the minter
-- already write, so events exist whichever process produced them (no change to those processes).
-- Every trigger takes one transaction-scoped advisory lock before it draws event ids, so event ids
-- become visible in id order: a client that resumes "after id N" can never miss a lower id that
-- committed later. The lock is held from the trigger to the commit of a single-statement write.

CREATE TABLE api_tokens (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL,
    scope         TEXT NOT NULL CHECK (scope IN ('admin', 'read', 'submit')),
    token_sha256  BYTEA NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,                 -- first characters of the secret, to recognise it in lists
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ,                   -- NULL: never
    revoked_at    TIMESTAMPTZ,
    last_used_at  TIMESTAMPTZ
);

-- API processes cache validated tokens; a change that can invalidate one tells them at once.
CREATE FUNCTION api_tokens_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gridtokenx_tokens', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER api_tokens_changed AFTER UPDATE ON api_tokens FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.scope IS DISTINCT FROM NEW.scope OR OLD.token_sha256 IS DISTINCT FROM NEW.token_sha256)
    EXECUTE FUNCTION api_tokens_changed();

CREATE TABLE api_audit (
    id          BIGSERIAL PRIMARY KEY,
    token_id    BIGINT REFERENCES api_tokens (id),
    token_name  TEXT,
    action      TEXT NOT NULL,                   -- e.g. meters.suspend, mint, reconcile
    target      TEXT,
    params      JSONB NOT NULL DEFAULT '{}',
    status      INTEGER NOT NULL,                -- the HTTP status answered
    outcome     TEXT,
    client      TEXT,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_api_audit_at ON api_audit (at);

CREATE TABLE api_events (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,                   -- readings.accepted | reading.rejected | batch.minted | alert.raised | alert.cleared
    meters      TEXT[] NOT NULL DEFAULT '{}',    -- for subscription filters
    wallets     TEXT[] NOT NULL DEFAULT '{}',
    reading_ids BIGINT[] NOT NULL DEFAULT '{}',  -- readings.accepted: the readings, read at delivery
    body        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_api_events_created ON api_events (created_at);

-- Alert state, so that several API processes raise/clear each alert exactly once (compare-and-swap).
CREATE TABLE api_alert_state (
    name        TEXT PRIMARY KEY,
    firing      BOOLEAN NOT NULL,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION api_events_lock() RETURNS void LANGUAGE sql AS
$$ SELECT pg_advisory_xact_lock(1735289445) $$;  -- 'gtxe'

-- Accepted readings: ONE event per ingest statement (a batch), holding only the reading ids; the API
-- processes read the readings' fields when they deliver it. Copying each reading into its own event
-- row would add ~15 µs per reading to the ingest write (measured by `gridtokenx bench api`).
CREATE FUNCTION api_events_on_readings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows) THEN
        RETURN NULL;
    END IF;
    PERFORM api_events_lock();
    INSERT INTO api_events (kind, meters, wallets, reading_ids, body)
    SELECT 'readings.accepted', array_agg(DISTINCT n.meter_id), array_agg(DISTINCT n.wallet_address),
           array_agg(n.id ORDER BY n.id), jsonb_build_object('count', count(*))
    FROM new_rows n;
    PERFORM pg_notify('gridtokenx_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER api_events_readings AFTER INSERT ON meter_readings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION api_events_on_readings();

CREATE FUNCTION api_events_on_rejected() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows) THEN
        RETURN NULL;
    END IF;
    PERFORM api_events_lock();
    INSERT INTO api_events (kind, meters, wallets, body)
    SELECT 'reading.rejected', CASE WHEN n.meter_id IS NULL THEN '{}' ELSE ARRAY[n.meter_id] END,
           CASE WHEN m.wallet_address IS NULL THEN '{}' ELSE ARRAY[m.wallet_address] END,
           jsonb_build_object('rejection_id', n.id, 'meter_id', n.meter_id, 'seq', n.seq, 'reason', n.reason,
                              'detail', left(n.detail, 300), 'wallet', m.wallet_address)
    FROM new_rows n LEFT JOIN meters m ON m.meter_id = n.meter_id ORDER BY n.id;
    PERFORM pg_notify('gridtokenx_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER api_events_rejected AFTER INSERT ON rejected_readings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION api_events_on_rejected();

CREATE FUNCTION api_events_on_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM api_events_lock();
    INSERT INTO api_events (kind, meters, wallets, body)
    VALUES ('batch.minted', NEW.meter_ids, NEW.wallets,
            jsonb_build_object('batch_id', NEW.id, 'signature', NEW.signature, 'slot', NEW.slot,
                               'wallets', to_jsonb(NEW.wallets), 'amounts', to_jsonb(NEW.amounts::text[]),
                               'reading_ids', to_jsonb(NEW.reading_ids), 'meter_ids', to_jsonb(NEW.meter_ids),
                               'confirmed_at', extract(epoch FROM NEW.confirmed_at)));
    PERFORM pg_notify('gridtokenx_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER api_events_batch AFTER UPDATE OF status ON mint_batches
    FOR EACH ROW WHEN (NEW.status = 'confirmed' AND OLD.status IS DISTINCT FROM 'confirmed')
    EXECUTE FUNCTION api_events_on_batch();
