"""Velostream's quickstart statements as its users write them: the same clauses, WITH keys, relative
paths, header and comment placement (our own comment wording). Shared by the grammar tests and the
conformance tests that run them."""

HELLO_WORLD_SQL = """\
-- SQL Application: hello_world
-- Version: 1.0.0
-- Description: Passthrough of every row
-- =============================================================================
-- A passthrough: every input row is written unchanged to the output file.
-- =============================================================================

CREATE STREAM hello_world AS

-- every column
SELECT *

-- the source, configured in WITH below
FROM input_data

-- one output row per input row
EMIT CHANGES

-- sources and sinks
WITH (
    -- =========================================================================
    -- SOURCE
    -- =========================================================================
    'input_data.type' = 'file_source',

    -- relative to the working directory
    'input_data.path' = './hello_world_input.csv',

    'input_data.format' = 'csv',

    -- =========================================================================
    -- SINK (named after the stream)
    -- =========================================================================
    'hello_world.type' = 'file_sink',

    'hello_world.path' = './output/hello_world_output.csv',

    'hello_world.format' = 'csv'
);
"""

FILTER_SQL = """\
-- SQL Application: filter_demo
-- Version: 1.0.0
-- Description: Filter rows using WHERE clause
-- =============================================================================
-- Only rows with value > 150 pass.
-- =============================================================================

CREATE STREAM filtered_data AS

SELECT *

FROM input_data

-- the filter
-- (a second comment line)
WHERE value > 150

EMIT CHANGES

WITH (
    'input_data.type' = 'file_source',
    'input_data.path' = './hello_world_input.csv',
    'input_data.format' = 'csv',

    'filtered_data.type' = 'file_sink',
    'filtered_data.path' = './output/01_filter_output.csv',
    'filtered_data.format' = 'csv'
);
"""

TRANSFORM_SQL = """\
-- SQL Application: transform_demo
-- Version: 1.0.0
-- Description: Transform columns with calculations and functions
-- =============================================================================

CREATE STREAM transformed_data AS

SELECT
    -- unchanged
    id,

    -- unchanged
    name,

    -- arithmetic
    value * 2 AS doubled_value,

    -- a string function
    UPPER(name) AS name_upper

FROM input_data

EMIT CHANGES

WITH (
    'input_data.type' = 'file_source',
    'input_data.path' = './hello_world_input.csv',
    'input_data.format' = 'csv',

    'transformed_data.type' = 'file_sink',
    'transformed_data.path' = './output/02_transform_output.csv',
    'transformed_data.format' = 'csv'
);
"""

AGGREGATE_SQL = """\
-- SQL Application: aggregate_demo
-- Version: 1.0.0
-- Description: Aggregate data with COUNT, SUM, AVG
-- =============================================================================

-- a table: its rows are updated as data arrives
CREATE TABLE category_stats AS

SELECT
    -- the key of the table
    category PRIMARY KEY,

    -- rows per category
    COUNT(*) AS transaction_count,

    -- total per category
    SUM(amount) AS total_amount,

    -- mean per category
    AVG(amount) AS avg_amount

FROM transactions

-- one group per category
GROUP BY category

EMIT CHANGES

WITH (
    'transactions.type' = 'file_source',
    'transactions.path' = './03_aggregate_input.csv',
    'transactions.format' = 'csv',

    'category_stats.type' = 'file_sink',
    'category_stats.path' = './output/03_aggregate_output.csv',
    'category_stats.format' = 'csv'
);
"""

WINDOW_SQL = """\
-- SQL Application: window_demo
-- Version: 1.0.0
-- Description: Window functions with LAG to compare to previous values
-- =============================================================================

CREATE STREAM price_with_change AS

SELECT
    symbol,
    price,
    timestamp,

    -- the previous price of the same symbol (NULL for its first row)
    LAG(price, 1) OVER (
        -- rows kept per partition
        ROWS WINDOW BUFFER 10 ROWS

        -- one buffer per symbol
        PARTITION BY symbol

        -- which row is the previous one
        ORDER BY timestamp
    ) AS previous_price,

    -- the change since the previous price
    price - LAG(price, 1) OVER (
        ROWS WINDOW BUFFER 10 ROWS
        PARTITION BY symbol
        ORDER BY timestamp
    ) AS price_change

FROM stock_prices

EMIT CHANGES

WITH (
    'stock_prices.type' = 'file_source',
    'stock_prices.path' = './04_window_input.csv',
    'stock_prices.format' = 'csv',

    'price_with_change.type' = 'file_sink',
    'price_with_change.path' = './output/04_window_output.csv',
    'price_with_change.format' = 'csv'
);
"""
