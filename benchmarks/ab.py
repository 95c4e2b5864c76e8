"""Before and after: the trades benchmarks of ``run.py`` for two commits, in one run.

    python benchmarks/ab.py --base 6849ef7                       # base vs the working tree
    python benchmarks/ab.py --base 6849ef7 --rows 2000000 --rounds 3 --only filter,group

The base commit is checked out into a temporary git worktree. ``run.py`` (each tree's own, so
each imports its own velosql) runs the chosen benchmarks for V1 and V2:2, the two trees taking
turns round after round, so drift of the machine falls on both. Each cell is the median of every
round's median-of-``--repeat`` rate; the ratio is after / before. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, only: str, rows: int, repeat: int, processors: str, out: Path) -> list[dict]:
    cmd = [sys.executable, str(tree / "benchmarks" / "run.py"), "--only", only, "--rows", str(rows)]
    cmd += ["--repeat", str(repeat), "--processors", processors, "--json", str(out)]
    subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["trades"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit before (any git revision)")
    ap.add_argument("--only", default="filter,group,tumble,changes")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processors", default="v1,v2:2")
    args = ap.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "velosql"], cwd=ROOT, capture_output=True, text=True
    )
    after_name = head.stdout.strip() + (" + uncommitted" if dirty.stdout.strip() else "")
    rates: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            for round_ in range(args.rounds):
                for label, tree in (("before", base), ("after", ROOT)):
                    print(f"round {round_ + 1}: {label}", file=sys.stderr, flush=True)
                    rows = run(
                        tree, args.only, args.rows, args.repeat, args.processors, Path(tmp) / "out.json"
                    )
                    for r in rows:
                        rates.setdefault((r["name"], r["processor"], label), []).append(r["velosql"])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    print(f"| query | processor | before ({args.base}) | after ({after_name}) | after / before |")
    print("|---|---|---|---|---|")
    for name in args.only.split(","):
        for p in args.processors.split(","):
            before = statistics.median(rates[(name, p, "before")])
            after = statistics.median(rates[(name, p, "after")])
            print(
                f"| Q_{name} | {p} | {before / 1e6:.1f}M rows/s | {after / 1e6:.1f}M rows/s | {after / before:.2f} |"
            )


if __name__ == "__main__":
    main()
