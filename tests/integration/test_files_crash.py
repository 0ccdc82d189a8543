"""Crash safety of uploads through the real daemon: a client that hangs up
mid-upload, a kill -9 during concurrent uploads (restart, then fsck: zero
mismatch), concurrent moves, and flat memory for a 1 GiB file."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from urllib.parse import quote

import pytest

from tests.support.files import FilesClient, daemon_transport, md5_b64

pytestmark = pytest.mark.integration

DOMAIN = "crash.cozy.localhost"
ROOT = "io.cozy.files.root-dir"


def setup(daemon) -> tuple[FilesClient, str]:
    added = daemon.cozyctl("instances", "add", DOMAIN)
    assert added.returncode == 0, added.stderr
    token = daemon.cozyctl("instances", "token-cli", DOMAIN, "io.cozy.files").stdout.strip()
    return FilesClient(daemon_transport(daemon, DOMAIN), token), token


def state_files(daemon, sub: str) -> list[str]:
    folder = os.path.join(daemon.data_dir, "files", DOMAIN, ".cozyd", sub)
    found = []
    for _root, _dirs, names in os.walk(folder):
        found.extend(names)
    return found


def root_names(files) -> list[str]:
    names, params = [], {"page[limit]": "1000"}
    reply = files.request("GET", f"/files/{ROOT}", params=params).json()
    names.extend(i["attributes"]["name"] for i in reply["included"])
    return names


def start_upload(daemon, token: str, name: str, size: int) -> socket.socket:
    """An upload whose headers announce ``size`` bytes; the body is up to
    the caller."""
    sock = socket.create_connection(("127.0.0.1", daemon.ports["public"]))
    head = (
        f"POST /files/{ROOT}?Type=file&Name={quote(name)} HTTP/1.1\r\n"
        f"Host: {DOMAIN}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("engine", ["embedded", "couchdb"])
def test_client_hanging_up_mid_upload_leaves_nothing(make_daemon, engine):
    daemon = make_daemon(couchdb=engine == "couchdb")
    files, token = setup(daemon)
    sock = start_upload(daemon, token, "partial.bin", 20 * 2**20)
    sock.sendall(b"x" * 2**20 * 3)
    assert wait_until(lambda: state_files(daemon, "tmp") != [])  # it was being written
    sock.close()
    assert wait_until(lambda: state_files(daemon, "tmp") == []), state_files(daemon, "tmp")
    assert "partial.bin" not in root_names(files)
    assert state_files(daemon, "contents") == []
    assert files.upload("partial.bin", b"whole").status == 201  # the name is free
    assert daemon.cozyctl("instances", "fsck", DOMAIN).returncode == 0


@pytest.mark.parametrize("engine", ["embedded", "couchdb"])
def test_kill_9_during_concurrent_uploads_then_fsck_is_clean(make_daemon, engine):
    daemon = make_daemon(couchdb=engine == "couchdb")
    files, token = setup(daemon)
    stop = threading.Event()
    done: list[str] = []

    def uploader(n: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"u{n}-{i}.bin"
            body = os.urandom(256 * 1024 + n)
            try:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", daemon.ports["public"], timeout=10
                )
                conn.request(
                    "POST",
                    f"/files/{ROOT}?Type=file&Name={name}",
                    body=body,
                    headers={
                        "Host": DOMAIN,
                        "Authorization": f"Bearer {token}",
                        "Content-MD5": md5_b64(body),
                    },
                )
                if conn.getresponse().status == 201:
                    done.append(name)
                conn.close()
            except OSError:
                return
            i += 1

    threads = [threading.Thread(target=uploader, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(done) >= 20, timeout=60)
    # Some uploads are half-sent, some being committed: kill -9 now.
    daemon.process.send_signal(signal.SIGKILL)
    daemon.wait_exit()
    stop.set()
    for t in threads:
        t.join(15)
    daemon.start()
    fsck = daemon.cozyctl("instances", "fsck", DOMAIN, "--json", "--check-md5")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert fsck.stdout.strip() == ""
    files, token = setup_token(daemon)
    names = root_names(files)
    assert set(done) <= set(names)  # every acknowledged upload survived
    assert len(names) == len(set(names))
    assert state_files(daemon, "tmp") == [] and state_files(daemon, "pending") == []


def setup_token(daemon):
    token = daemon.cozyctl("instances", "token-cli", DOMAIN, "io.cozy.files").stdout.strip()
    return FilesClient(daemon_transport(daemon, DOMAIN), token), token


@pytest.mark.parametrize("engine", ["embedded", "couchdb"])
def test_concurrent_moves_and_same_name_uploads_stay_consistent(make_daemon, engine):
    daemon = make_daemon(couchdb=engine == "couchdb")
    files, _ = setup(daemon)
    a = files.mkdir("a").data["id"]
    b = files.mkdir("b").data["id"]
    results: list[int] = []

    def run(call):
        results.append(call().status)

    # a into b and b into a at the same time: one wins, never a cycle.
    calls = [lambda: files.patch(a, {"dir_id": b}), lambda: files.patch(b, {"dir_id": a})]
    calls += [
        lambda: files.upload("same.txt", b"1"),
        lambda: files.upload("same.txt", b"2"),
    ]
    calls += [lambda: files.upload("same.txt", b"3")]
    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results).count(200) == 1 and 412 in results
    assert sorted(results).count(201) == 1 and results.count(409) == 2
    fsck = daemon.cozyctl("instances", "fsck", DOMAIN)
    assert fsck.returncode == 0, fsck.stdout

    # A move into a directory being trashed: before (it goes to the trash
    # with it) or after (refused), never a live entry under a trashed one.
    for n in range(5):
        c = files.mkdir(f"c{n}").data["id"]
        x = files.mkdir(f"x{n}").data["id"]
        inner = files.upload("inner.txt", b"i", x).data["id"]
        results.clear()
        calls = [lambda c=c: files.trash(c), lambda x=x, c=c: files.patch(x, {"dir_id": c})]
        threads = [threading.Thread(target=run, args=(call,)) for call in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        moved = files.get(x).data["attributes"]
        if moved["dir_id"] == c:
            assert moved["path"].startswith("/.cozy_trash/")
            assert files.get(inner).data["attributes"]["trashed"] is True
        else:
            assert moved["path"] == f"/x{n}" and 412 in results
            assert files.get(inner).data["attributes"]["trashed"] is False
    fsck = daemon.cozyctl("instances", "fsck", DOMAIN)
    assert fsck.returncode == 0, fsck.stdout


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_one_gib_upload_and_download_keep_memory_flat(make_daemon):
    daemon = make_daemon()
    files, token = setup(daemon)
    files.upload("warm.txt", b"warm")  # the first request's imports
    before = peak_rss_kib(daemon.process.pid)
    size = 2**30
    block = os.urandom(2**20)
    digest = hashlib.md5()
    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["public"], timeout=300)
    conn.putrequest("POST", f"/files/{ROOT}?Type=file&Name=big.bin", skip_host=True)
    conn.putheader("Host", DOMAIN)
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for _ in range(size // len(block)):
        conn.send(block)
        digest.update(block)
    reply = conn.getresponse()
    body = json.loads(reply.read())
    assert reply.status == 201, body
    assert body["data"]["attributes"]["size"] == str(size)
    doc_id = body["data"]["id"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["public"], timeout=300)
    conn.putrequest("GET", f"/files/download/{doc_id}", skip_host=True)
    conn.putheader("Host", DOMAIN)
    conn.putheader("Authorization", f"Bearer {token}")
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 200
    check = hashlib.md5()
    received = 0
    while chunk := reply.read(2**20):
        check.update(chunk)
        received += len(chunk)
    conn.close()
    assert received == size and check.digest() == digest.digest()
    grown_mib = (peak_rss_kib(daemon.process.pid) - before) / 1024
    print(f"peak RSS grew by {grown_mib:.1f} MiB for a 1 GiB upload and download")
    assert grown_mib < 50, grown_mib
