"""Write the input files of the example applications in ``sql/`` (deterministic: same bytes every run).

    python sql/data/generate.py        # from the repository root; rewrites sql/data/*

The files are committed, so the examples run without this script; it exists so that anyone can see
how the data was made and make more of it (``--scale 100`` writes 100 times as many rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
START = dt.datetime(2024, 1, 1, 9, 30)

SYMBOLS = {"AAPL": 185.0, "MSFT": 375.0, "GOOG": 140.0, "AMZN": 152.0, "NVDA": 495.0}
STATIONS = {
    "Abha": 18.0, "Accra": 26.4, "Amsterdam": 10.2, "Anchorage": 2.8, "Athens": 19.2,
    "Bangkok": 28.6, "Berlin": 10.3, "Bogotá": 13.0, "Cairo": 21.4, "Cape Town": 16.2,
    "Chicago": 9.8, "Copenhagen": 9.1, "Dakar": 24.0, "Dublin": 9.8, "Hamburg": 9.7,
    "Helsinki": 5.9, "Istanbul": 13.9, "Jakarta": 26.7, "Kyiv": 8.4, "Lima": 19.2,
    "Lisbon": 17.5, "London": 11.3, "Madrid": 15.0, "Mexico City": 17.5, "Montreal": 6.8,
    "Mumbai": 27.1, "Nairobi": 17.8, "Oslo": 5.7, "Paris": 12.3, "Reykjavík": 4.3,
    "Rome": 15.2, "Santiago": 14.0, "Seoul": 12.5, "St. John's": 5.0, "Sydney": 17.7,
    "Tokyo": 15.4, "Toronto": 9.4, "Vienna": 10.4, "Warsaw": 8.5, "Zürich": 9.3,
}  # fmt: skip
COUNTRIES = ("DE", "FR", "GB", "NL", "US")
PAGES = ("/", "/search", "/product", "/cart", "/checkout", "/help")
CARRIERS = ("DHL", "UPS", "FedEx", "PostNL")


def _iso(t: dt.datetime, timespec: str = "milliseconds") -> str:
    return t.isoformat(timespec=timespec)


def trades(rng: random.Random, n: int) -> list[str]:
    """Trades over about half an hour, mostly in order: a few arrive up to 3 s late (within the
    examples' 5 s lateness) and three arrive more than a minute late (they land in ``trades_1m__late``)."""
    prices = dict(SYMBOLS)
    rows = []
    t = START
    for i in range(n):
        t += dt.timedelta(milliseconds=rng.randint(100, 1700))
        symbol = rng.choice(list(SYMBOLS))
        prices[symbol] = round(prices[symbol] * (1 + rng.gauss(0, 0.001)), 2)
        ts = t - dt.timedelta(milliseconds=rng.randint(0, 3000)) if rng.random() < 0.05 else t
        if i in (n // 3, n // 2, 2 * n // 3):
            ts = t - dt.timedelta(seconds=90)
        rows.append(f"{symbol},{prices[symbol]:.2f},{rng.choice((1, 5, 10, 25, 50, 100))},{_iso(ts)}")
    return ["symbol,price,quantity,ts", *rows]


def measurements(rng: random.Random, n: int) -> list[str]:
    """1BRC-style ``station;temperature`` lines, no header, one decimal."""
    names = list(STATIONS)
    rows = []
    for _ in range(n):
        station = rng.choice(names)
        temp = round(max(-99.9, min(99.9, STATIONS[station] + rng.gauss(0, 10))), 1) + 0.0  # no "-0.0"
        rows.append(f"{station};{temp:.1f}")
    return rows


def orders(rng: random.Random, n: int) -> list[str]:
    """Orders from a few dozen customers; amounts spread over two orders of magnitude."""
    rows = []
    t = START
    for i in range(n):
        t += dt.timedelta(seconds=rng.randint(1, 20))
        customer = f"c{rng.randint(1, 40):03d}"
        amount = round(rng.lognormvariate(3.5, 1.0), 2)
        rows.append(f"{1000 + i},{customer},{rng.choice(COUNTRIES)},{amount:.2f},{_iso(t, 'seconds')}")
    return ["order_id,customer,country,amount,ts", *rows]


def shipments(rng: random.Random, orders: list[str]) -> list[str]:
    """A shipment for most orders, 1 to 30 minutes after it (one in five after 20 minutes, one
    order in eight never shipped), in shipping-time order."""
    rows = []
    for line in orders[1:]:
        order_id, _, _, _, ts = line.split(",")
        if rng.random() < 0.125:
            continue
        delay = rng.randint(60, 1200) if rng.random() < 0.8 else rng.randint(1201, 1800)
        shipped = dt.datetime.fromisoformat(ts) + dt.timedelta(seconds=delay)
        rows.append((shipped, order_id, rng.choice(CARRIERS)))
    rows.sort()
    return [
        "shipment_id,order_id,carrier,ts",
        *(f"{9000 + i},{o},{c},{_iso(t, 'seconds')}" for i, (t, o, c) in enumerate(rows)),
    ]


def clicks(rng: random.Random, n: int) -> list[str]:
    """Page views of a few users in bursts (sessions) separated by pauses of minutes."""
    users = [f"u{i:02d}" for i in range(1, 13)]
    clock = {u: START + dt.timedelta(seconds=rng.randint(0, 300)) for u in users}
    events = []
    for _ in range(n):
        user = rng.choice(users)
        gap = rng.randint(2, 40) if rng.random() < 0.85 else rng.randint(180, 900)
        clock[user] += dt.timedelta(seconds=gap)
        events.append((clock[user], user, rng.choice(PAGES)))
    events.sort()
    return [json.dumps({"user": u, "page": p, "ts": _iso(t, "seconds")}) for t, u, p in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="multiply every row count by this")
    parser.add_argument("--out", default=HERE, help="directory to write (default: sql/data)")
    args = parser.parse_args()
    order_rows = orders(random.Random(3), 500 * args.scale)
    files = {
        "trades.csv": trades(random.Random(1), 2000 * args.scale),
        "measurements.txt": measurements(random.Random(2), 20000 * args.scale),
        "orders.csv": order_rows,
        "clicks.jsonl": clicks(random.Random(4), 600 * args.scale),
        "shipments.csv": shipments(random.Random(5), order_rows),
    }
    os.makedirs(args.out, exist_ok=True)
    for name, lines in files.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"{name}: {len(lines)} lines")


if __name__ == "__main__":
    main()
