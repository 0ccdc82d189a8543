"""Instance passphrases, hashed the way cozy-stack's clients expect.

A primitive under both ``auth`` (login) and ``instance`` (creation), so it
lives beside ``adminpass`` and neither package imports the other for it.

Clients never send the passphrase itself: they send PBKDF2-SHA256 of it,
salted with ``me@<host>`` (the Bitwarden convention cozy-stack follows), and
the server stores a slow scrypt hash of that value.
"""

from __future__ import annotations

import base64
import hashlib

from cozyd import adminpass

DEFAULT_KDF_ITERATIONS = 650_000
MIN_KDF_ITERATIONS = 50_000
MAX_KDF_ITERATIONS = 5_000_000


def salt_for(domain: str) -> bytes:
    host = domain.rsplit(":", 1)[0] if ":" in domain else domain
    return f"me@{host}".encode()


def client_side_hash(passphrase: str, domain: str, iterations: int) -> str:
    """What a browser sends instead of the passphrase (base64): the master
    key is PBKDF2(passphrase, salt, iterations); the login hash is one more
    PBKDF2 round of the master key salted with the passphrase (Bitwarden's
    scheme, which cozy-stack and its clients use)."""
    secret = passphrase.encode("utf-8")
    master_key = hashlib.pbkdf2_hmac(
        "sha256", secret, salt_for(domain), iterations, dklen=32
    )
    hashed = hashlib.pbkdf2_hmac("sha256", master_key, secret, 1, dklen=32)
    return base64.b64encode(hashed).decode("ascii")


def server_hash(client_hash: str) -> bytes:
    return adminpass.hash_passphrase(client_hash).encode("ascii")


def check_server_hash(client_hash: str, stored: bytes) -> bool:
    return adminpass.verify_passphrase(client_hash, stored.decode("ascii"))
