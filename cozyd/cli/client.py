"""The admin API client: one HTTP helper that every command goes through.

Plain ``urllib`` (no Twisted) so that cozyctl starts fast. All parameters
travel in the query string, as cozy-stack's admin API wants them; answers
that are errors become a ``CLIError`` carrying the server's detail.
"""

from __future__ import annotations

import base64
import getpass
import http.client
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cozyd.cli.output import CLIError

DEFAULT_TIMEOUT = 15.0
#: Where the Debian package writes the generated admin passphrase, in
#: clear, readable by root only: cozyctl run as root finds it there.
DEFAULT_PASSPHRASE_FILE = "/etc/cozyd/admin-passphrase"
# Creating or destroying an instance touches many databases and files.
LONG_TIMEOUT = 300.0

Query = Mapping[str, str] | Sequence[tuple[str, str]]

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number of seconds or a Go duration
    (``15s``, ``2m``, ``1h30m``, ``500ms``). Raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if _NUMBER.fullmatch(s):
        return float(s)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (examples: 30, 15s, 2m, 1h30m)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def go_duration(text: str) -> str:
    """``text`` checked and written as Go's ``time.ParseDuration`` reads it:
    a plain number is taken as seconds."""
    parse_duration(text)
    s = text.strip()
    return f"{s}s" if _NUMBER.fullmatch(s) else s


def instance_path(domain: str, *rest: str) -> str:
    """``/instances/<domain>[/rest…]`` with the domain percent-encoded
    (it holds a ``:port``)."""
    return "/".join(["/instances", urllib.parse.quote(domain, safe=""), *rest])


def has_terminal() -> bool:
    stdin = sys.stdin
    return stdin is not None and stdin.isatty()


def env_passphrase(env: Mapping[str, str]) -> str | None:
    return env.get("COZY_ADMIN_PASSPHRASE") or env.get("COZY_ADMIN_PASSWORD") or None


def file_passphrase(env: Mapping[str, str]) -> str | None:
    """The admin passphrase kept in a file: the first line of
    ``COZY_ADMIN_PASSPHRASE_FILE`` (an error if it cannot be read), else of
    ``DEFAULT_PASSPHRASE_FILE`` when it exists and this user may read it.
    ``COZY_ADMIN_PASSPHRASE_FILE=`` (empty) turns the lookup off."""
    named = env.get("COZY_ADMIN_PASSPHRASE_FILE")
    if named == "":
        return None
    path = named or DEFAULT_PASSPHRASE_FILE
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        if named is None:
            return None  # not there, or not ours (cozyctl run as another user)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CLIError(
            f"COZY_ADMIN_PASSPHRASE_FILE: cannot read {path}: {reason}"
        ) from None
    if text.startswith("scrypt$"):
        raise CLIError(
            f"{path} holds the hashed admin passphrase (the daemon's "
            "[admin] secret_filename), not the passphrase itself"
        )
    if not text:
        if named is None:
            return None
        raise CLIError(f"COZY_ADMIN_PASSPHRASE_FILE: {path} is empty")
    return text


def admin_password(env: Mapping[str, str]) -> str:
    """The admin passphrase from the environment, else from a passphrase
    file (see ``file_passphrase``), else asked on the terminal."""
    password = env_passphrase(env) or file_passphrase(env)
    if password is not None:
        return password
    if not has_terminal():
        raise CLIError(
            "no admin passphrase: set COZY_ADMIN_PASSPHRASE or "
            f"COZY_ADMIN_PASSPHRASE_FILE (as root, {DEFAULT_PASSPHRASE_FILE} is "
            "read when it exists), or run cozyctl from a terminal to be asked for it"
        )
    try:
        return getpass.getpass("Password: ", stream=sys.stderr)
    except EOFError:
        raise CLIError("no admin passphrase given") from None


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            snippet = self.text()[:200]
            raise CLIError(
                f"the admin API answered {self.status} with a body that "
                f"is not JSON: {snippet!r}"
            ) from None


