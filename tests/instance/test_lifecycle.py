"""The instance lifecycle on both storage engines (real servers)."""

import json
import os
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from cozyd import passphrase as passphrases
from cozyd.documents import Documents
from cozyd.errors import Conflict, NotFound
from cozyd.instance import defaults
from cozyd.instance.lifecycle import CreateOptions, InstanceManager, ModifyOptions
from cozyd.instance.model import CREATING, Instance
from cozyd.storage.interface import DocNotFound
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import TEST_KDF_ITERATIONS, run_now


@pytest.fixture
def domain(prefix):
    # Unique per test: the CouchDB server is shared by the whole session.
    return f"{prefix[-12:]}.cozy.test:8080"


def manager(store, tmp_path, node_id="node-1"):
    return InstanceManager(
        Documents(store),
        str(tmp_path / "files"),
        run_blocking=run_now,
        kdf_iterations=TEST_KDF_ITERATIONS,
        node_id=node_id,
    )


async def setup(store, tmp_path):
    instances = manager(store, tmp_path)
    await instances.setup()
    return instances


@pytest_twisted.ensureDeferred
async def test_create_builds_everything_the_seed_describes(store, tmp_path, domain):
    instances = await setup(store, tmp_path)
    instance = await instances.create(
        CreateOptions(
            domain=domain,
            locale="fr",
            email="alice@example.com",
            public_name="Alice",
            timezone="Europe/Paris",
            settings={"offer": "premium", "context": "test"},
            disk_quota=5_000_000,
        )
    )
    assert instance.context == "test"
    dbs = await store.list_dbs(instance.prefix)
    for doctype in defaults.DOCTYPES:
        assert db_name(instance.prefix, doctype) in dbs
    files = db_name(instance.prefix, "io.cozy.files")
    index_names = {i["name"] for i in (await store.list_indexes(files))["indexes"]}
    assert {"dir-children", "dir-by-path", "by-dir-id-updated-at"} <= index_names
    clients = await store.list_indexes(db_name(instance.prefix, "io.cozy.oauth.clients"))
    partial = next(i for i in clients["indexes"] if i["name"] == "connected-user-clients")
    assert "pending" in json.dumps(partial["def"]["partial_filter_selector"])

    settings = await store.get_doc(
        db_name(instance.prefix, "io.cozy.settings"), "io.cozy.settings.instance"
    )
    assert settings["email"] == "alice@example.com"
    assert settings["public_name"] == "Alice"
    assert settings["tz"] == "Europe/Paris"
    assert settings["offer"] == "premium"
    assert "context" not in settings

    root = await store.get_doc(files, defaults.ROOT_DIR_ID)
    assert (root["path"], root["name"], root["dir_id"]) == ("/", "", "")
    trash = await store.get_doc(files, defaults.TRASH_DIR_ID)
    assert (trash["path"], trash["dir_id"]) == ("/.cozy_trash", defaults.ROOT_DIR_ID)
    rows = (await store.all_docs(files, include_docs=True))["rows"]
    paths = sorted(r["doc"]["path"] for r in rows if not r["id"].startswith("_design"))
    assert paths == [
        "/",
        "/.cozy_trash",
        "/Administratif",
        "/Photos",
        "/Photos/Envoyées depuis Cozy Photos",
        "/Photos/Sauvegardées depuis mon mobile",
    ]
    by_path = {r["doc"]["path"]: r["doc"] for r in rows if "path" in r.get("doc", {})}
    uploaded = by_path["/Photos/Envoyées depuis Cozy Photos"]
    assert uploaded["dir_id"] == by_path["/Photos"]["_id"]
    assert uploaded["cozyMetadata"]["createdOn"] == f"https://{domain}/"
    assert os.path.isdir(tmp_path / "files" / domain / ".cozy_trash")

    stored = Instance.from_doc(await store.get_doc(INSTANCES_DB, instance.id))
    assert stored.state == "ready" and stored.disk_quota == 5_000_000
    assert len(stored.register_token) == 16
    assert (await instances.get(domain.upper())).prefix == instance.prefix


@pytest_twisted.ensureDeferred
async def test_english_tree_names(store, tmp_path, domain):
    instances = await setup(store, tmp_path)
    instance = await instances.create(CreateOptions(domain=domain))
    files = db_name(instance.prefix, "io.cozy.files")
    rows = (await store.all_docs(files, include_docs=True))["rows"]
    paths = {r["doc"].get("path") for r in rows}
    assert {
        "/Administrative",
        "/Photos",
        "/Photos/Uploaded from Cozy Photos",
        "/Photos/Backed up from my mobile",
    } <= paths


@pytest_twisted.ensureDeferred
async def test_passphrase_onboards_directly(store, tmp_path, domain):
    instances = await setup(store, tmp_path)
    instance = await instances.create(CreateOptions(domain=domain, passphrase="hunter2"))
    assert instance.register_token is None
    assert instance.onboarding_finished and instance.password_defined
    client_hash = passphrases.client_side_hash("hunter2", domain, TEST_KDF_ITERATIONS)
    assert passphrases.check_server_hash(client_hash, instance.passphrase_hash)
    assert not passphrases.check_server_hash("wrong", instance.passphrase_hash)


