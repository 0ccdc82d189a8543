"""/files on the in-memory stack: traversal attempts, isolation between
instances, the subtree rule (the check share tokens go through too),
thumbnails, bad bodies."""

from __future__ import annotations

import io
import os

import pytest

from cozyd.errors import PermissionDenied
from cozyd.files import access
from cozyd.permissions.rules import PermissionSet, Rule
from cozyd.testing import MemoryClient, sync
from tests.support.auth import Browser, admin_token, create_instance
from tests.support.files import FilesClient, memory_transport

ROOT = "io.cozy.files.root-dir"


def client_for(stack, domain: str) -> FilesClient:
    admin = Browser(stack.admin)
    create_instance(admin, domain)
    token = admin_token(
        admin, domain, Audience="cli", Scope="io.cozy.files io.cozy.settings"
    )
    return FilesClient(
        memory_transport(MemoryClient(stack.public), f"http://{domain}"), token
    )


@pytest.fixture
def alice(stack):
    return client_for(stack, "alice.cozy.test")


@pytest.fixture
def bob(stack):
    return client_for(stack, "bob.cozy.test")


def instance(stack, domain):
    return sync(stack.instances.get(domain))


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "/../../etc/passwd", "/a/../../etc", "%2e%2e/x", "/..%2f..%2fetc"],
)
def test_paths_never_climb_out(alice, path):
    reply = alice.request("GET", "/files/download", params={"Path": path})
    assert reply.status in (404, 422), reply.body
    assert b"root:" not in reply.body


def test_encoded_traversal_in_ids_and_names(alice):
    assert alice.request("GET", "/files/download/..%2F..%2Fetc%2Fpasswd").status == 404
    assert alice.upload("..", b"x").status == 422
    assert alice.upload("../evil", b"x").status == 422


def test_instances_never_see_each_other(alice, bob):
    mine = alice.upload("mine.txt", b"alice's").data["id"]
    assert bob.get(mine).status == 404
    assert bob.download(mine).status == 404
    assert bob.request("GET", "/files/metadata", params={"Path": "/mine.txt"}).status == 404
    crossed = FilesClient(alice._send, bob.token)  # bob's token on alice's host
    assert crossed.get(mine).status in (400, 401)


def test_a_rule_on_a_directory_covers_its_subtree(stack, alice):
    top = alice.mkdir("shared").data["id"]
    deep = alice.mkdir("deep", top).data["id"]
    inside = alice.upload("in.txt", b"in", deep).data["id"]
    outside = alice.upload("out.txt", b"out").data["id"]
    vfs = stack.vfs
    inst = instance(stack, "alice.cozy.test")
    share = PermissionSet(
        type="share",
        rules=(
            ("files", Rule(type="io.cozy.files", verbs=frozenset({"GET"}), values=(top,))),
        ),
    )

    def doc(doc_id):
        return sync(vfs.get(inst, doc_id))

    for allowed_id in (top, deep, inside):
        sync(access.authorize(vfs, inst, share, "GET", doc(allowed_id)))
    for denied_id in (outside, ROOT):
        with pytest.raises(PermissionDenied):
            sync(access.authorize(vfs, inst, share, "GET", doc(denied_id)))
    with pytest.raises(PermissionDenied):
        sync(access.authorize(vfs, inst, share, "PATCH", doc(inside)))
    # Moved out of the shared directory: no longer covered.
    alice.patch(inside, {"dir_id": ROOT})
    with pytest.raises(PermissionDenied):
        sync(access.authorize(vfs, inst, share, "GET", doc(inside)))


def test_thumbnails_of_an_image(alice):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (200, 10, 10)).save(buffer, "PNG")
    up = alice.upload("red.png", buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert up.status == 201
    links = up.data["links"]
    for fmt, box in (("tiny", (96, 96)), ("small", (640, 480)), ("large", (1920, 1080))):
        thumb = alice.request("GET", links[fmt], token=False)
        assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(thumb.body))
        assert image.size[0] <= box[0] and image.size[1] <= box[1]
    bad = links["tiny"].replace("/thumbnails/", "/thumbnails/x")
    assert alice.request("GET", bad, token=False).status == 404
    text = alice.upload("a.txt", b"text")
    assert "tiny" not in text.data["links"]


