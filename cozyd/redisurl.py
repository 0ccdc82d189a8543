"""``redis://`` URLs of the configuration (``[realtime] url``, ``[jobs] url``),
as cozy-stack writes them: ``redis://[:password@]host[:port][/db]``, or
``rediss://`` for TLS. ``connection_args(url)`` gives the keyword arguments
of txredisapi's connections (``host``, ``port``, ``dbid``, ``password``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

DEFAULT_PORT = 6379


@attrs.frozen
class RedisAddress:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// URL: {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in the redis URL {url!r}")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"bad port or database number in {url!r}") from None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, db, password, parts.scheme == "rediss")

    def connection_args(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "dbid": self.db,
            "password": self.password,
        }

    def __str__(self) -> str:  # never the password: this goes to logs
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"