@pytest_twisted.ensureDeferred
async def test_destroy_leaves_nothing(store, tmp_path, domain):
    instances = await setup(store, tmp_path)
    instance = await instances.create(
        CreateOptions(domain=domain, domain_aliases=("x." + domain,))
    )
    await instances.destroy(domain)
    assert await store.list_dbs(instance.prefix) == []
    assert not os.path.exists(tmp_path / "files" / domain)
    with pytest.raises(DocNotFound):
        await store.get_doc(INSTANCES_DB, instance.id)
    assert await instances.find_by_host("x." + domain) is None
    with pytest.raises(NotFound):
        await instances.destroy(domain)
    if store.engine == "embedded":
        assert not [f for f in os.listdir(tmp_path / "db") if f.startswith(instance.prefix)]
    # The domain and the alias can be used again.
    again = await instances.create(
        CreateOptions(domain=domain, domain_aliases=("x." + domain,))
    )
    assert again.prefix == instance.prefix


@pytest_twisted.ensureDeferred
async def test_concurrent_creations_one_wins(store, tmp_path, domain):
    # Two managers on one store stand for two nodes racing on the claim.
    first, second = await setup(store, tmp_path), manager(store, tmp_path, "node-2")
    results = await defer.DeferredList(
        [
            defer.Deferred.fromCoroutine(m.create(CreateOptions(domain=domain)))
            for m in (first, second, first)
        ],
        consumeErrors=True,
    )
    successes = [r for ok, r in results if ok]
    failures = [r.value for ok, r in results if not ok]
    assert len(successes) == 1
    assert len(failures) == 2 and all(isinstance(f, Conflict) for f in failures)
    assert (await first.get(domain)).rev == successes[0].rev


@pytest_twisted.ensureDeferred
async def test_interrupted_creation_is_repaired(store, tmp_path, domain):
    instances = await setup(store, tmp_path)
    # What a process killed half-way leaves: a claim and some databases.
    half = Instance.new(
        domain, state=CREATING, creation_node="node-1", creation_started=time.time()
    )
    await store.put_doc(INSTANCES_DB, half.to_doc())
    await store.ensure_db(db_name(half.prefix, "io.cozy.files"))
    await store.put_doc(db_name(half.prefix, "io.cozy.files"), {"_id": "leftover"})
    with pytest.raises(NotFound):
        await instances.get(domain)
    assert await instances.find_by_host(domain) is None
    assert domain not in [i.domain for i in await instances.list()]

    created = await instances.create(CreateOptions(domain=domain))
    files = db_name(created.prefix, "io.cozy.files")
    with pytest.raises(DocNotFound):
        await store.get_doc(files, "leftover")
    assert (await instances.get(domain)).state == "ready"

    # destroy repairs it too
    await store.put_doc(INSTANCES_DB, Instance.new("y" + domain, state=CREATING).to_doc())
    await instances.destroy("y" + domain)
    with pytest.raises(NotFound):
        await instances.destroy("y" + domain)


@pytest_twisted.ensureDeferred
async def test_modify_settings_and_aliases(store, tmp_path, domain):
    instances = await setup(store, tmp_path)
    await instances.create(CreateOptions(domain=domain, email="old@example.com"))
    other = "other-" + domain
    await instances.create(CreateOptions(domain=other))
    changed = await instances.modify(
        domain,
        ModifyOptions(
            email="new@example.com",
            public_name="Alice",
            domain_aliases=("a." + domain,),
            blocking_reason="LOGIN_FAILED",
        ),
    )
    assert changed.blocked and changed.blocking_reason == "LOGIN_FAILED"
    settings = await store.get_doc(
        db_name(changed.prefix, "io.cozy.settings"), "io.cozy.settings.instance"
    )
    assert (settings["email"], settings["public_name"]) == ("new@example.com", "Alice")
    assert (await instances.find_by_host("a." + domain)).domain == domain
    with pytest.raises(Conflict):
        await instances.modify(other, ModifyOptions(domain_aliases=("a." + domain,)))
    await instances.modify(domain, ModifyOptions(domain_aliases=()))
    assert await instances.find_by_host("a." + domain) is None
    await instances.modify(other, ModifyOptions(domain_aliases=("a." + domain,)))
    assert (await instances.find_by_host("a." + domain)).domain == other


@pytest_twisted.ensureDeferred
async def test_another_nodes_claim_is_abandoned_only_after_the_lease(
    store, tmp_path, domain
):
    now = [1000.0]
    instances = InstanceManager(
        Documents(store),
        str(tmp_path / "files"),
        run_blocking=run_now,
        node_id="node-1",
        seconds=lambda: now[0],
        creation_lease=600,
    )
    await instances.setup()
    claim = Instance.new(
        domain, state=CREATING, creation_node="node-2", creation_started=now[0] - 10
    )
    await store.put_doc(INSTANCES_DB, claim.to_doc())
    with pytest.raises(Conflict):
        await instances.create(CreateOptions(domain=domain))
    now[0] += 600
    assert (await instances.create(CreateOptions(domain=domain))).state == "ready"
