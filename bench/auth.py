"""What authenticating a request costs.

    .venv/bin/python bench/auth.py [--requests 3000] [--concurrency 8]

Starts the real daemon (embedded engine), creates an instance, a CLI token
and an app token (its permission document written into the instance's
database), then measures in one run the requests/s of ``GET /version``
(no authentication), and ``GET /permissions/self`` with each token. The
ratios authenticated / unauthenticated are what matter (goal: close to 1).
Rounds alternate between the routes so machine noise hits all alike.

Then a flood of wrong logins: the p50 of document GETs of one instance,
alone and while another instance receives ``--flood`` wrong logins
(``--flood-concurrency`` at a time). Password hashing has its own small
pool, so the ratio flooded / alone should stay within 1.5.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.loadgen import LoadResult, median_of, run_load
from cozyd.storage.names import db_name, instance_prefix
from cozyd.testing import TEST_ADMIN_PASSPHRASE, sync
from tests.support.daemon import Daemon, http

DOMAIN = "bench.cozy.localhost"
#: A new flooded instance each round: 1000 failures an hour block one.
FLOODED = "flooded{}.cozy.localhost"
DOCTYPE = "io.cozy.bench"
AUTH = {
    "Authorization": "Basic "
    + base64.b64encode(f"admin:{TEST_ADMIN_PASSPHRASE}".encode()).decode()
}


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
    sync(
        store.put_doc(
            db_name(instance_prefix(DOMAIN), "io.cozy.permissions"),
            {
                "type": "app",
                "source_id": "io.cozy.apps/bench",
                "_id": "bench-permissions",
                "permissions": {"files": {"type": "io.cozy.files", "verbs": ["GET"]}},
            },
        )
    )
    sync(store.close())


def wrong_logins(
    daemon: Daemon, domain: str, *, requests: int, concurrency: int
) -> LoadResult:
    """Wrong passphrases for ``domain`` (JSON answers: 401)."""
    csrf = "bench-csrf-token"
    return run_load(
        daemon.public_url + "/auth/login",
        method="POST",
        headers={
            "Host": domain,
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"_csrf={csrf}",
        },
        body=f"passphrase=wrong&csrf_token={csrf}".encode(),
        concurrency=concurrency,
        requests=requests,
    )


def gets_while(
    daemon: Daemon,
    path: str,
    headers: dict[str, str],
    running: threading.Event | None,
    *,
    minimum: int,
) -> list[float]:
    """Latencies of sequential GETs: ``minimum`` of them, and more until
    ``running`` is cleared."""
    latencies: list[float] = []
    while len(latencies) < minimum or (running is not None and running.is_set()):
        result = run_load(
            daemon.public_url + path, headers=headers, concurrency=1, requests=20
        )
        assert set(result.statuses) == {200}, result.statuses
        latencies.extend(result.latencies)
    return latencies


def login_flood(daemon: Daemon, args) -> None:
    for n in range(args.rounds):
        create = http(
            "POST",
            f"{daemon.admin_url}/instances?Domain="
            f"{FLOODED.format(n)}&Passphrase=right-one&KdfIterations=50000",
            headers=AUTH,
        )
        assert create.status == 201, create.body
    token = admin_token(daemon, Audience="cli", Scope=DOCTYPE)
    headers = {"Host": DOMAIN, "Authorization": f"Bearer {token}"}
    created = http(
        "POST",
        f"{daemon.public_url}/data/{DOCTYPE}/",
        headers={**headers, "Content-Type": "application/json"},
        data=json.dumps({"title": "read under a login flood"}).encode(),
    )
    assert created.status == 201, created.body
    path = f"/data/{DOCTYPE}/{created.json()['id']}"
    gets_while(daemon, path, headers, None, minimum=100)  # warm up
    figures: dict[str, list[float]] = {"alone": [], "flooded": []}
    floods: list[LoadResult] = []
    for n in range(args.rounds):
        figures["alone"].append(
            statistics.median(
                gets_while(daemon, path, headers, None, minimum=args.flood_gets)
            )
        )
        running = threading.Event()
        running.set()

        def flood(domain: str = FLOODED.format(n), running=running) -> None:
            try:
                floods.append(
                    wrong_logins(
                        daemon,
                        domain,
                        requests=args.flood,
                        concurrency=args.flood_concurrency,
                    )
                )
            finally:
                running.clear()

        thread = threading.Thread(target=flood)
        thread.start()
        figures["flooded"].append(
            statistics.median(
                gets_while(daemon, path, headers, running, minimum=args.flood_gets)
            )
        )
        thread.join()
    alone = statistics.median(figures["alone"])
    flooded = statistics.median(figures["flooded"])
    print(
        f"login flood: {args.flood} wrong logins x {args.rounds} rounds, "
        f"concurrency {args.flood_concurrency}, os.getloadavg()={os.getloadavg()}"
    )
    print(floods[-1].line("POST /auth/login (wrong passphrase)"))
    print(
        f"GET /data doc p50 alone {alone * 1000:.2f} ms, during the flood "
        f"{flooded * 1000:.2f} ms"
    )
    print(f"ratio GET p50 flooded / alone: {flooded / alone:.2f} (goal: at most 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood", type=int, default=400)
    parser.add_argument("--flood-concurrency", type=int, default=16)
    parser.add_argument("--flood-gets", type=int, default=200)
    parser.add_argument("--only", choices=["tokens", "flood"], default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cozyd-bench-") as workdir:
        daemon = Daemon(workdir)
        daemon.start()
        try:
            create = http(
                "POST", f"{daemon.admin_url}/instances?Domain={DOMAIN}", headers=AUTH
            )
            assert create.status == 201, create.body
            daemon.stop()
            write_app_permissions(daemon)
            daemon.start()
            cli = admin_token(daemon, Audience="cli", Scope="io.cozy.files")
            app = admin_token(daemon, Audience="app", Subject="bench")
            cases = {
                "GET /version (no auth)": ("/version", {}),
                "GET /permissions/self (CLI token)": (
                    "/permissions/self",
                    {"Authorization": f"Bearer {cli}"},
                ),
                "GET /permissions/self (app token)": (
                    "/permissions/self",
                    {"Authorization": f"Bearer {app}"},
                ),
            }
            results: dict[str, list] = {label: [] for label in cases}
            for _ in range(0 if args.only == "flood" else args.rounds):
                for label, (path, headers) in cases.items():
                    result = run_load(
                        daemon.public_url + path,
                        headers={"Host": DOMAIN, **headers},
                        concurrency=args.concurrency,
                        requests=args.requests,
                    )
                    assert set(result.statuses) == {200}, result.statuses
                    results[label].append(result)
            if args.only != "tokens":
                login_flood(daemon, args)
        finally:
            daemon.stop()
    if args.only == "flood":
        return
    print(
        f"authentication cost: {args.rounds} rounds x {args.requests} requests, "
        f"concurrency {args.concurrency}, os.getloadavg()={os.getloadavg()}"
    )
    for label, runs in results.items():
        print(runs[-1].line(label) + f"   median {median_of(runs):.1f} req/s")
    base = median_of(results["GET /version (no auth)"])
    for label in list(cases)[1:]:
        print(f"ratio {label} / unauthenticated: {median_of(results[label]) / base:.2f}")


if __name__ == "__main__":
    main()
