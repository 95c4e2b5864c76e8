-- SQL Application: trades_1m
-- Version: 1.0.0
-- Description: One-minute OHLC-style bars per symbol from a CSV of trades.
--
-- Run from the repository root:   velosql run sql/trades_1m.sql
-- Result:                          out/trades_1m.csv (one row per symbol and minute)
--
-- Event time is the `ts` column. Rows may arrive up to 5 s out of order and still count; the three
-- rows of sql/data/trades.csv that arrive 90 s late are kept in the table trades_1m__late instead
-- (see `velosql explain sql/trades_1m.sql`).

CREATE STREAM trades_1m AS
SELECT
    symbol,
    _window_start,
    _window_end,
    COUNT(*)              AS trades,
    SUM(quantity)         AS volume,
    FIRST(price)          AS open,
    MAX(price)            AS high,
    MIN(price)            AS low,
    LAST(price)           AS close,
    ROUND(SUM(price * quantity) / SUM(quantity), 4) AS vwap
FROM trades
GROUP BY symbol
WINDOW TUMBLING(ts, INTERVAL '1' MINUTE)
EMIT FINAL
WITH (
    'trades.type' = 'file_source',
    'trades.path' = 'sql/data/trades.csv',
    'trades_1m.type' = 'file_sink',
    'trades_1m.path' = 'out/trades_1m.csv',
    'watermark.max_out_of_orderness' = '5s'
);
