"""Load and validate ``cozyd.conf`` into a frozen ``Config``.

The file is INI. Every key has a type and a default; a value comes, from
strongest to weakest, from a command-line flag, a ``COZYD_<SECTION>_<KEY>``
environment variable, the file, the default. Unknown sections or keys and
bad values are all collected and reported together: the daemon refuses to
start with the whole list instead of failing on the first one.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from cozyd import adminpass


class ConfigError(Exception):
    """Every problem found, one ``file: [section] key: why`` line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# -- value parsers: str -> value, raising ValueError with a reason ----------


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def _byte_size(text: str) -> int:
    """``10MB``, ``512KiB``, ``1048576``… → a positive number of bytes."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError("must be a size such as 10MB, 512KiB or a number of bytes")
    value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value <= 0:
        raise ValueError("must be a positive size")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def _text(text: str) -> str:
    return text.strip()


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return value


#: Endpoint kinds a listener description may use (Twisted's syntax).
LISTENER_KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd")


def _listener(text: str) -> str:
    """A Twisted server endpoint description, ``tcp:8080:interface=127.0.0.1``,
    ``ssl:8443:privateKey=key.pem:certKey=cert.pem``, ``unix:/run/cozyd.sock``,
    ``systemd:domain=INET:index=0``; empty: from ``host`` and ``port``."""
    text = text.strip()
    if not text:
        return ""
    from twisted.internet.endpoints import _parse

    kind = text.split(":", 1)[0].lower()
    if kind not in LISTENER_KINDS:
        raise ValueError(
            "must be a listener description starting with one of "
            + ", ".join(f"{k}:" for k in LISTENER_KINDS)
        )
    try:
        args, kwargs = _parse(text)
    except Exception:
        raise ValueError("must be a Twisted endpoint description") from None
    if kind in ("tcp", "tcp6", "ssl") and len(args) < 2 and "port" not in kwargs:
        raise ValueError(f"must name a port ({kind}:PORT or {kind}:port=PORT)")
    if kind == "unix" and len(args) < 2 and "address" not in kwargs:
        raise ValueError("must name a socket path (unix:/path/to/socket)")
    if kind == "ssl" and "privateKey" not in kwargs:
        raise ValueError(
            "must name its key and certificate files "
            "(ssl:PORT:privateKey=key.pem:certKey=cert.pem)"
        )
    return text


def listener_interface(description: str) -> str | None:
    """The address a tcp/ssl description binds (``""``: every address),
    None for kinds without one known before listening (unix, systemd)."""
    from twisted.internet.endpoints import _parse

    kind = description.split(":", 1)[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    args, kwargs = _parse(description)
    positional = args[2] if kind != "ssl" and len(args) > 2 else ""
    return kwargs.get("interface", positional)


def tcp_description(host: str, port: int) -> str:
    """The endpoint description of the ``host``/``port`` shorthand."""
    escaped = host.replace(":", "\\:")
    kind = "tcp6" if ":" in host else "tcp"
    return f"{kind}:port={port}:interface={escaped}"


def _http_url(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return text


def _realtime_url(text: str) -> str:
    """Empty (one node), or the redis:// URL the nodes share events through."""
    text = text.strip()
    if not text:
        return ""
    from cozyd.redisurl import RedisAddress

    try:
        RedisAddress.parse(text)
    except ValueError as exc:
        raise ValueError(f"must be empty or a redis:// URL ({exc})") from None
    return text


def _http_urls(text: str) -> tuple[str, ...]:
    """Space- or comma-separated http(s):// URLs (the apps registries)."""
    return tuple(_http_url(part) for part in text.replace(",", " ").split())


def _file_url(text: str) -> str:
    text = text.strip()
    if text and not text.startswith("file://"):
        raise ValueError("must be a file:// URL (other stores are not supported yet)")
    return text


