-- SQL Application: customer_totals
-- Version: 1.0.0
-- Description: A continuously updated table: running totals per customer (EMIT CHANGES).
--
-- Run from the repository root:   velosql run sql/changes.sql
-- Result:                          out/customer_changes.csv (one change row per input order)
--
-- EMIT CHANGES writes one row per input row, carrying its customer's updated totals: the file is
-- the changelog. Because this is a CREATE TABLE keyed by customer, the engine also keeps the DuckDB
-- table customer_totals with only the latest row per customer (query it from Python or the REPL).

CREATE TABLE customer_totals AS
SELECT
    customer PRIMARY KEY,
    COUNT(*)              AS orders,
    ROUND(SUM(amount), 2) AS total,
    ROUND(AVG(amount), 2) AS avg_amount,
    MAX(amount)           AS largest,
    MAX(ts)               AS last_order
FROM orders
GROUP BY customer
EMIT CHANGES
WITH (
    'orders.type' = 'file_source',
    'orders.path' = 'sql/data/orders.csv',
    'customer_totals.type' = 'file_sink',
    'customer_totals.path' = 'out/customer_changes.csv'
);
