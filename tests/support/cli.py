"""Test support for cozyctl: a fake admin API in a thread, and a runner.

``tests/unit/cli/conftest.py`` registers the fixtures ``admin`` (the fake
admin API) and ``cli`` (runs ``cozyctl``'s main against it) for the cli
tests.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cozyd.cli.main import main

PASSPHRASE = "s3cret-admin-passphrase"
DOMAIN = "alice.cozy.localhost:8080"


@dataclass
class Seen:
    method: str
    path: str  # raw path, still percent-encoded
    query: list[tuple[str, str]]
    authorization: str | None

    @property
    def params(self) -> dict[str, str]:
        return dict(self.query)

    @property
    def password(self) -> str | None:
        if not self.authorization or not self.authorization.startswith("Basic "):
            return None
        return base64.b64decode(self.authorization[6:]).decode().partition(":")[2]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/vnd.api+json"
    delay: float = 0.0


@dataclass
class FakeAdmin:
    """Answers canned replies per (method, raw path) and records requests."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    replies: dict[tuple[str, str], Reply | Callable[[Seen], Reply]] = field(
        default_factory=dict
    )

    def reply(
        self,
        method: str,
        path: str,
        status: int = 200,
        body: Any = None,
        *,
        text: str | None = None,
        delay: float = 0.0,
    ) -> None:
        if text is not None:
            self.replies[(method, path)] = Reply(status, text.encode(), "text/plain", delay)
        else:
            raw = b"" if body is None else json.dumps(body).encode()
            self.replies[(method, path)] = Reply(status, raw, delay=delay)

    def error(self, method: str, path: str, status: int, detail: str) -> None:
        self.reply(
            method,
            path,
            status,
            {
                "errors": [
                    {
                        "status": str(status),
                        "title": "Error",
                        "code": "error",
                        "detail": detail,
                    }
                ]
            },
        )

    @property
    def last(self) -> Seen:
        assert self.requests, "no request reached the fake admin API"
        return self.requests[-1]

    def handle(self, seen: Seen) -> Reply:
        self.requests.append(seen)
        reply = self.replies.get((seen.method, seen.path))
        if reply is None:
            return Reply(
                404,
                json.dumps(
                    {
                        "errors": [
                            {
                                "status": "404",
                                "title": "Not Found",
                                "detail": f"no route {seen.method} {seen.path}",
                            }
                        ]
                    }
                ).encode(),
            )
        return reply(seen) if callable(reply) else reply


def _handler_for(fake: FakeAdmin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            seen = Seen(
                self.command,
                path,
                urllib.parse.parse_qsl(query, keep_blank_values=True),
                self.headers.get("Authorization"),
            )
            reply = fake.handle(seen)
            if reply.delay:
                time.sleep(reply.delay)
            self.send_response(reply.status)
            if reply.status != 204:
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.status != 204:
                try:
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(name="admin")
def admin_fixture():
    fake = FakeAdmin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(fake))
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(name="cli")
def cli_fixture(admin, capsys, monkeypatch):
    """``cli("instances", "ls")`` runs main() against the fake admin API."""
    for var in (
        "COZY_ADMIN_PASSPHRASE",
        "COZY_ADMIN_PASSWORD",
        "COZY_ADMIN_HOST",
        "COZY_ADMIN_PORT",
        "COZY_HOST",
        "COZY_PORT",
        "COZY_ADMIN_TIMEOUT",
        "COZY_DISABLE_INSTANCES_ADD_RM",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COZY_ADMIN_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("COZY_ADMIN_PORT", str(admin.port))
    monkeypatch.setenv("COZY_ADMIN_HOST", "127.0.0.1")

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        assert PASSPHRASE not in captured.out + captured.err
        return Result(code, captured.out, captured.err)

    return run


def instance_data(domain: str = DOMAIN, **attrs: Any) -> dict[str, Any]:
    attributes = {
        "domain": domain,
        "prefix": "cozy0123456789abcdef0123456789abcd",
        "locale": "en",
        "onboarding_finished": False,
        "indexes_version": 31,
    }
    attributes.update(attrs)
    return {
        "type": "instances",
        "id": "0dc76ad9b1cf3a979b916b3155001830",
        "attributes": attributes,
        "meta": {"rev": "1-abc"},
        "links": {"self": "/instances/0dc76ad9b1cf3a979b916b3155001830"},
    }


def quoted(domain: str = DOMAIN) -> str:
    return "/instances/" + urllib.parse.quote(domain, safe="")
