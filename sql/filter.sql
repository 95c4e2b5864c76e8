-- SQL Application: big_orders
-- Version: 1.0.0
-- Description: Filter and transform: large orders, with derived columns, to JSON lines.
--
-- Run from the repository root:   velosql run sql/filter.sql
-- Result:                          out/big_orders.jsonl (one line per order of 100 or more)
--
-- A stateless query: one output row per input row that passes WHERE, in arrival order. Any DuckDB
-- function works in SELECT and WHERE.

CREATE STREAM big_orders AS
SELECT
    order_id,
    customer,
    upper(country)                          AS country,
    amount,
    CASE WHEN amount >= 500 THEN 'xl' ELSE 'l' END AS size,
    round(amount * 0.2, 2)                  AS vat,
    strftime(ts, '%Y-%m-%d %H:%M')          AS minute
FROM orders
WHERE amount >= 100 AND country IN ('DE', 'FR', 'NL')
WITH (
    'orders.type' = 'file_source',
    'orders.path' = 'sql/data/orders.csv',
    'big_orders.type' = 'file_sink',
    'big_orders.path' = 'out/big_orders.jsonl'
);
