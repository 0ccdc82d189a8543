"""The installer on both storage engines, with real downloads (treq) from a
registry server on 127.0.0.1."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from cozyd.apps import layout
from cozyd.apps.http import downloader
from cozyd.apps.installer import AlreadyInstalled, Installer, NotInstalled
from cozyd.apps.sources import Fetcher, ManifestNotReachable
from cozyd.auth import tokens
from cozyd.documents import Documents
from cozyd.instance.model import Instance
from cozyd.permissions.resolver import PermissionResolver
from cozyd.testing import run_now
from tests.support.apps import Registry, app_files, manifest, tarball


@pytest.fixture
def registry():
    server = Registry()
    yield server
    server.stop()


async def world(store, tmp_path, prefix, registry):
    documents = Documents(store)
    instance = Instance.new(f"{prefix[-10:]}.cozy.test")
    instance.prefix = prefix
    await documents.create_index(
        instance,
        "io.cozy.permissions",
        ["source_id", "type"],
        create_db=True,
        ddoc="by-source-and-type",
        name="by-source-and-type",
    )
    resolver = PermissionResolver(store, seconds=reactor.seconds, ttl=60)
    fetcher = Fetcher(
        download=downloader(reactor, timeout=10),
        run_blocking=run_now,
        registries=[registry.url],
        allow_http=True,
    )
    installer = Installer(
        documents,
        str(tmp_path / "data"),
        fetcher,
        run_blocking=run_now,
        seconds=reactor.seconds,
        forget_permissions=resolver.forget_source,
    )
    return instance, installer, resolver


@pytest_twisted.ensureDeferred
async def test_install_update_uninstall(store, tmp_path, prefix, registry):
    registry.publish("notes", "1.0.0", tarball(app_files(manifest())))
    instance, installer, resolver = await world(store, tmp_path, prefix, registry)
    states = []
    doc = await installer.install(
        instance, layout.WEBAPP, "notes", "registry://notes", on_state=states.append
    )
    assert [s["state"] for s in states] == ["installing", "ready"]
    assert doc["version"] == "1.0.0" and doc["source"] == "registry://notes"
    assert len(doc["checksum"]) == 64
    code = installer.code_dir(instance, layout.WEBAPP, doc)
    assert os.path.isfile(os.path.join(code, "index.html"))
    claims = tokens.Claims(
        audience=tokens.APP, issuer=instance.domain, issued_at=0, subject="notes"
    )
    rules = await resolver.for_claims(instance, claims)
    assert [r.type for _, r in rules.rules] == ["io.cozy.notes"]
    with pytest.raises(AlreadyInstalled):
        await installer.install(instance, layout.WEBAPP, "notes", "registry://notes")

    more = {"notes": {"type": "io.cozy.notes"}, "files": {"type": "io.cozy.files"}}
    registry.publish(
        "notes", "1.1.0", tarball(app_files(manifest(version="1.1.0", permissions=more)))
    )
    held = await installer.update(instance, layout.WEBAPP, "notes", permissions_acked=False)
    assert held["version"] == "1.0.0" and held["available_version"] == "1.1.0"
    updated = await installer.update(
        instance, layout.WEBAPP, "notes", permissions_acked=True
    )
    assert updated["version"] == "1.1.0" and "available_version" not in updated
    rules = await resolver.for_claims(instance, claims)
    assert sorted(r.type for _, r in rules.rules) == ["io.cozy.files", "io.cozy.notes"]
    assert not os.path.exists(code)

    # A registry that forgets the app: the update fails, 1.1.0 stays.
    registry.versions.clear()
    registry.latest.clear()
    with pytest.raises(ManifestNotReachable):
        await installer.update(instance, layout.WEBAPP, "notes", permissions_acked=True)
    kept = await installer.get(instance, layout.WEBAPP, "notes")
    assert kept["version"] == "1.1.0" and kept["state"] == "ready"
    listed, _ = await installer.list(instance, layout.WEBAPP)
    assert [d["slug"] for d in listed] == ["notes"]

    await installer.uninstall(instance, layout.WEBAPP, "notes")
    with pytest.raises(NotInstalled):
        await installer.get(instance, layout.WEBAPP, "notes")
    assert await installer.permissions.find(instance, layout.WEBAPP, "notes") is None
    assert not os.path.exists(
        os.path.dirname(installer.code_dir(instance, layout.WEBAPP, kept))
    )


@pytest_twisted.ensureDeferred
async def test_a_failed_install_leaves_nothing(store, tmp_path, prefix, registry):
    entry = registry.publish("bad", "1.0.0", tarball({"index.html": b"no manifest"}))
    instance, installer, _ = await world(store, tmp_path, prefix, registry)
    with pytest.raises(ManifestNotReachable):
        await installer.install(instance, layout.WEBAPP, "bad", "registry://bad")
    assert await installer.find(instance, layout.WEBAPP, "bad") is None
    assert await installer.permissions.find(instance, layout.WEBAPP, "bad") is None
    slug_dir = layout.slug_dir(
        str(tmp_path / "data"), instance.domain, layout.WEBAPP, "bad"
    )
    assert not os.path.exists(slug_dir)
    assert entry["url"].startswith("http://127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_a_registry_answering_nothing_or_too_much(tmp_path, registry):
    from cozyd.apps.sources import BadArchive, SourceNotReachable, parse_source

    def fetcher(url):
        return Fetcher(
            download=downloader(reactor, timeout=10),
            run_blocking=run_now,
            registries=[url],
            allow_http=True,
        )

    staging = tmp_path / "staging"
    staging.mkdir()
    source = parse_source("registry://notes")
    with pytest.raises(SourceNotReachable):
        await fetcher("http://127.0.0.1:1").fetch(source, layout.WEBAPP, str(staging))
    registry.garbage["/registry/notes/stable/latest"] = b"[" * 3_000_000
    with pytest.raises(BadArchive, match="larger than"):
        await fetcher(registry.url).fetch(source, layout.WEBAPP, str(staging))
    assert os.listdir(staging) == []
