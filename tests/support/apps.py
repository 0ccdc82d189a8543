"""Apps for the tests: folders and tarballs holding a manifest, and a small
apps registry speaking registry.md's querying API (over http, or https
with a certificate of tests/support/tls.py), which also serves the
tarballs it names."""

from __future__ import annotations

import hashlib
import io
import json
import os
import ssl
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: An index that reads its token from the page and calls /data with it.
INDEX = """<!DOCTYPE html>
<html lang="{{.Locale}}">
<head><meta charset="utf-8"><title>{{.AppName}}</title>
{{.CozyBar}}
<script src="app.0123456789abcdef.js"></script>
</head>
<body>
<div role="application" data-cozy="{{.CozyData}}" data-cozy-token="{{.Token}}"
     data-cozy-domain="{{.Domain}}"></div>
<script>window.appSlug = {{.AppSlug}};</script>
</body>
</html>
"""

SCRIPT = """
document.addEventListener("DOMContentLoaded", function () {
  var data = JSON.parse(document.querySelector("[role=application]").dataset.cozy);
  var url = location.protocol + "//" + data.domain + "/data/io.cozy.notes/";
  fetch(url, {
    method: "POST",
    headers: {Authorization: "Bearer " + data.token, "Content-Type": "application/json"},
    body: JSON.stringify({title: "written by the app"}),
    credentials: "include"
  })
    .then(function (r) { return r.text().then(function (t) {
      document.title = "data:" + r.status;
      document.body.setAttribute("data-answer", t);
    }); })
    .catch(function (e) { document.title = "error:" + e; });
});
"""


def manifest(slug: str = "notes", version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": slug.capitalize(),
        "slug": slug,
        "version": version,
        "editor": "Tests",
        "icon": "icon.svg",
        "permissions": {
            "notes": {"type": "io.cozy.notes", "description": "the notes", "verbs": ["ALL"]}
        },
        "routes": {
            "/": {"folder": "/", "index": "index.html", "public": False},
            "/public": {"folder": "/public", "index": "index.html", "public": True},
        },
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def app_files(man: dict[str, Any], kind: str = "webapp") -> dict[str, bytes]:
    name = "manifest.webapp" if kind == "webapp" else "manifest.konnector"
    files = {
        name: json.dumps(man).encode(),
        "icon.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>',
    }
    if kind == "webapp":
        files.update(
            {
                "index.html": INDEX.encode(),
                "app.0123456789abcdef.js": SCRIPT.encode(),
                "style.css": b"body { color: black }",
                "public/index.html": b"<p>public {{.AppSlug}} {{.Token}}</p>",
            }
        )
    else:
        files["index.js"] = b"console.log('konnector')"
    return files


def write_folder(path: str, files: dict[str, bytes]) -> str:
    for name, content in files.items():
        target = os.path.join(path, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(content)
    return path


def tarball(files: dict[str, bytes], prefix: str = "", extra=None) -> bytes:
    """A gzipped tarball of ``files`` (under ``prefix``); ``extra(tar)``
    may add hostile entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        if extra is not None:
            extra(tar)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Registry:
    """A registry of apps and their tarballs, served on 127.0.0.1."""

    def __init__(self, tls: tuple[str, str] | None = None):
        self.versions: dict[tuple[str, str], dict[str, Any]] = {}
        self.latest: dict[tuple[str, str], str] = {}
        self.blobs: dict[str, bytes] = {}
        self.garbage: dict[str, bytes] = {}
        self.requests: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                registry.requests.append(self.path)
                status, body, kind = registry.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def blob(self, name: str, data: bytes) -> str:
        self.blobs[name] = data
        return f"{self.url}/blobs/{name}"

    def publish(
        self,
        slug: str,
        version: str,
        data: bytes,
        *,
        channel: str = "stable",
        kind="webapp",
    ) -> dict[str, Any]:
        url = self.blob(f"{slug}-{version}.tar.gz", data)
        entry = {
            "slug": slug,
            "type": kind,
            "version": version,
            "url": url,
            "sha256": sha256(data),
            "size": str(len(data)),
            "created_at": "2026-01-01T00:00:00Z",
            "manifest": {},
        }
        self.versions[(slug, version)] = entry
        self.latest[(slug, channel)] = version
        return entry

    def answer(self, path: str) -> tuple[int, bytes, str]:
        path = path.split("?", 1)[0]
        if path in self.garbage:
            return 200, self.garbage[path], "application/json"
        if path.startswith("/blobs/"):
            data = self.blobs.get(path[len("/blobs/") :])
            return (200, data, "application/gzip") if data is not None else (404, b"", "")
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "registry" and parts[3] == "latest":
            version = self.latest.get((parts[1], parts[2]))
            entry = self.versions.get((parts[1], version or ""))
        elif len(parts) == 3 and parts[0] == "registry":
            entry = self.versions.get((parts[1], parts[2]))
        else:
            entry = None
        if entry is None:
            return 404, b'{"error":"not found"}', "application/json"
        return 200, json.dumps(entry).encode(), "application/json"
