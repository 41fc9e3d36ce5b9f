-- 055: the minter writes each reading row once, at confirmation (issue 20).
--
-- Until now a reading was written three times: the ingest insert, `mint_batch_id` at planning and the
-- mint columns at confirmation (and `mint_batch_id = NULL` again when a batch was released). The
-- planning write only marked "this reading is in an open batch", which the batch row already says
-- (`mint_batches.reading_ids`) and which the minter never needed for exclusion: a meter with an open
-- batch is locked by `meter_mint_ledger.open_batch_id`, and the claim skips those meters' readings.
--
-- From now on `meter_readings.mint_batch_id` is the batch that MINTED the reading (set together with
-- `minted`, `mint_tx_signature`, ...), and "in an open batch" is read from this view. Open batches are
-- few (the minter keeps at most its per-pass transaction limit open), so the view is small.
CREATE VIEW open_batch_readings AS
SELECT unnest(b.reading_ids) AS reading_id, b.id AS batch_id
FROM mint_batches b
WHERE b.status IN ('planned', 'sent');

-- Readings planned by the previous code and not minted: their open batch (if any) is in the view now.
UPDATE meter_readings SET mint_batch_id = NULL WHERE NOT minted AND mint_batch_id IS NOT NULL;
