"""A real PouchDB (npm, Node) syncs with ``/data/<doctype>/`` of an
instance, on both storage engines: push, edits on both sides with a
conflict made on purpose, a two-way sync, then a pull into a fresh local
database. Every side must end with the same documents, the same winning
revisions and the same conflicts.

The instance's domain is ``127.0.0.1:<port>``, so PouchDB's plain URL
reaches it without a Host override; its token is an OAuth access token
(``cozyctl instances client-oauth`` + ``token-oauth``) limited to the
doctype.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.daemon import http
from tests.support.node_packages import install_node_packages

pytestmark = pytest.mark.integration

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "support", "pouchdb_sync.js"
)
DOCTYPE = "io.cozy.notes"


@pytest.fixture(scope="module")
def node_modules():
    return str(install_node_packages())


def oauth_token(daemon, domain: str) -> str:
    client = daemon.cozyctl(
        "instances",
        "client-oauth",
        domain,
        "http://localhost/callback",
        "pouchdb-test",
        "github.com/cozy/pouchdb-test",
    )
    assert client.returncode == 0, client.stderr
    client_id = client.stdout.strip().splitlines()[-1]
    made = daemon.cozyctl("instances", "token-oauth", domain, client_id, DOCTYPE)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_pouchdb_sync_both_ways_with_a_conflict(daemon, node_modules, tmp_path):
    domain = f"127.0.0.1:{daemon.ports['public']}"
    added = daemon.cozyctl("instances", "add", domain)
    assert added.returncode == 0, added.stderr
    token = oauth_token(daemon, domain)
    me = http(
        "GET",
        f"{daemon.public_url}/permissions/self",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert me.status == 200 and me.json()["data"]["attributes"]["type"] == "oauth"

    config = tmp_path / "pouchdb.json"
    config.write_text(
        json.dumps({"url": f"{daemon.public_url}/data/{DOCTYPE}", "token": token})
    )
    env = {**os.environ, "NODE_PATH": node_modules}
    done = subprocess.run(
        ["node", SCRIPT, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr + "\n--- cozyd ---\n" + daemon.output[-3000:]
    result = json.loads(done.stdout)

    for name, step in result["steps"].items():
        assert step["ok"] is True and step["doc_write_failures"] == 0, (name, step)
    local, remote, fresh = result["local"], result["remote"], result["fresh"]
    assert sorted(remote) == ["alpha", "beta", "delta", "epsilon"]
    assert local == remote == fresh

    # The conflict on "beta": two children of its first revision, one winner
    # (CouchDB's rule: the greater revision hash), the other kept as a conflict.
    beta = remote["beta"]
    assert beta["rev"].startswith("2-") and len(beta["conflicts"]) == 1
    assert beta["conflicts"][0].startswith("2-")
    assert beta["rev"].split("-")[1] > beta["conflicts"][0].split("-")[1]
    assert beta["body"]["title"] in ("beta (server)", "beta (local)")
    assert remote["alpha"]["rev"].startswith("2-") and remote["alpha"]["body"]["n"] == 2
    assert remote["delta"]["body"] == {"title": "delta", "from": "server"}
    # The local deletion reached the server as a tombstone.
    [gamma] = result["server_gamma"]
    assert gamma["ok"]["_deleted"] is True and gamma["ok"]["_rev"].startswith("2-")

    # And cozyd's own API agrees.
    server = http(
        "GET",
        f"{daemon.public_url}/data/{DOCTYPE}/beta?revs=true&conflicts=true",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert server["_rev"] == beta["rev"] and server["_conflicts"] == beta["conflicts"]
    assert "Traceback" not in daemon.output
