"""Konnectors run by the real worker against a real daemon.

Each test spawns the daemon (``twistd cozyd``), creates an instance with
``cozyctl``, installs a konnector by writing its folder and documents
(``tests.support.konnectors``) and runs ``KonnectorWorker`` with a
``JobContext`` in a child process on the daemon's storage. The konnectors
are real Node programs, started in the bubblewrap sandbox; they use
``COZY_URL`` and ``COZY_CREDENTIALS`` to write through the HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.konnectors import KONNECTOR_LIB, run_worker, write_code
from tests.support.system_tools import ensure_command

pytestmark = pytest.mark.integration

REFERENCE_ENV = {
    "COZY_URL",
    "COZY_CREDENTIALS",
    "COZY_FIELDS",
    "COZY_PARAMETERS",
    "COZY_PAYLOAD",
    "COZY_LANGUAGE",
    "COZY_LOCALE",
    "COZY_TIME_LIMIT",
    "COZY_JOB_ID",
    "COZY_JOB_MANUAL_EXECUTION",
}

#: What bubblewrap adds: HOME (as nsjail's script does) and PWD.
SANDBOX_ENV = {"HOME", "PWD"}

IMPORTER = r"""
const {request, log, fields} = require('./cozy')
;(async () => {
  const env = Object.assign({}, process.env)
  const account = fields.account
    ? (await request('GET', '/data/io.cozy.accounts/' + fields.account)).json : null
  const self = (await request('GET', '/permissions/self')).json
  const r = await request('POST', '/data/io.cozy.bills/', {
    vendor: 'demo', amount: 12.5, env, uid: process.getuid(),
    auth: account && account.auth, permissions: self
  })
  if (r.status !== 201) { log('critical', 'VENDOR_DOWN ' + r.status + r.text); return }
  log('info', 'created ' + r.json.id)
})().catch(e => { log('critical', 'UNKNOWN_ERROR ' + e); process.exitCode = 1 })
"""


@pytest.fixture(scope="module", autouse=True)
def tools():
    ensure_command("bwrap", "bubblewrap")


def add_instance(daemon, name: str = "alice") -> str:
    domain = f"{name}.cozy.test:{daemon.ports['public']}"
    done = daemon.cozyctl("instances", "add", domain, "--passphrase", "a long passphrase")
    assert done.returncode == 0, done.stderr
    return domain


def spec_for(daemon, domain: str, message: dict, *, files=None, slug="demo", **extra):
    spec = {
        "domain": domain,
        "message": message,
        "install": [
            {
                "slug": slug,
                "files": files or {"index.js": IMPORTER},
                "permissions": {
                    "bills": {"type": "io.cozy.bills"},
                    "accounts": {"type": "io.cozy.accounts"},
                },
                **extra.pop("manifest", {}),
            }
        ],
        **extra,
    }
    if daemon.couchdb_url:
        spec.setdefault("config", {}).update(
            {"storage.engine": "couchdb", "couchdb.url": daemon.couchdb_url}
        )
    return spec


def cli_token(daemon, domain: str, *scopes: str) -> str:
    done = daemon.cozyctl("instances", "token-cli", domain, *scopes)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def find_all(daemon, domain: str, doctype: str) -> list[dict]:
    token = cli_token(daemon, domain, doctype)
    reply = daemon.public(
        "GET",
        f"/data/{doctype}/_all_docs?include_docs=true",
        domain,
        headers={"Authorization": f"Bearer {token}"},
    )
    if reply.status == 404:
        return []
    assert reply.status == 200, reply.body
    return [
        row["doc"] for row in reply.json()["rows"] if not row["id"].startswith("_design/")
    ]


def assert_serving(daemon, domain: str) -> None:
    assert daemon.process.poll() is None
    assert daemon.public("GET", "/version", domain).status == 200


# -- the contract ---------------------------------------------------------------------


def test_konnector_imports_documents(daemon):
    domain = add_instance(daemon)
    result = run_worker(
        daemon.config_path,
        spec_for(
            daemon,
            domain,
            {"konnector": "demo", "folder_to_save": "abc", "extra": 1},
            manual=True,
            trigger_id="trigger-1",
            job_id="job-42",
            timeout=30,
            manifest={"parameters": {"mode": "test"}},
        ),
    )
    assert result["error"] is None, result
    assert [e["type"] for e in result["events"]] == ["info"]
    bills = find_all(daemon, domain, "io.cozy.bills")
    assert len(bills) == 1
    bill = bills[0]
    assert bill["vendor"] == "demo"
    env = bill["env"]
    # Exactly the reference's variables (and the sandbox's HOME and PWD).
    assert set(env) - SANDBOX_ENV == REFERENCE_ENV | {"COZY_TRIGGER_ID"}
    assert env["COZY_URL"] == f"http://{domain}/"
    assert json.loads(env["COZY_FIELDS"]) == {
        "konnector": "demo",
        "folder_to_save": "abc",
        "extra": 1,
    }
    assert json.loads(env["COZY_PARAMETERS"]) == {"mode": "test"}
    assert env["COZY_LANGUAGE"] == "node"
    assert env["COZY_LOCALE"] == "en"
    assert env["COZY_TIME_LIMIT"] == "35"
    assert env["COZY_JOB_ID"] == "job-42"
    assert env["COZY_JOB_MANUAL_EXECUTION"] == "true"
    assert env["COZY_TRIGGER_ID"] == "trigger-1"
    assert env["COZY_PAYLOAD"] == ""
    assert bill["uid"] != 0  # never root, even inside its namespace
    # Its token holds its manifest's permissions, and the folders it
    # writes to (cozy-stack's ensurePermissions).
    rules = bill["permissions"]["data"]["attributes"]["permissions"]
    assert rules["bills"]["type"] == "io.cozy.bills"
    assert rules["referenced folders"] == {
        "type": "io.cozy.files",
        "description": "folders referenced by the konnector",
        "selector": "referenced_by",
        "values": ["io.cozy.konnectors/demo"],
        "verbs": ["ALL"],
    }
    # The token is a konnector token of this instance only.
    other = add_instance(daemon, "bob")
    reply = daemon.public(
        "GET",
        "/data/io.cozy.bills/" + bill["_id"],
        other,
        headers={"Authorization": "Bearer " + env["COZY_CREDENTIALS"]},
    )
    assert reply.status in (400, 401, 403)
    assert_serving(daemon, domain)


@pytest.mark.parametrize(
    ("script", "error", "retry"),
    [
        ("log('critical', 'LOGIN_FAILED')", "LOGIN_FAILED", False),
        (
            "log('critical', 'USER_ACTION_NEEDED.OAUTH_OUTDATED')",
            "USER_ACTION_NEEDED.OAUTH_OUTDATED",
            False,
        ),
        ("log('critical', 'VENDOR_DOWN')", "VENDOR_DOWN", True),
        ("log('critical', 'VENDOR_DOWN', {no_retry: true})", "VENDOR_DOWN", False),
        ("log('error', 'first'); log('error', 'CHALLENGE_ASKED')", "CHALLENGE_ASKED", True),
        (
            "log('error', 'an error'); log('critical', 'LOGIN_FAILED'); log('error', 'after')",
            "LOGIN_FAILED",
            False,
        ),
        ("process.stdout.write('not json\\n'); process.exit(3)", "exit status 3", True),
        ("throw new Error('boom')", "exit status 1", True),
    ],
)
def test_errors_of_the_konnector(make_daemon, script, error, retry):
    daemon = make_daemon()
    domain = add_instance(daemon)
    files = {"index.js": "const {log} = require('./cozy')\n" + script + "\n"}
    result = run_worker(
        daemon.config_path, spec_for(daemon, domain, {"konnector": "demo"}, files=files)
    )
    assert (result["error"], result["retry"]) == (error, retry)


def test_refused_before_running(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    base = spec_for(daemon, domain, {"konnector": "demo"})
    cases = [
        ({**base, "install": [], "message": {"konnector": "missing"}}, "bad trigger"),
        ({**base, "message": {"konnector": "demo", "account": "nope"}}, "bad trigger"),
        ({**base, "message": {}}, "bad trigger"),
        (
            {**base, "install": [{**base["install"][0], "state": "installing"}]},
            "Konnector is not ready",
        ),
    ]
    for spec, error in cases:
        result = run_worker(daemon.config_path, spec)
        assert (result["error"], result["retry"]) == (error, False), spec
    assert find_all(daemon, domain, "io.cozy.bills") == []


# -- hostile konnectors -----------------------------------------------------------------

PROBE = r"""
const fs = require('fs')
const {log, fields} = require('./cozy')
const seen = {}
for (const path of fields.paths) {
  try {
    const st = fs.statSync(path)
    seen[path] = st.isDirectory() ? 'dir:' + fs.readdirSync(path).join(',') : 'read:' + fs.readFileSync(path).length
  } catch (e) { seen[path] = e.code }
}
seen['/proc pids'] = fs.readdirSync('/proc').filter(x => /^\d+$/.test(x)).length
try { fs.writeFileSync('/usr/src/konnector/evil.js', 'x'); seen.code = 'written' } catch (e) { seen.code = e.code }
try { fs.writeFileSync('/tmp/ok', 'x'); seen.tmp = 'written' } catch (e) { seen.tmp = e.code }
log('info', JSON.stringify(seen))
"""


def test_konnector_sees_nothing_of_the_host(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    other = add_instance(daemon, "bob")
    data = daemon.data_dir
    files_root = os.path.join(data, "files")
    # Another instance's konnector code and files, on the host.
    other_code = write_code(data, other, "konnector", "secret", "1.0.0", {"index.js": "//"})
    os.makedirs(os.path.join(files_root, other), exist_ok=True)
    with open(os.path.join(files_root, other, "private.txt"), "w") as f:
        f.write("bob's")
    paths = [
        daemon.config_path,
        os.path.join(daemon.workdir, "cozy-admin-passphrase"),
        daemon.workdir,
        data,
        os.path.join(data, "db"),
        files_root,
        other_code,
        os.path.join(files_root, other, "private.txt"),
        f"/proc/{daemon.process.pid}/environ",
        f"/proc/{daemon.process.pid}/cmdline",
        "/root",
        "/home",
        "/etc/passwd",
        "/etc/shadow",
        "/var/lib",
    ]
    for path in paths:
        assert os.path.exists(path), path  # there, on the host
    result = run_worker(
        daemon.config_path,
        spec_for(
            daemon, domain, {"konnector": "demo", "paths": paths}, files={"index.js": PROBE}
        ),
    )
    assert result["error"] is None, result
    seen = json.loads(result["events"][0]["message"])
    for path in paths:
        assert seen[path] == "ENOENT", (path, seen[path])
    assert seen["/proc pids"] <= 3  # its own processes only
    assert seen["code"] == "EROFS"
    assert seen["tmp"] == "written"
    assert_serving(daemon, domain)


HOSTILE = {
    "fork_bomb": r"""
