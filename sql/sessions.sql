-- SQL Application: sessions
-- Version: 1.0.0
-- Description: User sessions from page views: a session ends after 2 minutes without a click.
--
-- Run from the repository root:   velosql run sql/sessions.sql
-- Result:                          out/sessions.csv (one row per user session)
--
-- SESSION windows are per GROUP BY key: a user's clicks less than the gap apart belong to one
-- session; _window_end is the last click plus the gap. Sessions are emitted when the watermark
-- passes their end (EMIT FINAL), the rest when the input ends.

CREATE STREAM sessions AS
SELECT
    user,
    _window_start                   AS session_start,
    _window_end                     AS session_end,
    COUNT(*)                        AS clicks,
    COUNT(DISTINCT page)            AS pages,
    STRING_AGG(page, ' > ')         AS path
FROM clicks
GROUP BY user
WINDOW SESSION(ts, 2m)
EMIT FINAL
WITH (
    'clicks.type' = 'file_source',
    'clicks.path' = 'sql/data/clicks.jsonl',
    'sessions.type' = 'file_sink',
    'sessions.path' = 'out/sessions.csv'
);
