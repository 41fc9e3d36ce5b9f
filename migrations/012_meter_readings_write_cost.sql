-- 012: cut PostgreSQL's write amplification per reading (measured by `gridtokenx bench e2e`: the
-- database was the largest CPU consumer, ~130 µs per reading, because each reading is written
-- three times — ingest insert, mint planning, mint confirmation — and every non-HOT update adds an
-- entry to every index).
--  * idx_meter_readings_mint_batch: released batches now find their readings by id (the batch row
--    holds reading_ids), so no query needs it; without it, setting mint_batch_id can be a HOT update.
--  * idx_meter_readings_wallet: no query filters readings by wallet (reconcile groups per meter).
--  * fillfactor 80 leaves room on each page for those HOT updates.
DROP INDEX IF EXISTS idx_meter_readings_mint_batch;
DROP INDEX IF EXISTS idx_meter_readings_wallet;
ALTER TABLE meter_readings SET (fillfactor = 80);
