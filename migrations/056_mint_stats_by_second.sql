-- 056: the guide's key metrics without scanning the last hour of readings (issue 20).
--
-- `read_status` ran the guide's "last hour" queries on every minter poll and every API alert check:
-- a scan of every reading submitted in the last hour, i.e. at 3,500 readings/s 12.6 million rows a
-- second, a cost that grew with the rate and the window, not with the work. The minter now keeps, at
-- each confirmation and in the same transaction, how many readings it minted per second of
-- submission and the sum of their latencies (minted_at - submitted_at). The last hour's figures are
-- then: minted and latency from this table (at most 3,600 rows), unminted from the unminted index
-- (the backlog, which alerts keep small), submitted = minted + unminted. The guide's SQL still runs
-- verbatim and gives the same figures, to the second at the window's edge.
CREATE TABLE mint_stats_by_second (
    submitted_second  BIGINT PRIMARY KEY,                -- floor(epoch of submitted_at)
    minted            BIGINT NOT NULL CHECK (minted >= 0),
    latency_sum_secs  DOUBLE PRECISION NOT NULL
);

INSERT INTO mint_stats_by_second (submitted_second, minted, latency_sum_secs)
SELECT floor(extract(epoch FROM submitted_at))::bigint, count(*), sum(extract(epoch FROM (minted_at - submitted_at)))
FROM meter_readings
WHERE minted AND minted_at IS NOT NULL AND submitted_at >= now() - interval '2 hours'
GROUP BY 1;

-- No query reads minted readings by minted_at (the last-hour figures come from the table above), and
-- each confirmation paid one entry in it per reading.
DROP INDEX IF EXISTS idx_meter_readings_minted_at;
