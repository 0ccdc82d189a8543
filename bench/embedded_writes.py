"""Writes on the embedded engine through cozyd's whole stack, with a py-spy
profile of the daemon while it takes them.

    .venv/bin/python bench/embedded_writes.py [--requests 2000] [--bin DIR]
        [--profile out.txt] [--couchdb-url http://admin:pw@127.0.0.1:5984]

``--bin``: the virtualenv bin directory whose twistd runs the daemon (to
compare two checkouts); ``--profile``: record the daemon with py-spy (in the
same virtualenv as this script) during the c=32 creates and print the top
frames (own samples, and inclusive samples of cozyd's frames);
``--couchdb-url``: measure the same creates and updates on that CouchDB
directly, in the same run, and print the ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.data import BenchDaemon, couch_target, cozyd_target, document, update_load
from bench.loadgen import run_load
from tests.support.daemon import BIN


def top_frames(raw_path: str, n: int = 15) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            samples = int(count)
            frames = stack.split(";")
            total += samples
            own[frames[-1]] += samples
            for frame in set(frames):
                if "cozyd" in frame or "sqlite" in frame:
                    inclusive[frame] += samples
    print(f"  {total} samples; own time:")
    for frame, samples in own.most_common(n):
        print(f"    {samples * 100 / total:5.1f}%  {frame}")
    print("  inclusive (cozyd / sqlite frames):")
    for frame, samples in inclusive.most_common(n):
        print(f"    {samples * 100 / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--bin", default=BIN)
    parser.add_argument("--profile")
    parser.add_argument("--couchdb-url")
    args = parser.parse_args()
    figures: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="cozyd-writes-") as workdir:
        daemon = BenchDaemon(workdir, bin_dir=args.bin)
        daemon.start()
        try:
            print("== cozyd embedded")
            target = cozyd_target(daemon, "cozyd embedded")
            target.call("PUT", "/x", {"seed": True})  # the database exists
            headers = {
                **target.headers,
                "Content-Type": "application/json",
                "Accept": "application/json",
            }
            body = json.dumps(document(1)).encode()
            for c in (1, 32):
                spy = None
                if args.profile and c == 32:
                    spy = subprocess.Popen(
                        [
                            os.path.join(os.path.dirname(sys.executable), "py-spy"),
                            "record",
                            "-f",
                            "raw",
                            "-o",
                            args.profile,
                            "-r",
                            "200",
                            "-p",
                            str(daemon.process.pid),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                create = run_load(
                    target.url("/"),
                    method="POST",
                    headers=headers,
                    body=body,
                    concurrency=c,
                    requests=args.requests,
                )
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(30)
                print("  " + create.line(f"create (c={c})"), flush=True)
                update = update_load(target, headers, c, args.requests)
                print("  " + update.line(f"update (c={c})"), flush=True)
                figures.setdefault("embedded", {}).update(
                    {f"create c={c}": create, f"update c={c}": update}
                )
        finally:
            daemon.stop()
    if args.couchdb_url:
        couch = couch_target(args.couchdb_url.rstrip("/"))
        couch.db_path = f"/bench-writes-{os.getpid()}"
        couch.call("PUT", "")
        headers = {
            **couch.headers,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        body = json.dumps(document(1)).encode()
        print("== CouchDB (direct)")
        try:
            for c in (1, 32):
                create = run_load(
                    couch.url(),
                    method="POST",
                    headers=headers,
                    body=body,
                    concurrency=c,
                    requests=args.requests,
                )
                print("  " + create.line(f"create (c={c})"), flush=True)
                update = update_load(couch, headers, c, args.requests)
                print("  " + update.line(f"update (c={c})"), flush=True)
                figures.setdefault("couchdb", {}).update(
                    {f"create c={c}": create, f"update c={c}": update}
                )
        finally:
            couch.call("DELETE", "")
        print("== embedded / CouchDB direct (goals: >= 1.5 at c=32, >= 2 at c=1)")
        for name, result in figures["embedded"].items():
            ratio = result.rps / figures["couchdb"][name].rps  # type: ignore[attr-defined]
            print(f"  {name}: {ratio:.2f}")
    if args.profile:
        top_frames(args.profile)


if __name__ == "__main__":
    main()