def error_message(status: int, reason: str, body: bytes) -> str:
    """The human message in an error answer: a JSON:API error's detail, a
    CouchDB-style ``error``/``reason``, or a short text body."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    message = ""
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors:
            parts = [
                str(e.get("detail") or e.get("title") or "")
                for e in errors
                if isinstance(e, dict)
            ]
            message = "; ".join(p for p in parts if p)
        elif doc.get("error"):
            message = str(doc["error"])
            if doc.get("reason"):
                message += f": {doc['reason']}"
    elif doc is None:
        text = body.decode("utf-8", errors="replace").strip()
        if text and len(text) <= 2000 and not text.lstrip().startswith("<"):
            message = text
    if status == 401:
        return "the admin API refused the passphrase (401 Unauthorized)" + (
            f": {message}" if message else ""
        )
    return message or f"the admin API answered {status} {reason}".rstrip()


@dataclass
class AdminClient:
    host: str
    port: int
    password: Callable[[], str]
    timeout: float | None = DEFAULT_TIMEOUT
    _password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _auth_header(self) -> str:
        if self._password is None:
            self._password = self.password()
        token = base64.b64encode(f"admin:{self._password}".encode()).decode("ascii")
        return f"Basic {token}"

    def request(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        *,
        min_timeout: float | None = None,
    ) -> Response:
        url = f"http://{self.address}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(
            url,
            method=method,
            headers={
                "Authorization": self._auth_header(),
                "Accept": "application/vnd.api+json, application/json, text/plain",
                "User-Agent": "cozyctl",
            },
        )
        timeout = self.timeout
        if timeout is not None and min_timeout is not None:
            timeout = max(timeout, min_timeout)
        # The admin API is local: never route it through a proxy from the env.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=timeout) as res:
                return Response(res.status, dict(res.headers.items()), res.read())
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            raise CLIError(error_message(exc.code, exc.reason or "", body)) from None
        except urllib.error.URLError as exc:
            raise self._connection_error(exc.reason, timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._connection_error(exc, timeout) from None

    def _connection_error(self, reason: object, timeout: float | None) -> CLIError:
        where = f"the admin API at {self.address}"
        if isinstance(reason, ConnectionRefusedError):
            return CLIError(
                f"could not connect to {where}: connection refused "
                "(is cozyd running? see --admin-host/--admin-port)"
            )
        if isinstance(reason, (TimeoutError, socket.timeout)) and timeout is not None:
            return CLIError(
                f"{where} did not answer within {timeout:g}s "
                "(set COZY_ADMIN_TIMEOUT to wait longer)"
            )
        return CLIError(f"could not reach {where}: {reason}")

    def json(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        *,
        min_timeout: float | None = None,
    ) -> Any:
        return self.request(method, path, query, min_timeout=min_timeout).json()


@dataclass
class Context:
    """What a command needs from outside: the environment and the admin API
    (connected lazily, so local commands never ask for a passphrase)."""

    env: Mapping[str, str]
    admin_host: str = "localhost"
    admin_port: int = 6060
    host: str = "localhost"
    port: int = 8080
    timeout: float | None = DEFAULT_TIMEOUT
    _admin: AdminClient | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: Any, env: Mapping[str, str] | None = None) -> Context:
        """Flags win over ``COZY_*`` variables, which win over defaults."""
        env = os.environ if env is None else env

        def pick(attr: str, var: str, default: str) -> str:
            value = getattr(args, attr, None)
            return str(value) if value is not None else (env.get(var) or default)

        timeout_text = env.get("COZY_ADMIN_TIMEOUT") or ""
        try:
            timeout = parse_duration(timeout_text) if timeout_text else DEFAULT_TIMEOUT
        except ValueError as exc:
            raise CLIError(f"COZY_ADMIN_TIMEOUT: {exc}") from None
        return cls(
            env=env,
            admin_host=pick("admin_host", "COZY_ADMIN_HOST", "localhost"),
            admin_port=_port(pick("admin_port", "COZY_ADMIN_PORT", "6060"), "admin port"),
            host=pick("host", "COZY_HOST", "localhost"),
            port=_port(pick("port", "COZY_PORT", "8080"), "port"),
            timeout=timeout or None,
        )

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(
                self.admin_host,
                self.admin_port,
                lambda: admin_password(self.env),
                self.timeout,
            )
        return self._admin


def _port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise CLIError(f"invalid {what}: {text!r}")
    return port
