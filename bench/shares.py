"""What a share code costs a request.

    .venv/bin/python bench/shares.py [--requests 2000] [--concurrency 8] [--shares 500]

Starts the real daemon (embedded engine), creates an instance, a document,
``--shares`` shares (so that finding the right one is not trivial) and one
share of that document; then measures in one run the requests/s of ``GET
/data/<doctype>/<id>`` with a CLI token (the baseline), with the share's
code and with its shortcode. Rounds alternate between the three. The
ratios share / CLI are what matter (goal: close to 1: after the first use,
a code is resolved from the node's cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.auth import AUTH, DOCTYPE, DOMAIN, admin_token
from bench.loadgen import median_of, run_load
from tests.support.daemon import Daemon, http


def create_share(daemon: Daemon, token: str, doc_id: str) -> dict:
    body = {
        "data": {
            "attributes": {
                "permissions": {
                    "r": {"type": DOCTYPE, "verbs": ["GET"], "values": [doc_id]}
                }
            }
        }
    }
    response = http(
        "POST",
        f"{daemon.public_url}/permissions?codes=bob",
        headers={
            "Host": DOMAIN,
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/vnd.api+json",
        },
        data=json.dumps(body).encode(),
    )
    assert response.status == 200, response.body
    return response.json()["data"]["attributes"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shares", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cozyd-bench-") as workdir:
        daemon = Daemon(workdir)
        daemon.start()
        try:
            create = http(
                "POST", f"{daemon.admin_url}/instances?Domain={DOMAIN}", headers=AUTH
            )
            assert create.status == 201, create.body
            cli = admin_token(daemon, Audience="cli", Scope=DOCTYPE)
            headers = {"Host": DOMAIN, "Authorization": f"Bearer {cli}"}
            created = http(
                "POST",
                f"{daemon.public_url}/data/{DOCTYPE}/",
                headers={**headers, "Content-Type": "application/json"},
                data=b'{"title": "shared"}',
            )
            assert created.status == 201, created.body
            doc_id = created.json()["id"]
            for n in range(args.shares):
                create_share(daemon, cli, f"other-{n}")
            share = create_share(daemon, cli, doc_id)
            cases = {
                "GET /data doc (CLI token)": cli,
                "GET /data doc (share code)": share["codes"]["bob"],
                "GET /data doc (shortcode)": share["shortcodes"]["bob"],
            }
            path = f"{daemon.public_url}/data/{DOCTYPE}/{doc_id}"
            results: dict[str, list] = {label: [] for label in cases}
            for _ in range(args.rounds):
                for label, bearer in cases.items():
                    result = run_load(
                        path,
                        headers={"Host": DOMAIN, "Authorization": f"Bearer {bearer}"},
                        concurrency=args.concurrency,
                        requests=args.requests,
                    )
                    assert set(result.statuses) == {200}, result.statuses
                    results[label].append(result)
        finally:
            daemon.stop()
    print(
        f"share codes: {args.shares} other shares, {args.rounds} rounds x "
        f"{args.requests} requests, concurrency {args.concurrency}, "
        f"os.getloadavg()={os.getloadavg()}"
    )
    for label, runs in results.items():
        print(runs[-1].line(label) + f"   median {median_of(runs):.1f} req/s")
    base = median_of(results["GET /data doc (CLI token)"])
    for label in list(cases)[1:]:
        print(f"ratio {label} / CLI token: {median_of(results[label]) / base:.2f}")


if __name__ == "__main__":
    main()
