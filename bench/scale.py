"""How `_find` and `_changes` grow with the number of documents, on the
embedded engine, through cozyd's whole stack.

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--requests 200]

One daemon, one instance, one doctype that grows: documents are loaded by
``_bulk_docs`` of 10,000 up to each size, then measured at that size:

* ``_find`` on an indexed field (20 results), p50 and p99;
* ``_find`` on an indexed range, sorted, paginated by ``bookmark`` (first page);
* ``_changes?limit=1000`` from the start, and the tail (``since`` 100 changes
  before the end), p50;
* the whole ``_changes`` feed, one request, its time and size.

The last column is the ratio to the figure at the first size: a cost that
does not grow with the database stays near 1×.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.data import BenchDaemon, cozyd_target, document
from bench.loadgen import run_load


def grow(target, have: int, size: int) -> None:
    for start in range(have, size, 10_000):
        docs = [
            {"_id": f"doc-{n:07d}", **document(n)}
            for n in range(start, min(size, start + 10_000))
        ]
        target.call("POST", "/_bulk_docs", {"docs": docs})


def p50_ms(result) -> str:
    return f"{result.percentile(50) * 1000:8.2f} ms"


def measure(target, requests: int) -> dict[str, float]:
    headers = {**target.headers, "Content-Type": "application/json"}
    figures: dict[str, float] = {}

    def find(name: str, body: dict) -> None:
        result = run_load(
            target.url("/_find"),
            method="POST",
            headers=headers,
            body=json.dumps(body).encode(),
            requests=requests,
        )
        assert set(result.statuses) == {200}, result.statuses
        figures[f"{name} p50"] = result.percentile(50)
        figures[f"{name} p99"] = result.percentile(99)

    find("_find indexed, 20 docs", {"selector": {"group": 42}, "limit": 20})
    find(
        "_find indexed range, sorted",
        {
            "selector": {"n": {"$gt": 1000}},
            "sort": [{"n": "asc"}],
            "limit": 100,
            "use_index": "by-n",
        },
    )
    first = run_load(target.url("/_changes?limit=1000"), headers=headers, requests=requests)
    figures["_changes limit=1000 p50"] = first.percentile(50)
    tail = target.call("GET", "/_changes?descending=true&limit=101")["results"][-1]["seq"]
    since = run_load(
        target.url(f"/_changes?since={tail}"), headers=headers, requests=requests
    )
    figures["_changes tail (100) p50"] = since.percentile(50)
    started = time.perf_counter()
    feed = target.call("GET", "/_changes", timeout=3600)
    figures["whole _changes feed"] = time.perf_counter() - started
    figures["(feed length)"] = len(feed["results"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workdir = tempfile.mkdtemp(prefix="cozyd-bench-scale-")
    daemon = BenchDaemon(os.path.join(workdir, "cozyd"))
    daemon.start()
    results: dict[int, dict[str, float]] = {}
    try:
        target = cozyd_target(daemon, "cozyd (embedded)")
        target.call("PUT", "/")  # the doctype's database
        for fields, name in ((["group"], "by-group"), (["n"], "by-n")):
            target.call("POST", "/_index", {"index": {"fields": fields}, "name": name})
        have = 0
        for size in sizes:
            started = time.perf_counter()
            grow(target, have, size)
            loaded = time.perf_counter() - started
            print(
                f"{size:>9,} documents ({size - have:,} loaded in {loaded:.1f} s)",
                flush=True,
            )
            have = size
            results[size] = measure(target, args.requests)
    finally:
        daemon.stop()
    print(
        f"\n_find / _changes on the embedded engine (one run, {args.requests} requests each)"
    )
    names = list(results[sizes[0]])
    print(f"{'':<32}" + "".join(f"{s:>14,}" for s in sizes) + f"{'growth':>10}")
    for name in names:
        row = [results[s][name] for s in sizes]
        if name.startswith("("):
            cells = "".join(f"{int(v):>14,}" for v in row)
            print(f"{name:<32}{cells}")
            continue
        cells = "".join(f"{v * 1000:>11.2f} ms" for v in row)
        growth = row[-1] / row[0] if row[0] else float("nan")
        print(f"{name:<32}{cells}{growth:>9.1f}×")


if __name__ == "__main__":
    main()