def _redis_url(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    from cozyd.redisurl import RedisAddress

    RedisAddress.parse(text)  # ValueError with the reason
    if not text.startswith(("redis://", "rediss://")):
        raise ValueError("must be a redis:// URL")
    return text


def _worker_counts(text: str) -> dict[str, int]:
    """``log=4, sendmail=2`` → {"log": 4, "sendmail": 2}."""
    counts: dict[str, int] = {}
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError("must be a list of worker=count (log=4, sendmail=2)")
        counts[name.strip()] = int(value)
    return counts


# (section, key) -> (parser, default as text)
SCHEMA: dict[str, dict[str, tuple[Callable[[str], Any], str]]] = {
    "server": {
        "host": (_text, "127.0.0.1"),
        "port": (_port, "8080"),
        # Largest request body read (JSON documents, bulk writes…): 413 beyond.
        "max_body_size": (_byte_size, "10MB"),
        # Scheme of the public URLs (https behind a TLS front end): links,
        # redirections, and the Secure flag of cookies.
        "scheme": (_choice("http", "https"), "http"),
        # Seconds a client has to send a request's whole head (request line
        # and headers) once it started it: 408 and closed beyond.
        "header_timeout": (_positive_float, "30"),
        # Routes only meant for cozyd's own tests (/_debug/...): keep off.
        "test_routes": (_bool, "false"),
        # A Twisted endpoint description (tcp:, ssl:, unix:, systemd:);
        # empty: tcp on host and port.
        "listen": (_listener, ""),
        # Seconds in-flight requests get to finish after SIGTERM.
        "shutdown_grace": (_non_negative_float, "10"),
    },
    "admin": {
        "host": (_text, "127.0.0.1"),
        "port": (_port, "6060"),
        "listen": (_listener, ""),
        "secret_filename": (_text, "cozy-admin-passphrase"),
        "allow_remote": (_bool, "false"),
    },
    "storage": {
        "engine": (_choice("embedded", "couchdb"), "embedded"),
        "data_dir": (_text, "/var/lib/cozyd"),
        "idle_timeout": (_positive_float, "30"),
        "max_open_files": (_positive_int, "64"),
    },
    "couchdb": {
        "url": (_http_url, "http://127.0.0.1:5984/"),
        "timeout": (_positive_float, "30"),
        # PEM file of the certificate authorities trusted for an https://
        # CouchDB (empty: the system's).
        "ca_file": (_text, ""),
    },
    "log": {
        # text (twistd's lines) or json (one object per line).
        "format": (_choice("text", "json"), "text"),
    },
    "fs": {
        "url": (_file_url, ""),
        # Old versions kept per file on overwrite (0: none), and the least
        # time between two of them (a newer overwrite replaces no version).
        "versions_max_number": (_non_negative_int, "20"),
        "versions_min_delay": (_non_negative_float, "900"),
        # Largest file accepted by an upload (413 beyond).
        "max_file_size": (_byte_size, "1000GB"),
        # Thumbnails of images, made in the background after an upload.
        "thumbnails": (_bool, "true"),
        # Largest image (in pixels) a thumbnail is made of.
        "thumbnail_max_pixels": (_positive_int, "50000000"),
    },
    "instances": {
        "cache_ttl": (_positive_float, "5"),
        "kdf_iterations": (_positive_int, "650000"),
    },
    "auth": {
        # Failed logins an hour before an instance is blocked (LOGIN_FAILED).
        "login_failures_per_hour": (_positive_int, "1000"),
    },
    "konnectors": {
        # The command a konnector is run with, as `<cmd> <dir or file>`
        # (empty: node, found on PATH at start).
        "cmd": (_text, ""),
        # bwrap (bubblewrap namespaces) or none (no sandbox, chosen explicitly).
        "sandbox": (_choice("bwrap", "none"), "bwrap"),
        "bwrap": (_text, "bwrap"),
        # A command put before the whole sandbox command line (nice, ...).
        "wrapper": (_text, ""),
        "network": (_bool, "true"),
        # Limits of a konnector's processes (rlimits).
        "memory": (_byte_size, "1GiB"),
        "cpu_time": (_positive_int, "1000"),
        "processes": (_positive_int, "512"),
        "file_size": (_byte_size, "1GiB"),
        "open_files": (_positive_int, "128"),
        "tmp_size": (_byte_size, "256MiB"),
        # uid:gid konnectors run as when cozyd runs as root.
        "run_as": (_text, "65534:65534"),
        # Seconds between TERM and KILL when a konnector is stopped.
        "kill_grace": (_non_negative_float, "5"),
        # Key files of the accounts' credentials (`cozyctl config gen-keys`),
        # relative to the configuration directory; missing: not encrypted.
        "credentials_encryptor_key": (_text, "cozy-credentials.enc"),
        "credentials_decryptor_key": (_text, "cozy-credentials.dec"),
    },
    "realtime": {
        # Empty: one node. redis://[:password@]host[:port][/db]: the nodes
        # sharing it deliver each other's events (--realtime-url).
        "url": (_realtime_url, ""),
        # Largest message a client may send (closed with 1009 beyond).
        "max_message_size": (_byte_size, "1024"),
        "max_subscriptions": (_positive_int, "1000"),
        # Events kept for a client that reads too slowly (closed beyond).
        "max_queue": (_positive_int, "1000"),
        "messages_per_second": (_positive_float, "50"),
        "burst": (_positive_int, "200"),
        "auth_timeout": (_positive_float, "60"),
        "write_timeout": (_positive_float, "10"),
        "ping_interval": (_non_negative_float, "54"),
        "ping_timeout": (_positive_float, "6"),
        "max_connections": (_positive_int, "50000"),
    },
    "apps": {
        # Apps registries asked in turn for registry:// sources.
        "registries": (_http_urls, ""),
        # App hosts: nested (<slug>.<domain>) or flat (<user>-<slug>.<parent>).
        "subdomains": (_choice("nested", "flat"), "nested"),
        # Bytes an app's code may expand to, and its download may weigh.
        "max_app_size": (_byte_size, "200MB"),
        # Seconds a download (tarball, registry answer) may take.
        "fetch_timeout": (_positive_float, "60"),
        # http:// sources and registries (tests only: no integrity on the way).
        "allow_http_sources": (_bool, "false"),
    },
    "jobs": {
        # Empty: one node, jobs queued in memory. redis://…: many nodes
        # share the queue, the scheduler's locks and timeline.
        "url": (_redis_url, ""),
        # Jobs of a worker one node runs at once: log=4, sendmail=2, …
        "concurrency": (_worker_counts, ""),
    },
    "mail": {
        "host": (_text, "127.0.0.1"),
        "port": (_port, "25"),
        "tls": (_choice("none", "starttls", "ssl"), "starttls"),
        "username": (_text, ""),
        "password": (_text, ""),
        "from": (_text, ""),
        "ca_file": (_text, ""),
        "timeout": (_positive_float, "30"),
    },
}

#: Command-line flags of ``twistd cozyd`` and the keys they set.
FLAG_KEYS = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "admin-host": ("admin", "host"),
    "admin-port": ("admin", "port"),
    "listen": ("server", "listen"),
    "admin-listen": ("admin", "listen"),
    "couchdb-url": ("couchdb", "url"),
    "fs-url": ("fs", "url"),
    "data-dir": ("storage", "data_dir"),
    "realtime-url": ("realtime", "url"),
}