const {spawn} = require('child_process')
const {log} = require('./cozy')
let n = 0, failed = 0
function more () {
  for (let i = 0; i < 50; i++) {
    try {
      const c = spawn('/bin/sh', ['-c', 'sleep 30'], {stdio: 'ignore'})
      c.on('error', () => { failed++ })
      n++
    } catch (e) { failed++ }
  }
  setTimeout(more, 10)
}
more()
setTimeout(() => log('info', 'spawned ' + n + ' failed ' + failed), 1500)
""",
    "memory": r"""
const keep = []
while (true) keep.push(Buffer.alloc(16 * 1024 * 1024, 1))
""",
    "disk": r"""
const fs = require('fs')
const {log} = require('./cozy')
const chunk = Buffer.alloc(1024 * 1024, 1)
let written = 0
try {
  for (let i = 0; ; i++) { fs.appendFileSync('/tmp/fill-' + (i % 4), chunk); written++ }
} catch (e) { log('critical', 'DISK_FULL ' + e.code + ' after ' + written + ' MiB') }
""",
    "never_exits": r"""
process.on('SIGTERM', () => {})
setInterval(() => {}, 1000)
""",
    "busy_loop": r"""
while (true) {}
""",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_konnector_is_contained(make_daemon, name):
    daemon = make_daemon()
    domain = add_instance(daemon)
    config = {
        "konnectors.processes": 64,
        "konnectors.memory": 256 * 1024**2,
        "konnectors.tmp_size": 8 * 1024**2,
        "konnectors.file_size": 4 * 1024**2,
        "konnectors.kill_grace": 1.0,
        "konnectors.cpu_time": 3,
    }
    timeout = 6.0
    spec = spec_for(
        daemon,
        domain,
        {"konnector": "demo"},
        files={"index.js": HOSTILE[name]},
        timeout=timeout,
        config=config,
    )
    result = run_worker(daemon.config_path, spec)
    # Errored (killed, crashed or reported), never longer than its time.
    assert result["error"] is not None, result
    assert result["seconds"] < timeout + 1.0 + 3.0, result
    if name == "fork_bomb":
        assert result["error"] == "context deadline exceeded"
        spawned = [e["message"] for e in result["events"]]
        assert spawned and "failed 0" not in spawned[0], spawned
    if name == "disk":
        assert result["error"].startswith("DISK_FULL"), result
        written = int(result["error"].split()[-2])
        assert written <= 8, result
    if name == "never_exits":
        assert result["error"] == "context deadline exceeded"
    if name == "busy_loop":
        # SIGXCPU at 3 CPU seconds (or the deadline first on a busy machine).
        # (bubblewrap's init reports a signal as 128 + its number).
        assert result["error"] in (
            "exit status 137",
            "exit status 152",
            "context deadline exceeded",
        ), result
    assert_serving(daemon, domain)


def test_cancellation_stops_the_konnector(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    spec = spec_for(
        daemon,
        domain,
        {"konnector": "demo"},
        files={"index.js": HOSTILE["never_exits"]},
        timeout=60,
        cancel_after=1.0,
        config={"konnectors.kill_grace": 1.0},
    )
    result = run_worker(daemon.config_path, spec)
    assert result["error"] == "cancelled"
    assert result["seconds"] < 5


# -- the sandbox's settings ---------------------------------------------------------------


def test_network_can_be_turned_off(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    spec = spec_for(
        daemon, domain, {"konnector": "demo"}, config={"konnectors.network": False}
    )
    result = run_worker(daemon.config_path, spec)
    assert result["error"].startswith("UNKNOWN_ERROR Error: connect"), result
    assert find_all(daemon, domain, "io.cozy.bills") == []


def test_refuses_to_run_without_namespaces_unless_told(make_daemon, request):
    # A bubblewrap that fails as it does in a container without user namespaces.
    shared = tempfile.mkdtemp(prefix="fake-bwrap-")
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    os.chmod(shared, 0o755)  # the sandbox's uid runs it
    fake = Path(shared) / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely "
        "because the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    daemon = make_daemon(konnectors={"bwrap": str(fake)})
    domain = add_instance(daemon)
    # The daemon says it at start, and keeps serving.
    assert "konnectors cannot run" in daemon.output
    assert_serving(daemon, domain)
    spec = spec_for(daemon, domain, {"konnector": "demo"})
    result = run_worker(daemon.config_path, spec)
    assert (result["error"], result["retry"]) == ("sandbox unavailable", False)
    assert "No permissions to creating new namespace" in result["message"]
    assert "sandbox = none" in result["message"]
    assert find_all(daemon, domain, "io.cozy.bills") == []
    # Chosen explicitly: no sandbox, the konnector runs (and still only
    # gets the reference environment).
    spec.setdefault("config", {})["konnectors.sandbox"] = "none"
    result = run_worker(daemon.config_path, spec)
    assert result["error"] is None, result
    (bill,) = find_all(daemon, domain, "io.cozy.bills")
    assert set(bill["env"]) == REFERENCE_ENV


# -- accounts ----------------------------------------------------------------------------


def test_credentials_encrypted_at_rest_and_clear_for_their_konnector(
    make_daemon, engine_name
):
    daemon = make_daemon(couchdb=engine_name == "couchdb", start=False)
    os.makedirs(daemon.workdir, exist_ok=True)
    done = daemon.cozyctl(
        "config", "gen-keys", os.path.join(daemon.workdir, "cozy-credentials")
    )
    assert done.returncode == 0, done.stderr
    assert (
        oct(os.stat(os.path.join(daemon.workdir, "cozy-credentials.dec")).st_mode & 0o777)
        == "0o400"
    )
    daemon.start()
    domain = add_instance(daemon)
    token = cli_token(daemon, domain, "io.cozy.accounts")
    created = daemon.public(
        "POST",
        "/data/io.cozy.accounts/",
        domain,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        data=json.dumps(
            {
                "account_type": "demo",
                "auth": {"login": "joe", "password": "s3cret!", "secret": {"otp": 42}},
            }
        ).encode(),
    )
    assert created.status == 201, created.body
    account_id = created.json()["id"]
    stored = daemon.public(
        "GET",
        f"/data/io.cozy.accounts/{account_id}",
        domain,
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert stored["auth"]["login"] == "joe"
    assert "password" not in stored["auth"] and "secret" not in stored["auth"]
    assert stored["auth"]["credentials_encrypted"]
    assert stored["auth"]["secret_encrypted"]
    raw = json.dumps(stored)
    assert "s3cret" not in raw
    # On disk too (the embedded engine's files; CouchDB holds what the API showed).
    for root, _dirs, files in os.walk(os.path.join(daemon.data_dir, "db")):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert b"s3cret!" not in f.read()
    # Its konnector reads it in clear; another konnector does not.
    for slug in ("demo", "other"):
        spec = spec_for(
            daemon, domain, {"konnector": slug, "account": account_id}, slug=slug
        )
        result = run_worker(daemon.config_path, spec)
        assert result["error"] is None, result
    bills = {b["env"]["COZY_FIELDS"]: b for b in find_all(daemon, domain, "io.cozy.bills")}
    mine = next(b for f, b in bills.items() if '"demo"' in f)
    theirs = next(b for f, b in bills.items() if '"other"' in f)
    assert {k: mine["auth"][k] for k in ("login", "password", "secret")} == {
        "login": "joe",
        "password": "s3cret!",
        "secret": {"otp": 42},
    }
    assert "password" not in theirs["auth"]
    assert (
        theirs["auth"]["credentials_encrypted"] == stored["auth"]["credentials_encrypted"]
    )


# -- services ----------------------------------------------------------------------------

SERVICE = r"""
const {request, log} = require('./cozy')
;(async () => {
  const r = await request('POST', '/data/io.cozy.bills/', {
    from: 'service', env: Object.keys(process.env).sort(),
    fields: process.env.COZY_FIELDS, couch_doc: process.env.COZY_COUCH_DOC
  })
  if (r.status !== 201) { log('error', r.text); process.exit(4) }
})()
"""


def test_service_of_an_app(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    spec = {
        "domain": domain,
        "worker": "service",
        "message": {"slug": "banks", "name": "categorize", "fields": {"n": 1}},
        "install": [
            {
                "kind": "webapp",
                "slug": "banks",
                "files": {"services/categorize.js": SERVICE.replace("./cozy", "../cozy")},
                "permissions": {"bills": {"type": "io.cozy.bills"}},
                "services": {
                    "categorize": {"type": "node", "file": "services/categorize.js"}
                },
            }
        ],
    }
    # The service file is copied alone as index.js: it gets the client inline.
    inline = KONNECTOR_LIB
    spec["install"][0]["files"]["services/categorize.js"] = (
        "const cozyLib = (() => { const module = {}; "
        + inline
        + "; return module.exports })()\n"
        + SERVICE.replace("require('./cozy')", "cozyLib")
    )
    spec["context"] = {"event": {"verb": "CREATED", "doc": {"_id": "c1", "n": 2}}}
    result = run_worker(daemon.config_path, spec)
    assert result["error"] is None, result
    (bill,) = find_all(daemon, domain, "io.cozy.bills")
    assert bill["from"] == "service"
    assert json.loads(bill["couch_doc"]) == {"_id": "c1", "n": 2}
    assert json.loads(bill["fields"]) == {"n": 1}
    assert set(bill["env"]) - SANDBOX_ENV == {
        "COZY_URL",
        "COZY_CREDENTIALS",
        "COZY_LANGUAGE",
        "COZY_LOCALE",
        "COZY_TIME_LIMIT",
        "COZY_JOB_ID",
        "COZY_COUCH_DOC",
        "COZY_PAYLOAD",
        "COZY_FIELDS",
    }
    spec["message"]["name"] = "missing"
    result = run_worker(daemon.config_path, spec)
    assert (result["error"], result["retry"]) == ("bad trigger", False)


# -- cozyctl konnectors run --------------------------------------------------------------


def test_konnectors_run_against_the_daemon(make_daemon):
    """Until the job routes are in, it gets its CLI token from the admin
    API and reports the public API's answer as a clear error."""
    import argparse

    from cozyd.cli.client import Context
    from cozyd.cli.konnectors_run import cmd_run
    from cozyd.cli.output import CLIError
    from cozyd.testing import TEST_ADMIN_PASSPHRASE

    daemon = make_daemon()
    domain = add_instance(daemon)
    ctx = Context(
        env={"COZY_ADMIN_PASSPHRASE": TEST_ADMIN_PASSPHRASE},
        admin_host="127.0.0.1",
        admin_port=daemon.ports["admin"],
        host="127.0.0.1",
        port=daemon.ports["public"],
    )
    args = argparse.Namespace(slug="demo", domain=domain, account_id=None)
    try:
        cmd_run(args, ctx)
    except CLIError as exc:
        assert exc.message and "Traceback" not in exc.message
    args.domain = None
    with pytest.raises(CLIError, match="missing --domain"):
        cmd_run(args, ctx)
    # The real command line: an error line, no traceback.
    done = daemon.cozyctl("konnectors", "run", "demo", "--domain", domain)
    assert done.returncode == 1, done
    assert done.stderr.startswith("Error: ") and "Traceback" not in done.stderr


