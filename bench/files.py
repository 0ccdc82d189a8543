"""/files through cozyd's whole stack, against twisted.web serving the same
bytes (the framework's ceiling) and ``cp`` (the disk's), all in one run.

    .venv/bin/python bench/files.py [--sizes 1,100,1024] [--small 10000]
        [--list 10000] [--couchdb-url http://admin:pw@127.0.0.1:5984]

- upload and download of files of 1 MiB, 100 MiB and 1 GiB (MiB/s): cozyd
  (Host routing, token, permissions, streaming to a temporary file with
  MD5, commit, document write) vs a bare twisted.web site (``static.File``
  for downloads; a resource writing the body to a file for uploads) vs
  ``cp`` of the file;
- 10,000 uploads of 4 KiB at concurrency 8 (uploads/s, p50/p99);
- listing a directory of 10,000 files (all pages of 1000, then the first
  page of 30);
- the daemon's peak RSS before and after the 1 GiB transfers.

The ratios printed at the end are the goals of issue 10 (downloads ≥ 80 %
of the static ceiling, uploads ≥ 60 %, RSS flat within 50 MB).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon

DOMAIN = f"bench{os.getpid()}.cozy.localhost"
ROOT = "io.cozy.files.root-dir"
MiB = 2**20

STATIC_SERVER = textwrap.dedent(
    """
    import os, shutil, sys
    from twisted.internet import reactor
    from twisted.web import resource, server, static

    folder = sys.argv[1]

    class Root(resource.Resource):
        isLeaf = False
        def getChild(self, name, request):
            if request.method == b"PUT":
                return Upload()
            return static.File(folder).getChild(name, request)

    class Upload(resource.Resource):
        isLeaf = True
        def render_PUT(self, request):
            request.content.seek(0)
            with open(os.path.join(folder, "uploaded"), "wb") as out:
                shutil.copyfileobj(request.content, out, 1 << 20)
            return b"ok"

    port = reactor.listenTCP(0, server.Site(Root()), interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
    """
)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def send_file(
    port: int, method: str, path: str, headers: dict, source: str
) -> tuple[int, bytes]:
    size = os.path.getsize(source)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.putrequest(method, path, skip_host=True)
    for k, v in {**headers, "Content-Length": str(size)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    with open(source, "rb") as f:
        while chunk := f.read(MiB):
            conn.send(chunk)
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    return reply.status, body


def fetch(port: int, path: str, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.putrequest("GET", path, skip_host=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    reply = conn.getresponse()
    total = 0
    while chunk := reply.read(MiB):
        total += len(chunk)
    conn.close()
    assert reply.status == 200, reply.status
    return total


def median(function, repeats: int) -> float:
    times = sorted(timed(function) for _ in range(repeats))
    return times[len(times) // 2]


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,100,1024", help="MiB, comma-separated")
    parser.add_argument("--small", type=int, default=10000, help="4 KiB uploads")
    parser.add_argument("--list", type=int, default=10000, help="files in the listed dir")
    parser.add_argument("--couchdb-url", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    work = tempfile.mkdtemp(prefix="bench-files-")
    daemon = Daemon(os.path.join(work, "cozyd"), couchdb_url=args.couchdb_url or None)
    static_dir = os.path.join(work, "static")
    os.makedirs(static_dir)
    static = subprocess.Popen(
        [sys.executable, "-c", STATIC_SERVER, static_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        static_port = int(static.stdout.readline())
        daemon.start()
        added = daemon.cozyctl("instances", "add", DOMAIN)
        assert added.returncode == 0, added.stderr
        token = daemon.cozyctl(
            "instances", "token-cli", DOMAIN, "io.cozy.files"
        ).stdout.strip()
        port = daemon.ports["public"]
        auth = {"Host": DOMAIN, "Authorization": f"Bearer {token}"}
        engine = "couchdb" if args.couchdb_url else "embedded"
        print(f"cozyd /files benchmark ({engine} engine), one run")
        print()
        print(
            f"{'size':>8} | {'up cozyd':>9} {'up twisted':>10} {'cp':>8} | "
            f"{'down cozyd':>10} {'static.File':>11} | {'up %':>5} {'down %':>6}"
        )
        rows = []
        for mib in sizes:
            rows.append(measure(work, static_dir, daemon, port, static_port, auth, mib))
        print()
        small(daemon, port, auth, args.small)
        listing(daemon, port, auth, token, args.list)
        print()
        for mib, t_up, t_up_static, _cp, t_down, t_down_static, before, after in rows:
            print(
                f"goals at {mib} MiB: downloads {100 * t_down_static / t_down:.0f}% of the "
                f"static ceiling (≥ 80), uploads {100 * t_up_static / t_up:.0f}% (≥ 60), "
                f"peak RSS +{after - before:.0f} MiB (≤ 50)"
            )
    finally:
        daemon.stop()
        static.terminate()
        static.wait()
        shutil.rmtree(work, ignore_errors=True)


def measure(work, static_dir, daemon, port, static_port, auth, mib):
    """One size: the median time of each transfer, and the peak RSS."""
    source = os.path.join(work, f"source-{mib}")
    with open(source, "wb") as f:
        block = os.urandom(MiB)
        for _ in range(mib):
            f.write(block)
    name = f"f{mib}.bin"
    rss_before = peak_rss_mib(daemon.process.pid)
    # Small sizes are repeated (the median is kept): one sample of a few
    # milliseconds says little on a shared machine.
    repeats = max(1, min(15, 300 // mib))
    ids: list[str] = []

    def up_cozyd():
        import json

        path = f"/files/{ROOT}?Type=file&Name={len(ids)}-{name}"
        status, body = send_file(port, "POST", path, auth, source)
        assert status == 201, body[:300]
        ids.append(json.loads(body)["data"]["id"])

    target = os.path.join(work, "copy")
    t_up = median(up_cozyd, repeats)
    t_up_static = median(
        lambda: send_file(static_port, "PUT", "/uploaded", {"Host": "x"}, source), repeats
    )
    t_cp = median(lambda: subprocess.run(["cp", source, target], check=True), repeats)
    shutil.copyfile(source, os.path.join(static_dir, name))
    t_down = median(lambda: fetch(port, f"/files/download/{ids[0]}", auth), repeats)
    t_down_static = median(lambda: fetch(static_port, f"/{name}", {"Host": "x"}), repeats)
    rss_after = peak_rss_mib(daemon.process.pid)
    print(
        f"{mib:>5}MiB | {mib / t_up:>7.0f}/s {mib / t_up_static:>8.0f}/s {mib / t_cp:>6.0f}/s"
        f" | {mib / t_down:>8.0f}/s {mib / t_down_static:>9.0f}/s"
        f" | {100 * t_up_static / t_up:>4.0f}% {100 * t_down_static / t_down:>5.0f}%"
        f"   (MiB/s, median of {repeats}; peak RSS {rss_before:.0f} → {rss_after:.0f} MiB)"
    )
    for path in (source, target, os.path.join(static_dir, name)):
        os.unlink(path)
    return (mib, t_up, t_up_static, t_cp, t_down, t_down_static, rss_before, rss_after)


def small(daemon, port: int, auth: dict, count: int) -> None:
    made = http_json(port, "POST", f"/files/{ROOT}?Type=directory&Name=small", auth)
    folder = made["data"]["id"]
    body = os.urandom(4096)
    md5 = __import__("base64").b64encode(hashlib.md5(body).digest()).decode()
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(count))

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            start = time.perf_counter()
            conn.request(
                "POST",
                f"/files/{folder}?Type=file&Name=s{n}.bin",
                body=body,
                headers={**auth, "Content-MD5": md5},
            )
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 201, reply.status
            latencies.append(time.perf_counter() - start)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    print(
        f"{count} uploads of 4 KiB at concurrency 8: {count / elapsed:.0f} uploads/s, "
        f"p50 {1000 * latencies[len(latencies) // 2]:.1f} ms, "
        f"p99 {1000 * latencies[int(len(latencies) * 0.99)]:.1f} ms"
    )


def listing(daemon, port: int, auth: dict, token: str, count: int) -> None:
    found = http_json(port, "GET", "/files/metadata?Path=/small", auth)
    folder = found["data"]["id"]
    have = found["data"]["relationships"]["contents"]["meta"]["count"]
    if have < count:
        body = b"x"
        for n in range(have, count):
            http_json(port, "POST", f"/files/{folder}?Type=file&Name=l{n}", auth, body)
    start = time.perf_counter()
    seen, cursor, pages = 0, "", 0
    while True:
        path = f"/files/{folder}?page[limit]=1000" + (
            f"&page[cursor]={cursor}" if cursor else ""
        )
        page = http_json(port, "GET", path, auth)
        seen += len(page["included"])
        pages += 1
        nxt = page.get("links", {}).get("next")
        if not nxt:
            break
        cursor = nxt.split("page[cursor]=")[1].split("&")[0]
    elapsed = time.perf_counter() - start
    first = timed(lambda: http_json(port, "GET", f"/files/{folder}", auth))
    print(
        f"listing a directory of {seen} files: {elapsed * 1000:.0f} ms for {pages} pages "
        f"of 1000 ({seen / elapsed:.0f} entries/s); first page of 30: {first * 1000:.1f} ms"
    )


def http_json(port: int, method: str, path: str, headers: dict, body: bytes | None = None):
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.putrequest(method, path, skip_host=True)
    for k, v in {**headers, "Content-Length": str(len(body or b""))}.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    assert reply.status < 300, (reply.status, data[:300])
    return json.loads(data)


if __name__ == "__main__":
    main()
