"""The admin passphrase: hashed with scrypt, in cozy-stack's file format.

The file holds one line ``scrypt$N$r$p$<salt hex>$<key hex>``. ``cozyctl
config passwd`` writes it; the daemon reads it and checks the password of
every admin request's Basic auth against it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Any

SCRYPT_N = 16384
SCRYPT_R = 8
SCRYPT_P = 1
KEY_LEN = 32


class InvalidHashFile(ValueError):
    pass


def hash_passphrase(passphrase: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=KEY_LEN,
        maxmem=256 * 1024 * 1024,
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${key.hex()}"


def parse_hash(line: str) -> tuple[int, int, int, bytes, bytes]:
    parts = line.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise InvalidHashFile("not a scrypt$N$r$p$salt$key line")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError as exc:
        raise InvalidHashFile(f"malformed scrypt line: {exc}") from None
    if n < 2 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or not key:
        raise InvalidHashFile("scrypt parameters out of range")
    return n, r, p, salt, key


def verify_passphrase(passphrase: str, line: str) -> bool:
    n, r, p, salt, key = parse_hash(line)
    candidate = hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(key),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(candidate, key)


def read_hash_file(path: str) -> str:
    with open(path, encoding="ascii") as f:
        line = f.read().strip()
    parse_hash(line)
    return line


def write_hash_file(path: str, line: str) -> None:
    """Write the hash readable by its owner only, atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


async def _run_here(function: Callable[[], Any]) -> Any:
    return function()


class PassphraseChecker:
    """Checks Basic-auth passwords against the hash, caching good answers.

    scrypt costs tens of milliseconds by design, so it runs off the reactor
    thread, in ``run_hashing`` (the daemon's hashing pool; by default in the
    calling thread). A password that verified once is remembered as an HMAC
    under a per-process key, so later requests cost one constant-time
    comparison on the reactor thread and the clear password is never kept.

    With ``path``, the file is watched: every check first looks whether it
    changed (its inode, size or modification time), and re-reads it if so
    (``reload`` forces it: SIGHUP). A new passphrase works at once, the
    old one stops working. A file that became unreadable or invalid keeps
    the last good hash (and logs why).
    """

    def __init__(
        self,
        hash_line: str,
        *,
        run_hashing: Callable[[Callable[[], Any]], Awaitable[Any]] = _run_here,
        path: str | None = None,
    ):
        parse_hash(hash_line)
        self._run_hashing = run_hashing
        self._hash_line = hash_line
        self._key = secrets.token_bytes(32)
        self._known: bytes | None = None
        self._path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()

    def _stat(self) -> tuple | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload(self) -> bool:
        """Re-read the file; True if the hash changed."""
        from twisted.logger import Logger

        if self._path is None:
            return False
        with self._lock:
            self._stamp = self._stat()
            try:
                line = read_hash_file(self._path)
            except (OSError, InvalidHashFile) as exc:
                Logger().error(
                    "admin passphrase file {path} not re-read: {why}",
                    path=self._path,
                    why=getattr(exc, "strerror", None) or exc,
                )
                return False
            if line == self._hash_line:
                return False
            self._hash_line = line
            self._known = None
        Logger().info("admin passphrase changed ({path} re-read)", path=self._path)
        return True

    def _maybe_reload(self) -> None:
        if self._path is not None and self._stat() != self._stamp:
            self.reload()

    def _mac(self, passphrase: str) -> bytes:
        return hmac.new(self._key, passphrase.encode("utf-8"), hashlib.sha256).digest()

    async def check(self, passphrase: str) -> bool:
        self._maybe_reload()
        mac = self._mac(passphrase)
        if self._known is not None and hmac.compare_digest(mac, self._known):
            return True
        line = self._hash_line
        if await self._run_hashing(lambda: verify_passphrase(passphrase, line)):
            if line == self._hash_line:  # not replaced meanwhile
                self._known = mac
            return True
        return False