def test_deleted_account_runs_on_delete_account(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    files = {
        "index.js": "require('./cozy').log('critical', 'the main file must not run')\n",
        "delete.js": (
            "const {log, fields} = require('./cozy')\n"
            "log('info', 'cleaning ' + fields.account + ' ' + fields.account_deleted)\n"
        ),
    }
    soft = ("io.cozy.accounts.soft_deleted", {"_id": "acc1", "account_type": "demo"})
    message = {"konnector": "demo", "account": "acc1", "account_deleted": True}
    spec = spec_for(
        daemon,
        domain,
        message,
        files=files,
        manifest={"on_delete_account": "../delete.js"},
        docs=[soft],
        check_docs=[["io.cozy.accounts.soft_deleted", "acc1"]],
    )
    result = run_worker(daemon.config_path, spec)
    assert result["error"] is None, result
    assert [e["message"] for e in result["events"]] == ["cleaning acc1 true"]
    assert result["docs"] == {"acc1": False}  # the soft-deleted copy is gone
    # No on_delete_account: nothing runs, nothing fails.
    spec["install"][0].pop("on_delete_account")
    result = run_worker(daemon.config_path, spec)
    assert result["error"] is None and result["events"] == []


PAYLOAD_READER = r"""
const fs = require('fs')
const {log} = require('./cozy')
let p = process.env.COZY_PAYLOAD
const how = p.startsWith('@') ? 'file' : 'env'
if (how === 'file') p = fs.readFileSync(p.slice(1), 'utf8')
const value = JSON.parse(p)
log('info', how + ' ' + value.size + ' ' + value.data.length)
"""


def test_webhook_payload_in_env_or_in_a_file(make_daemon):
    daemon = make_daemon()
    domain = add_instance(daemon)
    for size, how in ((10, "env"), (150_000, "file")):
        spec = spec_for(
            daemon,
            domain,
            {"konnector": "demo"},
            files={"index.js": PAYLOAD_READER},
            context={"payload": {"size": size, "data": "x" * size}},
        )
        result = run_worker(daemon.config_path, spec)
        assert result["error"] is None, result
        assert [e["message"] for e in result["events"]] == [f"{how} {size} {size}"]
