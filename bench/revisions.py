"""Reads and edits of a document with a long history, on the embedded
engine in process: a document edited a thousand times (cozy-stack's and
CouchDB's ``revs_limit``) against one edited once.

    .venv/bin/python bench/revisions.py [--edits 1200] [--rounds 300]

Each figure is the mean time of one call; the ratio says what the history
costs. A GET of the current revision needs nothing of the history; an
edit adds one revision to it (and, past the limit, stems the oldest).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock

from cozyd.storage.sqlite import EmbeddedStore
from cozyd.testing import sync

DB = "cozybench/io-cozy-bench"


def timed(call, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        call()
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cozyd-revs-") as workdir:
        store = EmbeddedStore(workdir, reactor=Clock())
        sync(store.create_db(DB))
        revs = {}
        for doc_id, edits in (("short", 1), ("long", args.edits)):
            rev = None
            for n in range(edits):
                doc = {"_id": doc_id, "n": n, "title": f"edit {n}"}
                if rev is not None:
                    doc["_rev"] = rev
                rev = sync(store.put_doc(DB, doc))["rev"]
            revs[doc_id] = rev
        history = len(sync(store.get_doc(DB, "long", revs=True))["_revisions"]["ids"])
        print(f"== a document edited once, and one edited {args.edits} times")
        print(f"   (its history as kept: {history} revisions)")
        figures = {}
        for doc_id in ("short", "long"):
            get = timed(lambda doc_id=doc_id: sync(store.get_doc(DB, doc_id)), args.rounds)

            def edit(doc_id=doc_id):
                revs[doc_id] = sync(
                    store.put_doc(DB, {"_id": doc_id, "_rev": revs[doc_id], "n": -1})
                )["rev"]

            figures[doc_id] = (get, timed(edit, args.rounds))
        for name, index in (("GET", 0), ("edit", 1)):
            short, long = figures["short"][index], figures["long"][index]
            print(
                f"  {name:<5} edited once {short * 1e6:8.0f} µs   "
                f"edited {args.edits} times {long * 1e6:8.0f} µs   ratio {long / short:5.2f}"
            )
        sync(store.close())


if __name__ == "__main__":
    main()
