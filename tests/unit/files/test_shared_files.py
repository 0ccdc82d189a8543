"""Share by link on /files, end to end on the in-memory stack: a share of a
directory reads its subtree and nothing else, a share of one file reads that
file only, GET-only shares write nothing, revoked shares stop, and a code
of one instance is nothing on another."""

from __future__ import annotations

import pytest

from cozyd.testing import MemoryClient
from tests.support.auth import Browser, admin_token, create_instance
from tests.support.files import FilesClient, memory_transport
from tests.support.shares import Client, rule

FILES = "io.cozy.files"


def drive(stack, domain):
    admin = Browser(stack.admin)
    create_instance(admin, domain)
    token = admin_token(admin, domain, Audience="cli", Scope=FILES)
    base = f"http://{domain}"
    public = MemoryClient(stack.public)
    files = FilesClient(memory_transport(public, base), token)
    return files, Client(public, token, base), public, base


@pytest.fixture
def alice(stack):
    return drive(stack, "alice.cozy.test")


def share_code(owner: Client, *values: str, verbs=("GET",)) -> tuple[str, str]:
    created = owner.create({"files": rule(FILES, verbs=verbs, values=values)})
    assert created.status == 200, created.body
    data = created.json()["data"]
    return data["id"], data["attributes"]["codes"]["bob"]


def test_a_directory_share_reads_its_subtree_only(alice):
    files, owner, public, base = alice
    top = files.mkdir("holidays").data["id"]
    deep = files.mkdir("beach", top).data["id"]
    inside = files.upload("sea.txt", b"waves", deep).data["id"]
    outside = files.upload("taxes.txt", b"secret").data["id"]
    _, code = share_code(owner, top)
    guest = FilesClient(memory_transport(public, base), code)
    assert guest.get(top).status == 200
    assert guest.get(deep).status == 200
    reply = guest.download(inside)
    assert (reply.status, reply.body) == (200, b"waves")
    assert guest.get(outside).status == 403
    assert guest.download(outside).status == 403
    assert b"secret" not in guest.download(outside).body
    assert guest.get("io.cozy.files.root-dir").status == 403
    # GET only: nothing written, even inside the shared directory
    assert guest.upload("more.txt", b"x", top).status == 403
    assert guest.mkdir("new", top).status == 403
    assert guest.trash(inside).status == 403
    assert files.download(inside).body == b"waves"


def test_a_file_share_reads_that_file_only(alice):
    files, owner, public, base = alice
    folder = files.mkdir("docs").data["id"]
    one = files.upload("one.txt", b"1", folder).data["id"]
    two = files.upload("two.txt", b"2", folder).data["id"]
    _, code = share_code(owner, one)
    guest = FilesClient(memory_transport(public, base), code)
    assert guest.download(one).body == b"1"
    assert guest.download(two).status == 403
    assert guest.get(folder).status == 403


def test_a_revoked_share_stops_reading(alice):
    files, owner, public, base = alice
    top = files.mkdir("photos").data["id"]
    perm_id, code = share_code(owner, top)
    guest = FilesClient(memory_transport(public, base), code)
    assert guest.get(top).status == 200
    assert owner.request("DELETE", f"/permissions/{perm_id}").status == 204
    assert guest.get(top).status in (401, 403)


def test_a_code_of_one_instance_reads_nothing_on_another(stack, alice):
    files, owner, _, _ = alice
    top = files.mkdir("shared").data["id"]
    _, code = share_code(owner, top)
    bob_files, _, bob_public, bob_base = drive(stack, "bob.cozy.test")
    bob_dir = bob_files.mkdir("shared").data["id"]
    crossed = FilesClient(memory_transport(bob_public, bob_base), code)
    assert crossed.get(bob_dir).status in (400, 401, 403)
    assert crossed.get(top).status in (400, 401, 403, 404)
