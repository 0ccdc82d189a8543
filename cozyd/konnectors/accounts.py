"""The credentials of ``io.cozy.accounts``, encrypted at rest.

As cozy-stack (model/account/credentials.go): when an account is written
through ``/data``, ``auth.password`` becomes ``auth.credentials_encrypted``
(login and password together), and ``secret``, ``dob``, ``code``,
``answer``, ``access_token``, ``refresh_token``, ``appSecret`` and
``session`` become ``<name>_encrypted`` (the same in ``data.auth``);
``auth.login`` stays readable. Only a konnector's own token (audience
``konn``, subject the account's ``account_type``) reads them decrypted.

The keys are a pair made by ``cozyctl config gen-keys <path>``:
``<path>.enc`` (an X25519 public key: enough to encrypt) and
``<path>.dec`` (its private key: needed to decrypt), PEM files of mode
0400 in the configuration directory (``[konnectors]
credentials_encryptor_key`` / ``credentials_decryptor_key``). Each value
is sealed to the public key: an ephemeral X25519 key, HKDF-SHA256, then
ChaCha20-Poly1305, written ``base64("cozyd1" + ephemeral key + nonce +
ciphertext)``.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ACCOUNTS_DOCTYPE = "io.cozy.accounts"
HEADER = b"cozyd1"
ENCRYPTED_SUFFIX = "_encrypted"
SECRET_FIELDS = (
    "secret",
    "dob",
    "code",
    "answer",
    "access_token",
    "refresh_token",
    "appSecret",
    "session",
)


class BadCredentials(Exception):
    """A value that does not decrypt with this key."""


def gen_keys(path: str) -> tuple[str, str]:
    """Write ``<path>.enc`` and ``<path>.dec`` (mode 0400); their paths."""
    private = X25519PrivateKey.generate()
    enc_path, dec_path = path + ".enc", path + ".dec"
    for target in (enc_path, dec_path):
        if os.path.exists(target):
            raise FileExistsError(target)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for target, data in ((enc_path, public_pem), (dec_path, private_pem)):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return enc_path, dec_path


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"cozyd credentials" + ephemeral + recipient,
    ).derive(shared)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Vault:
    """Encrypts with the public key, decrypts with the private one (either
    may be absent: a node may only encrypt)."""

    def __init__(
        self,
        public: X25519PublicKey | None = None,
        private: X25519PrivateKey | None = None,
    ):
        if public is None and private is not None:
            public = private.public_key()
        self._public = public
        self._private = private

    @classmethod
    def from_files(cls, enc_path: str, dec_path: str) -> Vault:
        public = private = None
        if enc_path and os.path.exists(enc_path):
            with open(enc_path, "rb") as f:
                key = serialization.load_pem_public_key(f.read())
            if not isinstance(key, X25519PublicKey):
                raise ValueError(f"{enc_path} is not an X25519 public key")
            public = key
        if dec_path and os.path.exists(dec_path):
            with open(dec_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
            if not isinstance(key, X25519PrivateKey):
                raise ValueError(f"{dec_path} is not an X25519 private key")
            private = key
        return cls(public, private)

    @classmethod
    def from_config(cls, config: Any) -> Vault:
        return cls.from_files(
            config.get("konnectors", "credentials_encryptor_key"),
            config.get("konnectors", "credentials_decryptor_key"),
        )

    @property
    def can_encrypt(self) -> bool:
        return self._public is not None

    @property
    def can_decrypt(self) -> bool:
        return self._private is not None

    # -- values -------------------------------------------------------------------
    def seal(self, plain: bytes) -> str:
        if self._public is None:
            raise BadCredentials("no encryptor key")
        ephemeral = X25519PrivateKey.generate()
        ephemeral_raw = _raw(ephemeral.public_key())
        key = _derive(ephemeral.exchange(self._public), ephemeral_raw, _raw(self._public))
        nonce = os.urandom(12)
        sealed = ChaCha20Poly1305(key).encrypt(nonce, plain, HEADER)
        return base64.b64encode(HEADER + ephemeral_raw + nonce + sealed).decode("ascii")

    def open(self, text: str) -> bytes:
        if self._private is None:
            raise BadCredentials("no decryptor key")
        try:
            data = base64.b64decode(text, validate=True)
        except (ValueError, TypeError):
            raise BadCredentials("not base64") from None
        if not data.startswith(HEADER) or len(data) < len(HEADER) + 32 + 12 + 16:
            raise BadCredentials("not sealed by cozyd")
        body = data[len(HEADER) :]
        ephemeral_raw, nonce, sealed = body[:32], body[32:44], body[44:]
        ephemeral = X25519PublicKey.from_public_bytes(ephemeral_raw)
        public_raw = _raw(self._private.public_key())
        key = _derive(self._private.exchange(ephemeral), ephemeral_raw, public_raw)
        try:
            return ChaCha20Poly1305(key).decrypt(nonce, sealed, HEADER)
        except InvalidTag:
            raise BadCredentials("wrong key or altered value") from None

    def seal_credentials(self, login: str, password: str) -> str:
        login_bytes, password_bytes = login.encode(), password.encode()
        return self.seal(struct.pack(">I", len(login_bytes)) + login_bytes + password_bytes)

    def open_credentials(self, text: str) -> tuple[str, str]:
        plain = self.open(text)
        if len(plain) < 4:
            raise BadCredentials("too short")
        (length,) = struct.unpack(">I", plain[:4])
        rest = plain[4:]
        if len(rest) < length:
            raise BadCredentials("bad length")
        return rest[:length].decode(), rest[length:].decode()

    # -- account documents -----------------------------------------------------------
    def encrypt_account(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document as stored: its secrets encrypted (a copy; the
        document itself when there is no key or nothing to encrypt)."""
        if self._public is None or not _has_auth(doc):
            return doc
        doc = copy.deepcopy(doc)
        self._encrypt_map(doc)
        return doc

    def decrypt_account(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document as a konnector reads it: its secrets in clear."""
        if self._private is None or not _has_auth(doc):
            return doc
        doc = copy.deepcopy(doc)
        self._decrypt_map(doc)
        return doc

    def _encrypt_map(self, m: dict[str, Any]) -> None:
        auth = m.get("auth")
        if isinstance(auth, dict):
            login = auth.get("login") if isinstance(auth.get("login"), str) else ""
            out: dict[str, Any] = {}
            for key, value in auth.items():
                if key == "password":
                    out["credentials_encrypted"] = self.seal_credentials(
                        login, value if isinstance(value, str) else ""
                    )
                elif key in SECRET_FIELDS:
                    out[key + ENCRYPTED_SUFFIX] = self.seal(json.dumps(value).encode())
                elif key not in out:
                    out[key] = value
            m["auth"] = out
        if isinstance(m.get("data"), dict):
            self._encrypt_map(m["data"])

    def _decrypt_map(self, m: dict[str, Any]) -> None:
        auth = m.get("auth")
        if isinstance(auth, dict):
            out: dict[str, Any] = {}
            for key, value in auth.items():
                if not key.endswith(ENCRYPTED_SUFFIX) or not isinstance(value, str):
                    out.setdefault(key, value)
                    continue
                name = key[: -len(ENCRYPTED_SUFFIX)]
                try:
                    if name == "credentials":
                        out["login"], out["password"] = self.open_credentials(value)
                    else:
                        out[name] = json.loads(self.open(value))
                except (BadCredentials, ValueError):
                    out[key] = value  # not ours: left as it is
            m["auth"] = out
        if isinstance(m.get("data"), dict):
            self._decrypt_map(m["data"])


def _has_auth(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    return isinstance(doc.get("auth"), dict) or (
        isinstance(doc.get("data"), dict) and isinstance(doc["data"].get("auth"), dict)
    )


def reads_in_clear(permission_type: str, subject: str, doc: dict[str, Any]) -> bool:
    """Whether a reader sees ``doc``'s credentials decrypted: only the
    konnector the account is for."""
    return (
        permission_type == "konnector"
        and bool(subject)
        and doc.get("account_type") == subject
    )
