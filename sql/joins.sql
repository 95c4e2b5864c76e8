-- SQL Application: order_shipping
-- Version: 1.0.0
-- Description: Two streams joined: each order with its shipment within 20 minutes (interval join).
--
-- Run from the repository root:   velosql run sql/joins.sql
-- Result:                          out/order_shipping.csv (one row per order)
--
-- A LEFT interval join of two streams: an order and its shipment meet when the later of the two
-- arrives; an order is kept only while a shipment can still match it (20 minutes of event time,
-- by the bound in ON), and an order with no shipment by then comes out with NULL shipment columns
-- once the watermark of both streams has passed it. The result is the batch result of the same
-- SELECT over the two files: `velosql explain sql/joins.sql` shows the join and its state bound.

CREATE STREAM order_shipping AS
SELECT
    o.order_id,
    o.customer,
    o.amount,
    s.carrier,
    s.ts                            AS shipped_at,
    date_diff('second', o.ts, s.ts) AS seconds_to_ship
FROM orders o
LEFT JOIN shipments s
    ON s.order_id = o.order_id
   AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '20' MINUTE
WITH (
    'orders.type' = 'file_source',
    'orders.path' = 'sql/data/orders.csv',
    'shipments.type' = 'file_source',
    'shipments.path' = 'sql/data/shipments.csv',
    'order_shipping.type' = 'file_sink',
    'order_shipping.path' = 'out/order_shipping.csv'
);
