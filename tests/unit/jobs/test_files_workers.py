"""The ``trash-files`` and ``thumbnail`` workers, pushed through
``POST /jobs/queue/<worker>`` and checked on /files."""

from __future__ import annotations

import io
import os

import pytest

from cozyd.testing import MemoryClient
from tests.support.auth import DOMAIN, admin_token
from tests.support.files import FilesClient, memory_transport
from tests.unit.jobs.test_jobs_http import World, push


@pytest.fixture
def world(stack, clock):
    w = World(stack, clock)
    yield w
    w.stop()


@pytest.fixture
def files(world):
    token = admin_token(world.admin, DOMAIN, Audience="cli", Scope="io.cozy.files")
    return FilesClient(
        memory_transport(MemoryClient(world.stack.public), f"http://{DOMAIN}"), token
    )


def trashed(files, name: str) -> str:
    file_id = files.upload(name, b"content of " + name.encode()).data["id"]
    assert files.request("DELETE", f"/files/{file_id}").status == 200
    return file_id


def test_trash_files_destroys_the_given_trashed_files(world, files):
    gone = trashed(files, "gone.txt")
    kept = trashed(files, "kept.txt")
    alive = files.upload("alive.txt", b"alive").data["id"]
    job = push(world, worker="trash-files", arguments={"ids": [gone, alive, "nope"]})
    attributes = world.job(job["id"])
    assert attributes["state"] == "done"
    assert attributes["result"] == {"destroyed": 1, "skipped": [alive, "nope"]}
    assert files.request("GET", f"/files/{gone}").status == 404
    assert files.request("GET", f"/files/{kept}").status == 200  # still in the trash
    assert files.request("GET", f"/files/download/{alive}").body == b"alive"


def test_trash_files_without_ids_empties_the_trash(world, files):
    a, b = trashed(files, "a.txt"), trashed(files, "b.txt")
    job = push(world, worker="trash-files", arguments={})
    assert world.job(job["id"])["state"] == "done"
    for file_id in (a, b):
        assert files.request("GET", f"/files/{file_id}").status == 404
    listing = files.request("GET", "/files/trash")
    assert listing.status == 200 and listing.json()["data"] == []


def test_trash_files_refuses_bad_ids(world, files):
    job = push(world, worker="trash-files", arguments={"ids": "everything"})
    attributes = world.job(job["id"])
    assert attributes["state"] == "errored"
    assert attributes["error"] == "invalid ids"


def test_thumbnail_remakes_the_thumbnails_of_an_image(world, files):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 200, 10)).save(buffer, "PNG")
    up = files.upload("green.png", buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert up.status == 201
    link = up.data["links"]["small"]
    assert files.request("GET", link, token=False).status == 200
    store = world.stack.vfs.store_of(world.instance)
    key = _internal_key(world, up.data["id"])
    for fmt in ("tiny", "small", "medium", "large"):
        os.remove(store.thumb_path(key, fmt))
    assert files.request("GET", link, token=False).status == 404
    job = push(world, worker="thumbnail", arguments={"id": up.data["id"]})
    attributes = world.job(job["id"])
    assert attributes["state"] == "done" and attributes["result"] == {"made": True}
    thumb = files.request("GET", link, token=False)
    assert thumb.status == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.body)).size == (640, 480)

    text = files.upload("a.txt", b"text").data["id"]
    job = push(world, worker="thumbnail", arguments={"id": text})
    assert world.job(job["id"])["result"] == {"made": False}
    job = push(world, worker="thumbnail", arguments={"id": "nope"})
    attributes = world.job(job["id"])
    assert attributes["state"] == "errored" and attributes["error"] == "file not found"


def _internal_key(world, file_id: str) -> str:
    from cozyd.testing import sync

    doc = sync(world.stack.documents.get(world.instance, "io.cozy.files", file_id))
    return doc["internal_vfs_id"]
