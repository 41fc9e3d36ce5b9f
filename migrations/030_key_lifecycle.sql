-- 030: key lifecycle and a registry version (owner: ingest, issue 16).
--
-- A retired key verifies a reading only when it was retired routinely and the reading's seq is below
-- the key's watermark `below_seq` (exclusive). A key retired as compromised verifies nothing, whatever
-- the reading's timestamp. Keys retired before this migration get the watermark "every seq the meter
-- had stored by now" (max accepted seq + 1), which is what a routine rotation sets by default.

ALTER TABLE meter_keys
    ADD COLUMN below_seq       BIGINT,          -- retired keys: readings with seq < below_seq only
    ADD COLUMN compromised_at  TIMESTAMPTZ,     -- retired as compromised: verifies nothing
    ADD COLUMN retired_reason  TEXT;

UPDATE meter_keys k SET below_seq = coalesce(
        (SELECT max(r.seq) + 1 FROM meter_readings r WHERE r.meter_id = k.meter_id), 0),
    retired_reason = 'rotated before migration 030'
WHERE k.valid_until IS NOT NULL;

ALTER TABLE meter_keys ADD CONSTRAINT meter_keys_retired_has_watermark
    CHECK (valid_until IS NULL OR compromised_at IS NOT NULL OR below_seq IS NOT NULL);

-- One row, bumped in the same transaction as any change to meters or meter_keys. Consumers read it
-- once per batch and refresh their registry cache when it moved: a rotation, suspension or new key
-- is in force for every batch processed after the command returns, on every consumer.
CREATE TABLE registry_version (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version    BIGINT NOT NULL
);
INSERT INTO registry_version VALUES (TRUE, 0);

CREATE FUNCTION bump_registry_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Statement-level with a transition table: one bump per statement that changed rows, none for a
    -- statement that matched nothing (the ingest write's quarantine step usually matches nothing).
    IF EXISTS (SELECT 1 FROM changed) THEN
        UPDATE registry_version SET version = version + 1;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER meters_insert_version AFTER INSERT ON meters REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER meters_update_version AFTER UPDATE ON meters REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER meters_delete_version AFTER DELETE ON meters REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER meter_keys_insert_version AFTER INSERT ON meter_keys REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER meter_keys_update_version AFTER UPDATE ON meter_keys REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
CREATE TRIGGER meter_keys_delete_version AFTER DELETE ON meter_keys REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION bump_registry_version();