@attrs.frozen
class Config:
    source: str
    values: Mapping[tuple[str, str], Any]
    #: The admin passphrase hash line, read at load time.
    admin_passphrase_hash: str

    def get(self, section: str, key: str) -> Any:
        return self.values[(section, key)]

    @property
    def data_dir(self) -> str:
        return self.get("storage", "data_dir")

    @property
    def fs_root(self) -> str:
        """Directory under which each instance has its files directory."""
        url = self.get("fs", "url")
        if url:
            return url[len("file://") :]
        return os.path.join(self.data_dir, "files")

    @property
    def db_dir(self) -> str:
        return os.path.join(self.data_dir, "db")


def load_config(
    path: str | None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Config:
    """Read ``path`` (may be None: defaults only), apply env and flags."""
    env = os.environ if env is None else env
    flags = flags or {}
    problems: list[str] = []
    raw: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (text, origin)
    base_dir = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    source = path or "(defaults)"

    if path is not None:
        _read_file(path, raw, problems)
    for section, key in _all_keys():
        name = f"COZYD_{section.upper()}_{key.upper()}"
        if name in env:
            raw[(section, key)] = (env[name], f"environment {name}")
    for flag, value in flags.items():
        if value is None:
            continue
        if flag not in FLAG_KEYS:
            problems.append(f"--{flag}: unknown option")
            continue
        raw[FLAG_KEYS[flag]] = (str(value), f"option --{flag}")
        if flag == "couchdb-url":
            # Naming a CouchDB server selects the CouchDB engine.
            raw[("storage", "engine")] = ("couchdb", f"option --{flag}")

    # --host/--port (shorthands) beat a listen description from the file
    # or the environment; --listen beats them.
    for section, prefix in (("server", ""), ("admin", "admin-")):
        shorthand = any(flags.get(prefix + f) is not None for f in ("host", "port"))
        if shorthand and flags.get(prefix + "listen") is None:
            raw.pop((section, "listen"), None)

    values: dict[tuple[str, str], Any] = {}
    for section, key in _all_keys():
        parser, default = SCHEMA[section][key]
        text, origin = raw.get((section, key), (default, "default"))
        try:
            values[(section, key)] = parser(text)
        except ValueError as exc:
            reason = str(exc) if "must" in str(exc) else f"invalid value {text!r}"
            problems.append(f"{_where(source, origin)}[{section}] {key}: {reason}")

    for key in ("data_dir",):
        if ("storage", key) in values:
            values[("storage", key)] = _resolve(base_dir, values[("storage", key)])
    for key in ("credentials_encryptor_key", "credentials_decryptor_key"):
        if values.get(("konnectors", key)):
            values[("konnectors", key)] = _resolve(base_dir, values[("konnectors", key)])
    if values.get(("couchdb", "ca_file")):
        values[("couchdb", "ca_file")] = _resolve(base_dir, values[("couchdb", "ca_file")])
    for section in ("server", "admin"):
        if (
            (section, "listen") in values
            and not values[(section, "listen")]
            and (section, "host") in values
            and (section, "port") in values
        ):
            values[(section, "listen")] = tcp_description(
                values[(section, "host")], values[(section, "port")]
            )
    if values.get(("fs", "url")):
        values[("fs", "url")] = "file://" + _resolve(base_dir, values[("fs", "url")][7:])

    _check_admin_host(values, source, problems)
    hash_line = _read_admin_secret(values, base_dir, source, problems)
    if problems:
        raise ConfigError(problems)
    return Config(source=source, values=values, admin_passphrase_hash=hash_line)


def _all_keys():
    for section, keys in SCHEMA.items():
        for key in keys:
            yield section, key


def _where(source: str, origin: str) -> str:
    return f"{source}: " if origin == "file" else f"{origin}: "


def _resolve(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _read_file(path: str, raw: dict, problems: list[str]) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as exc:
        problems.append(f"{path}: cannot read the configuration file: {exc.strerror}")
        return
    except configparser.Error as exc:
        problems.append(f"{path}: {' '.join(str(exc).split())}")
        return
    for section in parser.sections():
        if section not in SCHEMA:
            problems.append(f"{path}: [{section}]: unknown section")
            continue
        for key, value in parser.items(section):
            if key not in SCHEMA[section]:
                problems.append(f"{path}: [{section}] {key}: unknown key")
            else:
                raw[(section, key)] = (value, "file")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _check_admin_host(values: dict, source: str, problems: list[str]) -> None:
    if values.get(("admin", "allow_remote")):
        return
    listen = values.get(("admin", "listen"))
    if not listen:
        return
    host = listener_interface(listen)
    if host is not None and not is_loopback(host):
        shown = (
            f"{host!r} is not a loopback address"
            if host
            else f"{listen!r} listens on every address"
        )
        key = (
            "host"
            if listen
            == tcp_description(
                values.get(("admin", "host"), ""), values.get(("admin", "port"), -1)
            )
            else "listen"
        )
        problems.append(
            f"{source}: [admin] {key}: {shown}; the admin "
            "API must stay on loopback unless [admin] allow_remote = true"
        )


def _read_admin_secret(
    values: dict, base_dir: str, source: str, problems: list[str]
) -> str:
    name = values.get(("admin", "secret_filename"))
    if not name:
        return ""
    path = _resolve(base_dir, name)
    values[("admin", "secret_filename")] = path
    try:
        return adminpass.read_hash_file(path)
    except FileNotFoundError:
        problems.append(
            f"{source}: [admin] secret_filename: {path} does not exist; create it "
            f"with `cozyctl config passwd {path}`"
        )
    except OSError as exc:
        problems.append(
            f"{source}: [admin] secret_filename: cannot read {path}: {exc.strerror}"
        )
    except adminpass.InvalidHashFile as exc:
        problems.append(f"{source}: [admin] secret_filename: {path}: {exc}")
    return ""
