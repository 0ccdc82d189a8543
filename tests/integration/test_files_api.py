"""/files through the real daemon, on both storage engines (the same test
code): directories, uploads, downloads, listings, overwrite, moves, trash,
versions, quota, permissions."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest

from tests.support.couchdb_server import real_couchdb_url, start_pouchdb_server
from tests.support.daemon import Daemon
from tests.support.files import FilesClient, daemon_transport, md5_b64

pytestmark = pytest.mark.integration

DOMAIN = "files.cozy.localhost"
ROOT = "io.cozy.files.root-dir"
TRASH = "io.cozy.files.trash-dir"


@pytest.fixture(scope="module", params=["embedded", "couchdb"])
def files_daemon(request, tmp_path_factory):
    stops = []
    url = None
    if request.param == "couchdb":
        url = real_couchdb_url()
        if not url:
            url, stop = start_pouchdb_server(tmp_path_factory.mktemp("pouchdb"))
            stops.append(stop)
    daemon = Daemon(
        str(tmp_path_factory.mktemp("files")),
        couchdb_url=url,
        fs={"versions_min_delay": "0", "versions_max_number": "2"},
    )
    daemon.engine = request.param
    daemon.domain = f"f{uuid.uuid4().hex[:8]}.cozy.localhost"
    daemon.start()
    try:
        added = daemon.cozyctl("instances", "add", daemon.domain)
        assert added.returncode == 0, added.stderr
        yield daemon
    finally:
        daemon.stop()
        for stop in stops:
            stop()


def token_for(daemon, *scope: str) -> str:
    made = daemon.cozyctl("instances", "token-cli", daemon.domain, *scope)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture(scope="module")
def files(files_daemon):
    return FilesClient(
        daemon_transport(files_daemon, files_daemon.domain),
        token_for(files_daemon, "io.cozy.files"),
    )


@pytest.fixture
def home(files):
    """A directory of its own for each test."""
    reply = files.mkdir("t-" + uuid.uuid4().hex[:8])
    assert reply.status == 201, reply.body
    return reply.data["id"]


def test_directory_create_and_show(files, home):
    made = files.mkdir("phone", home, Tags="bills,konnectors,bills")
    assert made.status == 201
    assert made.headers["location"].endswith("/files/" + made.data["id"])
    attrs = made.data["attributes"]
    assert attrs["type"] == "directory" and attrs["name"] == "phone"
    assert attrs["tags"] == ["bills", "konnectors"]
    assert attrs["path"].endswith("/phone")
    assert made.data["relationships"]["parent"]["data"]["id"] == home
    assert files.mkdir("phone", home).status == 409
    assert files.mkdir("x", "nope").status == 404
    shown = files.get(home)
    assert shown.status == 200
    assert shown.json()["included"][0]["id"] == made.data["id"]
    assert shown.data["relationships"]["contents"]["meta"]["count"] == 1
    by_path = files.request("GET", "/files/metadata", params={"Path": attrs["path"]})
    assert by_path.status == 200 and by_path.data["id"] == made.data["id"]
    assert (
        files.request("GET", "/files/metadata", params={"Path": "/no/such"}).status == 404
    )
    assert files.request("HEAD", f"/files/{home}").status == 200
    assert files.get("no-such-id").status == 404


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "nul\x00", "x" * 256, "é" * 128, "line\nbreak"],
)
def test_bad_names_are_422(files, home, name):
    assert files.mkdir(name, home).status == 422
    assert files.upload(name, b"data", home).status == 422
    assert files.request("GET", f"/files/{home}").status == 200  # nothing created
    listing = files.get(home).json()
    assert listing["included"] == []


def test_upload_download_and_headers(files, home):
    content = b"hello, world\n" * 100
    up = files.upload("hello.txt", content, home, Tags="a,b", Executable="true")
    assert up.status == 201, up.body
    attrs = up.data["attributes"]
    assert attrs["size"] == str(len(content))
    assert attrs["md5sum"] == md5_b64(content)
    assert attrs["mime"] == "text/plain" and attrs["class"] == "text"
    assert attrs["executable"] is True and attrs["tags"] == ["a", "b"]
    assert "internal_vfs_id" not in attrs
    doc_id = up.data["id"]
    got = files.download(doc_id)
    assert got.status == 200 and got.body == content
    assert got.headers["etag"] == f'"{md5_b64(content)}"'
    assert got.headers["content-length"] == str(len(content))
    assert got.headers["content-disposition"] == 'inline; filename="hello.txt"'
    assert got.headers["accept-ranges"] == "bytes"
    dl = files.download(doc_id, Dl="1")
    assert dl.headers["content-disposition"].startswith("attachment;")
    part = files.download(doc_id, headers={"Range": "bytes=5-9"})
    assert part.status == 206 and part.body == content[5:10]
    assert part.headers["content-range"] == f"bytes 5-9/{len(content)}"
    tail = files.download(doc_id, headers={"Range": "bytes=-4"})
    assert tail.status == 206 and tail.body == content[-4:]
    assert files.download(doc_id, headers={"Range": "bytes=99999-"}).status == 416
    cached = files.download(doc_id, headers={"If-None-Match": got.headers["etag"]})
    assert cached.status == 304 and cached.body == b""
    path = attrs.get("path") or (files.get(home).data["attributes"]["path"] + "/hello.txt")
    by_path = files.request("GET", "/files/download", params={"Path": path})
    assert by_path.status == 200 and by_path.body == content
    assert files.download("nope").status == 404


def test_content_disposition_for_any_name(files, home):
    name = 'été "quoted" 日本.txt'
    up = files.upload(name, b"x", home)
    assert up.status == 201, up.body
    header = files.download(up.data["id"]).headers["content-disposition"]
    assert header.startswith('inline; filename="')
    assert (
        "filename*=UTF-8''%C3%A9t%C3%A9%20%22quoted%22%20%E6%97%A5%E6%9C%AC.txt" in header
    )


def test_wrong_md5_or_size_leaves_nothing(files, home):
    content = b"some bytes"
    bad = files.upload("bad.txt", content, home, md5=md5_b64(b"other"))
    assert bad.status == 412
    short = files.upload("short.txt", content, home, Size="999")
    assert short.status == 412
    assert files.get(home).json()["included"] == []
    assert files.upload("bad.txt", content, home).status == 201  # the name is free


def test_name_conflict_and_parent_checks(files, home):
    assert files.upload("a.txt", b"1", home).status == 201
    assert files.upload("a.txt", b"2", home).status == 409
    assert files.upload("a.txt", b"2", "missing-dir").status == 404
    assert files.request("POST", f"/files/{home}", params={"Name": "x"}).status == 422


def test_listing_pagination(files, home):
    ids = set()
    for i in range(7):
        up = files.upload(f"f{i}.txt", b"%d" % i, home)
        ids.add(up.data["id"])
    seen: set[str] = set()
    url = f"/files/{home}"
    params = {"page[limit]": "3"}
    pages = 0
    while True:
        page = files.request("GET", url, params=params)
        body = page.json()
        assert body["data"]["relationships"]["contents"]["meta"]["count"] == 7
        seen |= {item["id"] for item in body["included"]}
        pages += 1
        nxt = body.get("links", {}).get("next")
        if not nxt:
            break
        cursor = nxt.split("page[cursor]=")[1].split("&")[0]
        params = {"page[limit]": "3", "page[cursor]": cursor}
    assert seen == ids and pages == 3
    skipped = files.request("GET", url, params={"page[limit]": "3", "page[skip]": "6"})
    assert len(skipped.json()["included"]) == 1


def test_root_listing_hides_the_trash(files):
    root = files.get(ROOT).json()
    assert TRASH not in [item["id"] for item in root["included"]]


def test_overwrite_with_if_match_and_versions(files, home):
    up = files.upload("doc.txt", b"v1", home)
    doc_id, rev = up.data["id"], up.data["meta"]["rev"]
    stale = files.request(
        "PUT", f"/files/{doc_id}", data=b"v2", headers={"If-Match": "1-nope"}
    )
    assert stale.status == 412
    put = files.request(
        "PUT",
        f"/files/{doc_id}",
        data=b"v2!",
        headers={"If-Match": rev, "Content-MD5": md5_b64(b"v2!")},
    )
    assert put.status == 200, put.body
    assert put.data["attributes"]["size"] == "3"
    assert files.download(doc_id).body == b"v2!"
    files.request("PUT", f"/files/{doc_id}", data=b"v3")
    files.request("PUT", f"/files/{doc_id}", data=b"v4")
    versions = files.request("GET", f"/files/{doc_id}/versions").data
    assert len(versions) == 2  # versions_max_number = 2
    oldest = versions[0]["id"]
    version_key = oldest.split("/", 1)[1]
    old = files.request("GET", f"/files/download/{doc_id}/{version_key}")
    assert old.status == 200 and old.body == b"v2!"
    reverted = files.request("POST", f"/files/revert/{doc_id}/{version_key}")
    assert reverted.status == 200, reverted.body
    assert files.download(doc_id).body == b"v2!"
    newest = files.request("GET", f"/files/{doc_id}/versions").data[-1]["id"]
    assert files.request("DELETE", f"/files/{newest}").status == 204
    assert files.request("GET", f"/files/download/{newest}").status == 404


def test_rename_move_and_forbidden_moves(files, home):
    a = files.mkdir("a", home).data["id"]
    b = files.mkdir("b", a).data["id"]
    f = files.upload("f.txt", b"x", b).data["id"]
    renamed = files.patch(a, {"name": "A"})
    assert renamed.status == 200 and renamed.data["attributes"]["path"].endswith("/A")
    assert files.get(b).data["attributes"]["path"].endswith("/A/b")
    assert files.patch(a, {"dir_id": b}).status == 412  # into its own subtree
    assert files.patch(a, {"dir_id": a}).status == 412
    assert files.patch(f, {"name": "a/b"}).status == 422
    other = files.upload("g.txt", b"y", b).data["id"]
    assert files.patch(other, {"name": "f.txt"}).status == 409
    moved = files.patch(f, {"dir_id": home, "name": "moved.txt"})
    assert moved.status == 200 and moved.data["attributes"]["dir_id"] == home
    assert files.patch(f, {"name": "z"}, headers={"If-Match": "1-bad"}).status == 412
    by_path = files.request(
        "PATCH",
        "/files/metadata",
        params={"Path": files.get(b).data["attributes"]["path"]},
        body={"data": {"attributes": {"tags": ["t1", "t1", "t2"]}}},
    )
    assert by_path.status == 200 and by_path.data["attributes"]["tags"] == ["t1", "t2"]
    bad = files.request("PATCH", f"/files/{f}", data=b"{not json")
    assert bad.status == 400 and "errors" in bad.json()
    assert files.request("PATCH", f"/files/{f}", body={"data": 3}).status == 400


def test_trash_restore_destroy(files, home):
    d = files.mkdir("dir", home).data["id"]
    f = files.upload("in.txt", b"inside", d).data["id"]
    trashed = files.trash(d)
    assert trashed.status == 200
    attrs = trashed.data["attributes"]
    assert attrs["dir_id"] == TRASH
    assert attrs["restore_path"] == files.get(home).data["attributes"]["path"]
    assert attrs["cozyMetadata"]["trashedAt"]
    assert attrs["path"].startswith("/.cozy_trash/")
    assert files.get(f).data["attributes"]["trashed"] is True
    assert files.trash(d).status == 400
    assert files.upload("new.txt", b"n", d).status == 404  # parent in the trash
    listing = files.request("GET", "/files/trash").json()
    assert d in [item["id"] for item in listing["data"]]
    restored = files.request("POST", f"/files/trash/{d}")
    assert restored.status == 200 and restored.data["attributes"]["dir_id"] == home
    assert "restore_path" not in restored.data["attributes"]
    assert files.get(f).data["attributes"]["trashed"] is False
    assert files.download(f).body == b"inside"
    files.trash(f)
    assert files.request("DELETE", f"/files/trash/{f}").status == 204
    assert files.get(f).status == 404
    g = files.upload("g.txt", b"g", home).data["id"]
    assert files.request("DELETE", f"/files/trash/{g}").status == 400  # not trashed
    files.trash(g)
    assert files.request("DELETE", "/files/trash").status == 204
    assert files.get(g).status == 404
    assert files.request("GET", "/files/trash").json()["data"] == []


def test_copy_size_references_archive_links(files, home):
    f = files.upload("photo.txt", b"12345", home).data["id"]
    copied = files.request("POST", f"/files/{f}/copy")
    assert copied.status == 201 and copied.data["attributes"]["name"] == "photo (copy).txt"
    assert files.download(copied.data["id"]).body == b"12345"
    size = files.request("GET", f"/files/{home}/size")
    assert size.data["attributes"]["size"] == "10"
    ref = {"type": "io.cozy.photos.albums", "id": "album1"}
    added = files.request(
        "POST", f"/files/{f}/relationships/referenced_by", body={"data": [ref]}
    )
    assert added.status == 200 and added.json()["meta"]["count"] == 1
    assert files.get(f).data["relationships"]["referenced_by"]["data"] == [ref]
    removed = files.request(
        "DELETE", f"/files/{f}/relationships/referenced_by", body={"data": [ref]}
    )
    assert removed.json()["meta"]["count"] == 0
    link = files.request("POST", "/files/downloads", params={"Id": f})
    assert link.status == 200
    related = link.json()["links"]["related"]
    got = files.request("GET", related, token=False)
    assert got.status == 200 and got.body == b"12345"
    assert files.request("GET", "/files/downloads/nope/x.txt", token=False).status == 404
    archive = files.request(
        "POST",
        "/files/archive",
        body={
            "data": {
                "type": "io.cozy.files.archives",
                "attributes": {"name": "pack", "ids": [home]},
            }
        },
    )
    assert archive.status == 200, archive.body
    zipped = files.request("GET", archive.json()["links"]["related"], token=False)
    assert zipped.status == 200
    with zipfile.ZipFile(io.BytesIO(zipped.body)) as z:
        entries = sorted(z.namelist())
        assert all(not n.startswith("/") and ".." not in n for n in entries)
        assert len(entries) == 2
        assert z.read(entries[0]) == b"12345"


def test_find_changes_all_docs(files, home):
    f = files.upload("findme.txt", b"abc", home).data["id"]
    found = files.request("POST", "/files/_find", body={"selector": {"name": "findme.txt"}})
    assert found.status == 200, found.body
    assert [d["id"] for d in found.json()["data"]] == [f]
    assert found.json()["data"][0]["attributes"]["path"].endswith("/findme.txt")
    all_docs = files.request("POST", "/files/_all_docs", body={"keys": [f, "nope"]})
    assert [d["id"] for d in all_docs.json()["data"]] == [f]
    changes = files.request("GET", "/files/_changes", params={"include_docs": "true"})
    assert changes.status == 200
    rows = changes.json()["results"]
    assert f in [r["id"] for r in rows]
    assert all("internal_vfs_id" not in (r.get("doc") or {}) for r in rows)


def test_permissions_on_a_subtree(files_daemon, files, home):
    inner = files.mkdir("shared", home).data["id"]
    deep = files.mkdir("deep", inner).data["id"]
    f = files.upload("x.txt", b"secret", deep).data["id"]
    outside = files.upload("out.txt", b"nope", home).data["id"]
    token = token_for(files_daemon, f"io.cozy.files:GET,POST:{inner}")
    limited = FilesClient(daemon_transport(files_daemon, files_daemon.domain), token)
    assert limited.download(f).body == b"secret"  # below the directory
    assert limited.get(deep).status == 200
    assert limited.download(outside).status == 403
    assert limited.get(home).status == 403
    assert limited.upload("new.txt", b"n", deep).status == 201
    assert limited.upload("new.txt", b"n", home).status == 403
    assert limited.patch(f, {"name": "y.txt"}).status == 403  # no PATCH verb
    assert limited.request("GET", "/files/trash").status == 403
    assert files.request("GET", f"/files/{home}", token=False).status == 401


def test_references_in_both_directions(files_daemon, files, home):
    token = token_for(files_daemon, "io.cozy.files", "io.cozy.photos.albums")
    both = FilesClient(daemon_transport(files_daemon, files_daemon.domain), token)
    album = f"album-{uuid.uuid4().hex[:6]}"
    ids = sorted(both.upload(f"p{i}.jpg", b"%d" % i, home).data["id"] for i in range(3))
    added = both.request(
        "POST",
        f"/data/io.cozy.photos.albums/{album}/relationships/references",
        body={"data": [{"type": "io.cozy.files", "id": i} for i in ids]},
    )
    assert added.status == 204, added.body
    page = both.request(
        "GET",
        f"/data/io.cozy.photos.albums/{album}/relationships/references",
        params={"page[limit]": "2", "include": "files"},
    ).json()
    assert [d["id"] for d in page["data"]] == ids[:2]
    assert page["meta"]["count"] == 3 and "next" in page["links"]
    assert [d["id"] for d in page["included"]] == ids[:2]
    refs = both.get(ids[0]).data["relationships"]["referenced_by"]["data"]
    assert refs == [{"type": "io.cozy.photos.albums", "id": album}]
    removed = both.request(
        "DELETE",
        f"/data/io.cozy.photos.albums/{album}/relationships/references",
        body={"data": [{"type": "io.cozy.files", "id": ids[0]}]},
    )
    assert removed.status == 204
    left = both.request(
        "GET", f"/data/io.cozy.photos.albums/{album}/relationships/references"
    ).json()
    assert [d["id"] for d in left["data"]] == ids[1:]
    # Files only: no permission on the album, no listing of its references.
    assert (
        files.request(
            "GET", f"/data/io.cozy.photos.albums/{album}/relationships/references"
        ).status
        == 403
    )


def test_head_metadata_id_and_new_version(files, home):
    up = files.upload("q.txt", b"quarterly", home)
    doc_id = up.data["id"]
    head = files.request("HEAD", f"/files/download/{doc_id}")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == "9"
    meta = files.request(
        "POST",
        "/files/upload/metadata",
        body={
            "data": {
                "type": "io.cozy.files.metadata",
                "attributes": {"datetime": "2017-04-22T01:00:00Z"},
            }
        },
    )
    assert meta.status == 201, meta.body
    metadata_id = meta.data["id"]
    with_meta = files.upload("m.txt", b"m", home, MetadataID=metadata_id)
    assert with_meta.status == 201
    assert with_meta.data["attributes"]["metadata"] == {"datetime": "2017-04-22T01:00:00Z"}
    assert files.upload("n.txt", b"n", home, MetadataID="nope").status == 422
    refused = files.request(
        "POST",
        "/files/upload/metadata",
        body={"data": {"attributes": {"carbonCopy": True}}},
    )
    assert refused.status == 403
    version = files.request(
        "POST",
        f"/files/{doc_id}/versions",
        params={"Tags": "qualified"},
        body={
            "data": {
                "type": "io.cozy.files.metadata",
                "attributes": {"qualification": {"label": "invoice"}},
            }
        },
    )
    assert version.status == 200, version.body
    assert version.data["attributes"]["metadata"] == {"qualification": {"label": "invoice"}}
    assert "qualified" in version.data["attributes"]["tags"]
    assert files.download(doc_id).body == b"quarterly"
    versions = files.request("GET", f"/files/{doc_id}/versions").data
    assert len(versions) == 1
    old = files.request("GET", f"/files/download/{versions[0]['id']}")
    assert old.body == b"quarterly"
