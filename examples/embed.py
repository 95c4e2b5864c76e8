"""Embedding velosql in a Python program: push data in, query results as DuckDB tables, pull Arrow.

    python examples/embed.py

Two streaming statements read one Python source, ``trades``:

* ``positions`` is a CREATE TABLE with EMIT CHANGES: the DuckDB table ``positions`` always holds
  the latest row per symbol, so ordinary SQL (and pandas) can read it while the job runs;
* ``bars`` is a one-minute tumbling window whose rows go to a Python sink: ``engine.pull("bars")``
  returns the rows emitted since the last pull, as a pyarrow Table.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa

import velosql

T0 = dt.datetime(2024, 1, 1, 9, 30)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


APP = """
CREATE TABLE positions AS
SELECT symbol, SUM(quantity) AS shares, ROUND(AVG(price), 2) AS avg_price, COUNT(*) AS trades
FROM trades
GROUP BY symbol
EMIT CHANGES;

CREATE STREAM bars AS
SELECT symbol, _window_start AS minute, MIN(price) AS low, MAX(price) AS high, SUM(quantity) AS volume
FROM trades
GROUP BY symbol
WINDOW TUMBLING(ts, 1m)
EMIT FINAL
WITH ('bars.type' = 'python', 'watermark.max_out_of_orderness' = '5s');
"""


def main() -> None:
    with velosql.connect() as engine:
        # A python source takes its schema from the first push, so push before deploying.
        engine.push(
            "trades",
            pd.DataFrame(
                {
                    "symbol": ["AAPL", "MSFT", "AAPL"],
                    "price": [185.0, 375.5, 185.4],
                    "quantity": [10, 5, 20],
                    "ts": [at(1), at(2), at(30)],
                }
            ),
        )
        # Both statements are deployed by one call, so both read the source from its first row.
        engine.execute(APP)

        # More data, in the other accepted forms: an Arrow table and a list of dicts. A push whose
        # columns differ in type from the first push is cast to the first push's schema.
        engine.push(
            "trades",
            pa.table(
                {
                    "symbol": ["MSFT", "AAPL"],
                    "price": [376.0, 186.1],
                    "quantity": [15, 5],
                    "ts": pa.array([at(65), at(70)], pa.timestamp("ns")),
                }
            ),
        )
        engine.push("trades", [{"symbol": "AAPL", "price": 186.5, "quantity": 30, "ts": at(130)}])

        # No more data: the jobs process what is left, close every window and finish.
        engine.close_source("trades")
        for job in engine.jobs():
            job.wait(timeout=30)
            print(f"{job.name}: {job.status}, {job.metrics()['records_in']} rows in")

        # Results are DuckDB tables of the engine's database: plain SQL, or pandas via .df().
        print(engine.sql("SELECT * FROM positions ORDER BY symbol").df())

        # Windowed results from the python sink, as Arrow.
        bars = engine.pull("bars")
        print(bars.sort_by([("minute", "ascending"), ("symbol", "ascending")]).to_pandas())


if __name__ == "__main__":
    main()