def test_bad_bodies_get_jsonapi_errors(alice):
    f = alice.upload("f.txt", b"x").data["id"]
    for body in (b"{", b"[]", b'{"data": []}', b'{"data": {"attributes": 1}}'):
        reply = alice.request("PATCH", f"/files/{f}", data=body)
        assert reply.status == 400, body
        assert reply.json()["errors"][0]["status"] == "400"
    reply = alice.request("POST", "/files/_find", body={"selector": 1})
    assert reply.status == 400
    md5 = alice.upload("g.txt", b"x", md5="not base64!")
    assert md5.status == 400
    assert (
        alice.request(
            "POST", "/files/archive", body={"data": {"attributes": {"ids": []}}}
        ).status
        == 400
    )


def test_disk_usage_needs_a_permission(stack, alice):
    admin = Browser(stack.admin)
    token = admin_token(admin, "alice.cozy.test", Audience="cli", Scope="io.cozy.files")
    narrow = FilesClient(alice._send, token)
    assert narrow.request("GET", "/settings/disk-usage").status == 403
    alice.upload("x.bin", b"12345")
    usage = alice.request("GET", "/settings/disk-usage").data["attributes"]
    assert usage == {"used": "5", "files": "5", "versions": "0"}


def test_recover_cleans_leftovers(stack, alice):
    inst = instance(stack, "alice.cozy.test")
    vfs = stack.vfs
    store = vfs.store_of(inst)
    f = alice.upload("kept.txt", b"kept").data["id"]
    key = sync(vfs.get(inst, f))["internal_vfs_id"]
    store.mark(key, f)  # a crash after the document was written
    orphan = store.commit(store.start(), "never-written")  # a crash before
    leftover = store.start()  # a crash mid-upload
    found = sync(vfs.recover(inst))
    assert found == {"tmp": 1, "deleted": 1, "kept": 1}
    assert store.pending() == [] and os.listdir(store.tmp) == []
    assert store.stat(orphan) is None and store.stat(key) is not None
    del leftover


def test_a_link_planted_in_the_storage_folder_is_not_followed(stack, alice, tmp_path):
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"root:x:0:0")
    doc_id = alice.upload("victim.txt", b"mine").data["id"]
    inst = instance(stack, "alice.cozy.test")
    store = stack.vfs.store_of(inst)
    path = store.path_of(sync(stack.vfs.get(inst, doc_id))["internal_vfs_id"])
    os.unlink(path)
    os.symlink(secret, path)
    reply = alice.download(doc_id)
    assert reply.status == 404 and b"root:" not in reply.body


def test_an_image_gets_its_size_and_exif_date(alice):
    from PIL import Image

    image = Image.new("RGB", (320, 200), (0, 90, 0))
    exif = Image.Exif()
    exif[0x0132] = "2019:07:14 10:20:30"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    up = alice.upload(
        "summer.jpg", buffer.getvalue(), headers={"Content-Type": "image/jpeg"}
    )
    attrs = up.data["attributes"]
    assert attrs["metadata"]["width"] == 320 and attrs["metadata"]["height"] == 200
    assert attrs["metadata"]["datetime"] == "2019-07-14T10:20:30Z"
    assert attrs["created_at"] == "2019-07-14T10:20:30Z"


def test_recover_resolves_a_marker_cut_before_its_owner_was_written(stack, alice):
    # kill -9 between the marker's open and its write: an empty marker.
    inst = instance(stack, "alice.cozy.test")
    vfs = stack.vfs
    store = vfs.store_of(inst)
    torn = store.commit(store.start(), "")
    found = sync(vfs.recover(inst))
    assert found == {"tmp": 0, "deleted": 1, "kept": 0}
    assert store.pending() == [] and store.stat(torn) is None
