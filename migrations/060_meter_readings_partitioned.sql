-- 060: meter_readings becomes a table PARTITIONED BY RANGE (id), for deployments storing ~100 million
-- readings a day (issue 20). Owner: ingest; retention: `gridtokenx cloud readings retention`.
--
-- * Partition key id. Reading ids come from one sequence in arrival order, so an id range is a time
--   range. Keeping id as the key keeps PRIMARY KEY (id), the FK from minting_retry_queue,
--   mint_settings.from_reading_id and every by-id update of the minter pruned to one partition.
-- * Partition size: meter_readings_partitioning.partition_size ids (default 10,000,000: ~2.4 hours at
--   100 M/day, ~7 GB with its indexes as measured by `bench preload`). Smaller partitions make
--   retention finer and each partition's indexes small; more than a few thousand partitions slow
--   planning, so 10 M keeps a year under 4,000.
-- * No DEFAULT partition: it would forbid DETACH ... CONCURRENTLY and make each new partition scan it.
--   Instead meter_readings_ensure_partitions() keeps `ahead` empty partitions beyond the sequence
--   (created as plain tables and ATTACHed, which takes only SHARE UPDATE EXCLUSIVE on the parent, so
--   ingest is never blocked). It runs here, in `cloud readings partitions` and `retention`, and in
--   the ingest transaction's retry path when an insert finds no partition (cloud/ingest/commit.py):
--   an insert is retried, never lost.
-- * Idempotency across partitions: a UNIQUE (meter_id, seq) is impossible on a table partitioned by
--   id, so the narrow, unpartitioned meter_reading_keys holds it (PRIMARY KEY (meter_id, seq)). The
--   ingest statement inserts keys ON CONFLICT DO NOTHING and the readings only for the keys it got.
--   It also holds what the ingest context needs — the register neighbours, and the payload's
--   SHA-256 instead of the payload (improvement on the lead's design: a reading's payload is gone
--   once its partition is archived, but a resend must still be told apart as a duplicate (same hash)
--   or equivocation (another hash)). So the context read touches only this table, and the
--   partitions need no (meter_id, seq) index. Keys of archived readings are KEPT: they are what
--   makes a late resend of an archived reading a duplicate instead of a second mint (~180 bytes a
--   reading with its index, against ~720 for the reading, measured by `bench preload`).
-- * Upgrade in place: the existing table is renamed and ATTACHed as the first partition
--   (MINVALUE .. the next partition boundary), with no copy of its rows; its indexes are attached
--   to the parent's, its unique (meter_id, seq) index is dropped after the keys were copied out.

CREATE TABLE meter_readings_partitioning (
    singleton       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    partition_size  BIGINT NOT NULL CHECK (partition_size >= 1000),
    ahead           INTEGER NOT NULL CHECK (ahead >= 1)
);
INSERT INTO meter_readings_partitioning VALUES (TRUE, 10000000, 4);

CREATE TABLE meter_reading_keys (
    meter_id            TEXT NOT NULL,
    seq                 BIGINT NOT NULL,
    reading_id          BIGINT NOT NULL,
    payload_sha256      BYTEA NOT NULL,
    export_wh           BIGINT NOT NULL,
    export_register_wh  BIGINT,
    interval_start      TIMESTAMPTZ NOT NULL,
    interval_end        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (meter_id, seq)
) WITH (fillfactor = 100);   -- insert-only: never updated
-- Insert-only and large: vacuum it for the visibility map (index-only scans), not for dead rows.
ALTER TABLE meter_reading_keys SET (autovacuum_vacuum_insert_scale_factor = 0.01,
                                    autovacuum_analyze_scale_factor = 0.01);

-- What archived readings add to each meter's totals, per wallet and settings record (0: none), so that
-- reconciliation and wallet balances still count the energy (and the mints) of dropped partitions.
-- Written in the same transaction as the DROP of the partition it summarises.
CREATE TABLE meter_readings_archived (
    meter_id        TEXT NOT NULL,
    wallet_address  TEXT NOT NULL,
    settings_id     BIGINT NOT NULL,
    readings        BIGINT NOT NULL,
    wh              BIGINT NOT NULL,
    minted_wh       BIGINT NOT NULL,
    minted_units    NUMERIC(40, 0) NOT NULL,
    PRIMARY KEY (meter_id, wallet_address, settings_id)
);

