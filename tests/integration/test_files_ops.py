"""Quota, disk usage, fsck and ``cozyctl files`` through the real daemon
and the real cozyctl, on both storage engines."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.files import FilesClient, daemon_transport

pytestmark = pytest.mark.integration

DOMAIN = "ops.cozy.localhost"


def setup(daemon, *extra: str) -> FilesClient:
    added = daemon.cozyctl("instances", "add", DOMAIN, *extra)
    assert added.returncode == 0, added.stderr
    made = daemon.cozyctl(
        "instances", "token-cli", DOMAIN, "io.cozy.files", "io.cozy.settings"
    )
    assert made.returncode == 0, made.stderr
    return FilesClient(daemon_transport(daemon, DOMAIN), made.stdout.strip())


def contents_dir(daemon) -> str:
    return os.path.join(daemon.data_dir, "files", DOMAIN, ".cozyd")


def stored_files(daemon) -> list[str]:
    found = []
    for root, _dirs, names in os.walk(contents_dir(daemon)):
        found.extend(os.path.join(root, n) for n in names)
    return sorted(found)


def test_quota_and_disk_usage(daemon):
    files = setup(daemon, "--disk-quota", "1000")
    assert files.upload("a.bin", b"a" * 600).status == 201
    before = stored_files(daemon)
    over = files.upload("b.bin", b"b" * 500)
    assert over.status == 413
    assert (
        over.json()["errors"][0]["detail"]
        == "The file is too big and exceeds the disk quota"
    )
    assert over.json()["errors"][0]["status"] == "413"
    # Nothing written: no metadata, no content, no temporary file.
    assert stored_files(daemon) == before
    names = [
        i["attributes"]["name"]
        for i in files.get("io.cozy.files.root-dir").json()["included"]
    ]
    assert "b.bin" not in names
    # Refused before reading when the size is announced, too.
    assert files.upload("c.bin", b"c" * 500, Size="500").status == 413
    usage = files.request("GET", "/settings/disk-usage", params={"include": "trash"}).data
    assert usage["id"] == "io.cozy.settings.disk-usage"
    assert usage["attributes"] == {
        "used": "600",
        "files": "600",
        "versions": "0",
        "quota": "1000",
        "trash": "0",
    }
    raised = daemon.cozyctl("instances", "set-disk-quota", DOMAIN, "2000")
    assert raised.returncode == 0, raised.stderr
    assert files.upload("b.bin", b"b" * 500).status == 201
    cli = daemon.cozyctl("files", "usage", "--domain", DOMAIN, "--trash", "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == {
        "used": 1100,
        "files": 1100,
        "versions": 0,
        "trash": 0,
        "quota": 2000,
    }


def test_fsck_reports_and_repairs(daemon):
    files = setup(daemon)
    clean = daemon.cozyctl("instances", "fsck", DOMAIN)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    kept = files.upload("kept.txt", b"kept").data["id"]
    lost = files.upload("lost.txt", b"lost").data["id"]
    grown = files.upload("grown.txt", b"grown").data["id"]
    keys = {}
    for path in stored_files(daemon):
        if "/contents/" in path:
            with open(path, "rb") as f:
                keys[f.read()] = path
    os.unlink(keys[b"lost"])
    with open(keys[b"grown"], "ab") as f:
        f.write(b" and more")
    stray = os.path.join(os.path.dirname(keys[b"kept"]), "ab" * 16)
    with open(stray, "wb") as f:
        f.write(b"nobody's")
    report = daemon.cozyctl("instances", "fsck", DOMAIN, "--json")
    assert report.returncode == 1
    found = {(m["type"], m["id"]) for m in map(json.loads, report.stdout.splitlines())}
    assert ("file_missing", lost) in found
    assert ("size_mismatch", grown) in found
    assert ("orphan_content", "") in found
    assert not any(doc_id == kept for _, doc_id in found)
    repaired = daemon.cozyctl("instances", "fsck", DOMAIN, "--repair")
    assert repaired.returncode == 1
    again = daemon.cozyctl("instances", "fsck", DOMAIN, "--check-md5")
    assert again.returncode == 0, again.stdout
    assert files.get(lost).status == 404
    assert files.get(grown).data["attributes"]["size"] == str(len(b"grown and more"))
    assert not os.path.exists(stray)


def test_cozyctl_files_import(daemon, tmp_path):
    files = setup(daemon)
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"A")
    (tree / "sub" / "b.md").write_bytes(b"BB")
    (tree / "sub" / "deeper" / "c.txt").write_bytes(b"CCC")
    os.symlink("/etc/passwd", tree / "link.txt")  # never followed
    dry = daemon.cozyctl(
        "files",
        "import",
        "--domain",
        DOMAIN,
        "--from",
        str(tree),
        "--to",
        "/Imported",
        "--dry-run",
    )
    assert dry.returncode == 0 and dry.stdout.count("->") == 3
    assert (
        files.request("GET", "/files/metadata", params={"Path": "/Imported"}).status == 404
    )
    done = daemon.cozyctl(
        "files",
        "import",
        "--domain",
        DOMAIN,
        "--from",
        str(tree),
        "--to",
        "/Imported",
        "--match",
        "*.txt",
    )
    assert done.returncode == 0, done.stderr
    c = files.request(
        "GET", "/files/metadata", params={"Path": "/Imported/sub/deeper/c.txt"}
    )
    assert c.status == 200
    assert files.download(c.data["id"]).body == b"CCC"
    assert (
        files.request(
            "GET", "/files/metadata", params={"Path": "/Imported/sub/b.md"}
        ).status
        == 404
    )
    assert (
        files.request(
            "GET", "/files/metadata", params={"Path": "/Imported/link.txt"}
        ).status
        == 404
    )
    assert daemon.cozyctl("instances", "fsck", DOMAIN).returncode == 0
