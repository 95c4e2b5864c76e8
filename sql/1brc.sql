-- SQL Application: 1brc
-- Version: 1.0.0
-- Description: The One Billion Row Challenge: MIN/AVG/MAX temperature per weather station.
--
-- Run from the repository root:   velosql run sql/1brc.sql
-- Result:                          out/1brc.csv (one row per station, sorted by name)
--
-- The input is the challenge's format: `station;temperature` lines without a header. The schema
-- names and types the columns. More rows: python sql/data/generate.py --scale 100

CREATE STREAM weather AS
SELECT
    station,
    MIN(temperature)           AS min_temp,
    ROUND(AVG(temperature), 1) AS avg_temp,
    MAX(temperature)           AS max_temp
FROM measurements
GROUP BY station
ORDER BY station
EMIT FINAL
WITH (
    'measurements.type' = 'file_source',
    'measurements.path' = 'sql/data/measurements.txt',
    'measurements.format' = 'csv_no_header',
    'measurements.delimiter' = ';',
    'measurements.schema' = 'station VARCHAR, temperature DOUBLE',
    'weather.type' = 'file_sink',
    'weather.path' = 'out/1brc.csv'
);