INSERT INTO meter_reading_keys (meter_id, seq, reading_id, payload_sha256, export_wh, export_register_wh,
                                interval_start, interval_end)
SELECT meter_id, seq, id, sha256(payload), export_wh, export_register_wh, interval_start, interval_end
FROM meter_readings ORDER BY meter_id, seq;

-- The existing table becomes partition p0; its names move out of the way of the parent's.
DROP TRIGGER api_events_readings ON meter_readings;
ALTER TABLE meter_readings RENAME TO meter_readings_p0;
ALTER INDEX meter_readings_pkey RENAME TO meter_readings_p0_pkey;
ALTER INDEX idx_unminted RENAME TO meter_readings_p0_unminted;
ALTER INDEX idx_meter_readings_submitted RENAME TO meter_readings_p0_submitted;
ALTER TABLE meter_readings_p0 DROP CONSTRAINT meter_readings_meter_seq_key;
ALTER TABLE minting_retry_queue DROP CONSTRAINT minting_retry_queue_reading_id_fkey;

CREATE TABLE meter_readings (LIKE meter_readings_p0 INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (id);
-- The sequence must belong to the parent: dropping an archived partition must never drop it.
ALTER SEQUENCE meter_readings_id_seq OWNED BY meter_readings.id;
ALTER TABLE meter_readings ADD PRIMARY KEY (id),
    ADD CONSTRAINT meter_readings_meter_id_fkey FOREIGN KEY (meter_id) REFERENCES meters (meter_id),
    ADD CONSTRAINT meter_readings_mint_batch_id_fkey FOREIGN KEY (mint_batch_id) REFERENCES mint_batches (id);
CREATE INDEX idx_unminted ON meter_readings (id) WHERE minted = FALSE;
CREATE INDEX idx_meter_readings_submitted ON meter_readings (submitted_at);

DO $$
DECLARE
    size  BIGINT := (SELECT partition_size FROM meter_readings_partitioning);
    upto  BIGINT := ((SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                      FROM meter_readings_id_seq) / size + 1) * size;
BEGIN
    EXECUTE format('ALTER TABLE meter_readings ATTACH PARTITION meter_readings_p0'
                   ' FOR VALUES FROM (MINVALUE) TO (%s)', upto);
END $$;

ALTER TABLE minting_retry_queue ADD CONSTRAINT minting_retry_queue_reading_id_fkey
    FOREIGN KEY (reading_id) REFERENCES meter_readings (id);

CREATE TRIGGER api_events_readings AFTER INSERT ON meter_readings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION api_events_on_readings();

-- Keep `ahead` empty partitions beyond the sequence's position; returns how many it created.
-- Partitions are named by their first id (meter_readings_p<first id>).
CREATE FUNCTION meter_readings_ensure_partitions() RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    cfg      meter_readings_partitioning;
    position BIGINT;
    upto     BIGINT;
    name     TEXT;
    created  INTEGER := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(1735290992);  -- one ensure at a time
    SELECT * INTO cfg FROM meter_readings_partitioning;
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO position FROM meter_readings_id_seq;
    SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''?(\d+)''?\)'))[1]::bigint) INTO upto
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'meter_readings'::regclass;
    upto := coalesce(upto, 1);
    WHILE upto <= position + cfg.ahead * cfg.partition_size LOOP
        name := format('meter_readings_p%s', upto);
        EXECUTE format('CREATE TABLE %I (LIKE meter_readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)'
                       ' WITH (fillfactor = 80)', name);
        -- The bound as a CHECK lets ATTACH skip its scan; it is dropped once attached.
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (id >= %s AND id < %s)',
                       name, name || '_bound', upto, upto + cfg.partition_size);
        EXECUTE format('ALTER TABLE meter_readings ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                       name, upto, upto + cfg.partition_size);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_bound');
        upto := upto + cfg.partition_size;
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

SELECT meter_readings_ensure_partitions();
