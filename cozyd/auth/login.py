"""The owner's passphrase: onboarding, checking, changing — and the count of
failed logins that blocks an instance under attack.

Clients send a hash of the passphrase, never the passphrase (see
``cozyd.passphrase``); the instance stores a slow scrypt hash of that.
The hashing parameters (PBKDF2 iterations, plus the Bitwarden keys the
clients derive from the same master key) live in the
``io.cozy.settings.bitwarden`` document, as in cozy-stack.

Setting a passphrase rotates the instance's ``session_secret``: every
session cookie and every app and konnector token made before stops working.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from twisted.logger import Logger

from cozyd import passphrase as hashing
from cozyd.adminpass import InvalidHashFile
from cozyd.auth.limits import RateLimiter
from cozyd.documents import DocNotFound, Documents
from cozyd.errors import BadRequest, CozyError, Unprocessable
from cozyd.instance.model import Instance

SETTINGS_DOCTYPE = "io.cozy.settings"
BITWARDEN_SETTINGS_ID = "io.cozy.settings.bitwarden"
PBKDF2_SHA256 = 0
LOGIN_FAILED = "LOGIN_FAILED"
#: cozy-stack's default: 1000 failed logins an hour block the instance.
DEFAULT_LOGIN_FAILURES_PER_HOUR = 1000

T = TypeVar("T")
log = Logger()


class InvalidPassphrase(BadRequest):
    code = "invalid_passphrase"

    def __init__(self, detail: str = "Invalid passphrase"):
        super().__init__(detail)


@attrs.frozen
class PassParameters:
    """A new passphrase as a client sends it.

    ``passphrase`` is the client-side hash; with ``iterations`` 0 (or, on
    registration, without ``key``) it is taken as the clear passphrase and
    hashed here the way a client would, as cozy-stack does for old clients
    and its CLI.
    """

    passphrase: str
    iterations: int = 0
    key: str = ""
    public_key: str = ""
    private_key: str = ""
    hint: str = ""


def check_iterations(iterations: int, *, allow_zero: bool = True) -> None:
    if iterations == 0 and allow_zero:
        return
    if iterations < hashing.MIN_KDF_ITERATIONS:
        raise Unprocessable(
            "The KdfIterations number is too low", source={"parameter": "KdfIterations"}
        )
    if iterations > hashing.MAX_KDF_ITERATIONS:
        raise Unprocessable(
            "The KdfIterations number is too high", source={"parameter": "KdfIterations"}
        )


class Passphrases:
    def __init__(
        self,
        documents: Documents,
        *,
        run_blocking: Callable[[Callable[[], T]], Awaitable[T]],
        kdf_iterations: int = hashing.DEFAULT_KDF_ITERATIONS,
        update_instance: Callable[..., Awaitable[Instance]],
    ):
        self._documents = documents
        self._run_blocking = run_blocking
        self._kdf_iterations = kdf_iterations
        # InstanceManager.update: read-modify-write with retries.
        self._update_instance = update_instance

    @property
    def default_iterations(self) -> int:
        return self._kdf_iterations

    # -- the hashing parameters -------------------------------------------------
    async def bitwarden_settings(self, instance: Instance) -> dict[str, Any]:
        try:
            return await self._documents.get(
                instance, SETTINGS_DOCTYPE, BITWARDEN_SETTINGS_ID
            )
        except DocNotFound:
            return {"_id": BITWARDEN_SETTINGS_ID}

    async def parameters(self, instance: Instance) -> dict[str, Any]:
        """What a client needs to hash the passphrase: salt, kdf, iterations."""
        settings = await self.bitwarden_settings(instance)
        return {
            "salt": hashing.salt_for(instance.domain).decode("utf-8"),
            "kdf": settings.get("passphrase_kdf") or PBKDF2_SHA256,
            "iterations": settings.get("passphrase_kdf_iterations") or 0,
        }

    async def iterations(self, instance: Instance) -> int:
        return (await self.parameters(instance))["iterations"]

    # -- checking -----------------------------------------------------------------
    async def check(self, instance: Instance, hashed: str) -> bool:
        """Whether ``hashed`` (a client-side hash) is the owner's passphrase.

        An instance whose passphrase was stored before client-side hashing
        (iterations 0) receives the clear passphrase: when it matches, it is
        migrated to a hashed one at once.
        """
        stored = instance.passphrase_hash
        if not hashed or not stored:
            return False
        if not await self._matches(hashed, stored):
            return False
        if await self.iterations(instance) == 0:
            await self._migrate(instance, hashed)
        return True

    async def _matches(self, hashed: str, stored: bytes) -> bool:
        def verify() -> bool:
            try:
                return hashing.check_server_hash(hashed, stored)
            except (InvalidHashFile, UnicodeDecodeError):
                return False

        return await self._run_blocking(verify)

    async def _migrate(self, instance: Instance, clear: str) -> None:
        try:
            await self._set(instance, PassParameters(passphrase=clear), rotate=False)
        except CozyError:
            log.failure(
                "could not migrate the passphrase of {domain}", domain=instance.domain
            )

    # -- setting --------------------------------------------------------------------
    async def register(
        self, instance: Instance, register_token: bytes, params: PassParameters
    ) -> Instance:
        """Onboarding: the register token becomes a passphrase (once)."""
        if not params.passphrase:
            raise BadRequest("Missing new passphrase")
        # A cheap check first, so that bad tokens cost no hashing; the
        # decisive one is made on the stored instance, atomically.
        self._check_register_token(instance, register_token)
        emulate = params.iterations == 0 or not params.key

        def consume(current: Instance) -> None:
            self._check_register_token(current, register_token)
            current.register_token = None
            current.onboarding_finished = True

        return await self._set(instance, params, emulate=emulate, check=consume)

    @staticmethod
    def _check_register_token(instance: Instance, register_token: bytes) -> None:
        if not instance.register_token:
            raise BadRequest("Empty register token", code="invalid_token")
        if not hmac.compare_digest(instance.register_token, register_token):
            raise BadRequest("Invalid register token", code="invalid_token")

    async def update(
        self, instance: Instance, current_passphrase: str, params: PassParameters
    ) -> Instance:
        """A change by the owner, who proves they know the current one."""
        if not params.passphrase:
            raise BadRequest("Missing new passphrase")
        if (
            not current_passphrase
            or not instance.passphrase_hash
            or not await self._matches(current_passphrase, instance.passphrase_hash)
        ):
            raise InvalidPassphrase()
        return await self._set(instance, params)

    async def force_update(self, instance: Instance, params: PassParameters) -> Instance:
        """A change without the current passphrase (CLI)."""
        if not params.passphrase:
            raise BadRequest("Missing new passphrase")
        return await self._set(instance, params, emulate=params.iterations == 0)

    async def _set(
        self,
        instance: Instance,
        params: PassParameters,
        *,
        emulate: bool = False,
        rotate: bool = True,
        check: Callable[[Instance], None] | None = None,
    ) -> Instance:
        hashed, iterations = params.passphrase, params.iterations
        if emulate:
            iterations = self._kdf_iterations
            domain = instance.domain
            clear = params.passphrase
            hashed = await self._run_blocking(
                lambda: hashing.client_side_hash(clear, domain, iterations)
            )
        server_hash = await self._run_blocking(lambda: hashing.server_hash(hashed))

        def change(current: Instance) -> None:
            if check is not None:
                check(current)
            current.passphrase_hash = server_hash
            current.password_defined = True
            if rotate:
                current.session_secret = secrets.token_bytes(64)

        updated = await self._update_instance(instance.domain, change)
        await self._save_settings(updated, params, iterations)
        log.info("passphrase of {domain} set", domain=instance.domain)
        return updated

    async def _save_settings(
        self, instance: Instance, params: PassParameters, iterations: int
    ) -> None:
        def change(doc: dict[str, Any]) -> None:
            doc.update(
                {
                    "passphrase_kdf": PBKDF2_SHA256,
                    "passphrase_kdf_iterations": iterations,
                    "security_stamp": str(uuid.uuid4()),
                }
            )
            if params.key:
                doc["key"] = params.key
            if params.public_key and params.private_key:
                doc["public_key"] = params.public_key
                doc["private_key"] = params.private_key
            if params.hint:
                doc["passphrase_hint"] = params.hint

        await self._documents.update(
            instance, SETTINGS_DOCTYPE, BITWARDEN_SETTINGS_ID, change
        )

    async def set_hint(self, instance: Instance, hint: str) -> None:
        def change(doc: dict[str, Any]) -> None:
            if hint:
                doc["passphrase_hint"] = hint
            else:
                doc.pop("passphrase_hint", None)

        await self._documents.update(
            instance, SETTINGS_DOCTYPE, BITWARDEN_SETTINGS_ID, change
        )

    async def hint_is_passphrase(self, instance: Instance, hint: str) -> bool:
        """A hint must not give the passphrase away."""
        iterations = await self.iterations(instance)
        if not hint or not instance.passphrase_hash:
            return False
        domain = instance.domain
        hashed = (
            hint
            if iterations == 0
            else await self._run_blocking(
                lambda: hashing.client_side_hash(hint, domain, iterations)
            )
        )
        return await self._matches(hashed, instance.passphrase_hash)


class LoginFailures:
    """Counts failed logins per instance; past the limit within an hour,
    the instance is blocked (``LOGIN_FAILED``) until an operator unblocks
    it (``cozyctl instances modify --blocked=false``)."""

    PERIOD = 3600.0

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        block: Callable[[str], Awaitable[Any]],
        per_hour: int = DEFAULT_LOGIN_FAILURES_PER_HOUR,
    ):
        self._limiter = limiter
        self._block = block
        self._limit = per_hour

    @staticmethod
    def _key(instance: Instance) -> str:
        return f"auth:{instance.domain}"

    async def failed(self, instance: Instance) -> bool:
        """Count one failure; True when it blocked the instance."""
        verdict = self._limiter.hit(
            self._key(instance), limit=self._limit, period=self.PERIOD
        )
        if not verdict.limited:
            return False
        log.warn(
            "instance {domain} blocked: too many failed logins", domain=instance.domain
        )
        try:
            await self._block(instance.domain)
        except CozyError:
            log.failure("could not block instance {domain}", domain=instance.domain)
            return False
        return True

    def reset(self, instance: Instance) -> None:
        self._limiter.reset(self._key(instance))
