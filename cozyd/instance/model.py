"""The Instance: one user's cozy, stored as a document of ``global/instances``.

The document id is derived from the domain (the same hash as the database
prefix), so a domain can be claimed only once, atomically, on both storage
engines: a second creation of the same domain conflicts on the id.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import attrs

from cozyd.storage.names import domain_hash, instance_prefix

#: Bump when the instance indexes change (cozy-stack's is 38 at the snapshot).
INDEXES_VERSION = 1

#: Blocking reasons cozy-stack knows; any other text is accepted too.
KNOWN_BLOCKING_REASONS = (
    "LOGIN_FAILED",
    "PAYMENT_FAILED",
    "UNKNOWN",
    "IMPORTING",
    "MOVING",
)

#: Fields never shown by the admin API (cozy-stack blanks them too).
SECRET_FIELDS = ("session_secret", "oauth_secret", "cli_secret", "passphrase_hash")

#: Bookkeeping of the creation, not shown either.
INTERNAL_FIELDS = ("state", "creation_node", "creation_started")

#: States of the creation, stored in the document (not shown).
CREATING = "creating"
READY = "ready"


def instance_id(domain: str) -> str:
    return domain_hash(domain)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if not text else base64.b64decode(text)


@attrs.define
class Instance:
    domain: str
    prefix: str
    locale: str = "en"
    context: str = ""
    uuid: str = ""
    domain_aliases: list[str] = attrs.field(factory=list)
    tos: str = ""
    tos_latest: str = ""
    disk_quota: int = 0
    blocked: bool = False
    blocking_reason: str = ""
    deleting: bool = False
    onboarding_finished: bool = False
    password_defined: bool = False
    indexes_version: int = INDEXES_VERSION
    register_token: bytes | None = None
    passphrase_hash: bytes | None = None
    session_secret: bytes = b""
    oauth_secret: bytes = b""
    cli_secret: bytes = b""
    state: str = READY
    #: Which node claimed the domain and when (epoch seconds), while creating.
    creation_node: str = ""
    creation_started: float = 0.0
    #: Fields of the stored document this version does not know: kept as is.
    extra: dict[str, Any] = attrs.field(factory=dict)
    rev: str | None = None

    @property
    def id(self) -> str:
        return instance_id(self.domain)

    @classmethod
    def new(cls, domain: str, **fields: Any) -> Instance:
        return cls(
            domain=domain,
            prefix=instance_prefix(domain),
            register_token=secrets.token_bytes(16),
            session_secret=secrets.token_bytes(64),
            oauth_secret=secrets.token_bytes(128),
            cli_secret=secrets.token_bytes(128),
            **fields,
        )

    # -- storage ------------------------------------------------------------
    _BYTES = (
        "register_token",
        "passphrase_hash",
        "session_secret",
        "oauth_secret",
        "cli_secret",
    )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.extra)
        for field in attrs.fields(Instance):
            if field.name in ("extra", "rev"):
                continue
            value = getattr(self, field.name)
            if field.name in self._BYTES:
                value = _b64(value)
                if value is None:
                    continue
            elif field.name == "disk_quota":
                value = str(value) if value else ""
            doc[field.name] = value
        doc["_id"] = self.id
        if self.rev:
            doc["_rev"] = self.rev
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Instance:
        known = {f.name for f in attrs.fields(Instance)} - {"extra", "rev"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in doc.items():
            if key in ("_id", "_rev"):
                continue
            if key in known:
                if key in cls._BYTES:
                    value = _unb64(value) or (
                        None if key in ("register_token", "passphrase_hash") else b""
                    )
                elif key == "disk_quota":
                    value = int(value) if value else 0
                kwargs[key] = value
            else:
                extra[key] = value
        return cls(**kwargs, extra=extra, rev=doc.get("_rev"))

    # -- presentation -------------------------------------------------------
    def attributes(self) -> dict[str, Any]:
        """What the admin API shows: everything but the secrets."""
        doc = self.to_doc()
        for key in ("_id", "_rev", *INTERNAL_FIELDS, *SECRET_FIELDS):
            doc.pop(key, None)
        return doc

    def jsonapi(self) -> dict[str, Any]:
        return {
            "type": "instances",
            "id": self.id,
            "attributes": self.attributes(),
            "meta": {"rev": self.rev},
            "links": {"self": f"/instances/{self.id}"},
        }

    @property
    def all_domains(self) -> list[str]:
        return [self.domain, *self.domain_aliases]
