"""What authenticating a request costs.

    .venv/bin/python bench/auth.py [--requests 3000] [--concurrency 8]

Starts the real daemon (embedded engine), creates an instance, a CLI token
and an app token (its permission document written into the instance's
database), then measures in one run the requests/s of ``GET /version``
(no authentication), and ``GET /permissions/self`` with each token. The
ratios authenticated / unauthenticated are what matter (goal: close to 1).
Rounds alternate between the routes so machine noise hits all alike.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadgen import median_of, run_load  # noqa: E402
from cozyd.storage.names import db_name, instance_prefix  # noqa: E402
from cozyd.testing import TEST_ADMIN_PASSPHRASE, sync  # noqa: E402
from tests.support.daemon import Daemon, http  # noqa: E402

DOMAIN = "bench.cozy.localhost"
AUTH = {"Authorization": "Basic " + base64.b64encode(
    f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()}


def admin_token(daemon: Daemon, **params: str) -> str:
    query = "&".join(f"{k}={quote(v)}" for k, v in {"Domain": DOMAIN, **params}.items())
    response = http("POST", f"{daemon.admin_url}/instances/token?{query}", headers=AUTH)
    assert response.status == 200, response.body
    return response.body.decode()


def write_app_permissions(daemon: Daemon) -> None:
    """Stand-in for an app install: the app's permission document."""
    from twisted.internet.task import Clock

    from cozyd.storage.sqlite import EmbeddedStore

    store = EmbeddedStore(os.path.join(daemon.data_dir, "db"), reactor=Clock())
    sync(store.put_doc(db_name(instance_prefix(DOMAIN), "io.cozy.permissions"), {
        "type": "app", "source_id": "io.cozy.apps/bench",
        "_id": "bench-permissions",
        "permissions": {"files": {"type": "io.cozy.files", "verbs": ["GET"]}}}))
    sync(store.close())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cozyd-bench-") as workdir:
        daemon = Daemon(workdir)
        daemon.start()
        try:
            create = http("POST", f"{daemon.admin_url}/instances?Domain={DOMAIN}",
                          headers=AUTH)
            assert create.status == 201, create.body
            daemon.stop()
            write_app_permissions(daemon)
            daemon.start()
            cli = admin_token(daemon, Audience="cli", Scope="io.cozy.files")
            app = admin_token(daemon, Audience="app", Subject="bench")
            cases = {
                "GET /version (no auth)": ("/version", {}),
                "GET /permissions/self (CLI token)": ("/permissions/self",
                                                      {"Authorization": f"Bearer {cli}"}),
                "GET /permissions/self (app token)": ("/permissions/self",
                                                      {"Authorization": f"Bearer {app}"}),
            }
            results: dict[str, list] = {label: [] for label in cases}
            for _ in range(args.rounds):
                for label, (path, headers) in cases.items():
                    result = run_load(daemon.public_url + path,
                                      headers={"Host": DOMAIN, **headers},
                                      concurrency=args.concurrency, requests=args.requests)
                    assert set(result.statuses) == {200}, result.statuses
                    results[label].append(result)
        finally:
            daemon.stop()
    print(f"authentication cost: {args.rounds} rounds x {args.requests} requests, "
          f"concurrency {args.concurrency}, os.getloadavg()={os.getloadavg()}")
    for label, runs in results.items():
        print(runs[-1].line(label) + f"   median {median_of(runs):.1f} req/s")
    base = median_of(results["GET /version (no auth)"])
    for label in list(cases)[1:]:
        print(f"ratio {label} / unauthenticated: {median_of(results[label]) / base:.2f}")


if __name__ == "__main__":
    main()
