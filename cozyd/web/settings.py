"""``/settings``: passphrase, instance settings, capabilities, sessions.

(``/settings/clients`` belongs to the OAuth service.)

- ``GET /settings/passphrase``: how clients hash the passphrase.
- ``POST /settings/passphrase``: the end of the onboarding — the register
  token becomes a passphrase, a session opens (JSON: 200 ``{"redirect"}``;
  a browser form: 303 to the home, and its CSRF token is checked).
- ``PUT /settings/passphrase``: a change (current + new), or ``force`` from
  the CLI; the instance's session secret rotates, so app tokens and other
  sessions stop working.
- ``POST /settings/passphrase/check``, ``GET|PUT /settings/hint``.
- ``GET|PUT /settings/instance``: the ``io.cozy.settings.instance`` document
  with the fields kept on the instance (locale, onboarding…), rev-checked.
- ``GET /settings/capabilities``, ``GET /settings/sessions[/current]``,
  ``GET /settings/onboarded``.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from cozyd.auth.login import PassParameters, Passphrases, check_iterations
from cozyd.auth.sessions import SESSIONS_DOCTYPE, Duration, Session
from cozyd.auth.urls import INSTANCE_SETTINGS_ID, SETTINGS_DOCTYPE, InstanceURLs
from cozyd.documents import DocConflict, Documents
from cozyd.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unprocessable,
)
from cozyd.instance.lifecycle import InstanceManager, ModifyOptions
from cozyd.instance.model import Instance
from cozyd.web import bodies
from cozyd.web.auth import WebSessions, form_value
from cozyd.web.common import JSONAPI, instance_of, json_response, jsonapi_errors
from cozyd.web.guard import Guard, authorize_document, permissions_of
from cozyd.web.pages import Pages
from cozyd.web.params import parse_int
from cozyd.web.routing import Service, route, shield, state_of, token

PASSPHRASE_ID = "io.cozy.settings.passphrase"
CAPABILITIES_ID = "io.cozy.settings.capabilities"

#: Fields of the settings document that only the CLI may change.
_CLI_ONLY = ("auth_mode", "tos", "tos_latest", "uuid", "context", "sponsorships", "oidc_id")
#: Fields a generic update never changes (the email has its own flow).
_GUARDED = ("email", "pending_email")


def read_json(request: IRequest) -> Any:
    """The JSON body (None when empty), within ``[server] max_body_size``."""
    return bodies.read_json(request, empty=None)


def is_json(request: IRequest) -> bool:
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1").lower()
    return "json" in content_type


def _int(value: Any, name: str) -> int:
    if value is None or value == "":
        return 0
    number = (
        value
        if isinstance(value, int) and not isinstance(value, bool)
        else parse_int(value)
        if isinstance(value, str)
        else None
    )
    if number is None or parse_int(str(number)) is None:
        raise BadRequest(f"the {name} parameter must be an integer") from None
    return number


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def jsonapi_doc(
    doctype: str,
    doc_id: str,
    attributes: dict[str, Any],
    *,
    rev: str | None = None,
    self_link: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": doctype,
        "id": doc_id,
        "attributes": attributes,
        "meta": {"rev": rev} if rev else {},
    }
    if self_link:
        data["links"] = {"self": self_link}
    return data


def session_object(session: Session) -> dict[str, Any]:
    return jsonapi_doc(SESSIONS_DOCTYPE, session.id, session.attributes(), rev=session.rev)


DISK_USAGE_ID = "io.cozy.settings.disk-usage"


class SettingsService(Service):
    errors = jsonapi_errors

    def __init__(
        self,
        guard: Guard,
        *,
        documents: Documents,
        instances: InstanceManager,
        pages: Pages,
        sessions: WebSessions,
        passphrases: Passphrases,
        urls: InstanceURLs,
        vfs: Any = None,
    ):
        super().__init__()
        self.vfs = vfs
        self.guard = guard
        self.documents = documents
        self.instances = instances
        self.pages = pages
        self.sessions = sessions
        self.passphrases = passphrases
        self.urls = urls

    # -- passphrase -------------------------------------------------------------
    @route("passphrase", "GET", auth=token(SETTINGS_DOCTYPE))
    async def passphrase_parameters(self, request: IRequest):
        instance = instance_of(request)
        attributes = await self.passphrases.parameters(instance)
        return json_response(
            request,
            {
                "data": jsonapi_doc(
                    SETTINGS_DOCTYPE,
                    PASSPHRASE_ID,
                    attributes,
                    self_link="/settings/passphrase",
                )
            },
            content_type=JSONAPI,
        )

    def _arguments(self, request: IRequest) -> dict[str, Any]:
        """The body as a dict: JSON, or a form (whose CSRF token is checked)."""
        if is_json(request):
            body = read_json(request)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object", code="bad_json")
            return body
        self.pages.check_csrf(request)
        return {
            name: form_value(request, name)
            for name in (
                "register_token",
                "passphrase",
                "hint",
                "key",
                "public_key",
                "private_key",
                "iterations",
                "redirection",
            )
        }

    @route("passphrase", "POST")
    async def register_passphrase(self, request: IRequest):
        instance = instance_of(request)
        accept_html = b"text/html" in (request.getHeader(b"accept") or b"")
        args = self._arguments(request)
        try:
            register_token = bytes.fromhex(_str(args.get("register_token")))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        iterations = _int(args.get("iterations"), "iterations")
        check_iterations(iterations)
        params = PassParameters(
            passphrase=_str(args.get("passphrase")),
            iterations=iterations,
            key=_str(args.get("key")),
            public_key=_str(args.get("public_key")),
            private_key=_str(args.get("private_key")),
            hint=_str(args.get("hint")),
        )

        async def register(onboarding: Instance) -> Instance:
            # The passphrase and the session: both, even if the client hangs up.
            registered = await self.passphrases.register(onboarding, register_token, params)
            state_of(request).instance = registered
            await self.sessions.open(
                request, registered, Duration.LONG, method="registration"
            )
            return registered

        instance = await shield(register(instance))
        redirect = self.urls.onboarded_redirection(instance)
        redirection = _str(args.get("redirection"))
        if redirection:
            redirect = await self.urls.app_redirection(instance, redirection) or redirect
        if accept_html:
            return self.pages.redirect(request, redirect)
        return json_response(request, {"redirect": redirect})

    @route("passphrase", "PUT", auth=token(SETTINGS_DOCTYPE))
    async def update_passphrase(self, request: IRequest):
        instance = instance_of(request)
        session = await self.sessions.current(request)
        args = read_json(request)
        if not isinstance(args, dict):
            raise BadRequest("the body must be a JSON object", code="bad_json")
        iterations = _int(args.get("iterations"), "iterations")
        params = PassParameters(
            passphrase=_str(args.get("new_passphrase")),
            iterations=iterations,
            key=_str(args.get("key")),
            public_key=_str(args.get("publicKey")),
            private_key=_str(args.get("privateKey")),
        )
        force = args.get("force") is True
        if force:
            if permissions_of(request).type != "cli" and instance.password_defined:
                raise BadRequest(
                    "Bitwarden extension has already been installed on this "
                    "Cozy, cannot force update the passphrase."
                )
        else:
            check_iterations(iterations)

        async def change(instance: Instance, session: Session | None) -> None:
            # All the steps, even if the client hangs up half-way.
            if force:
                instance = await self.passphrases.force_update(instance, params)
            else:
                instance = await self.passphrases.update(
                    instance, _str(args.get("current_passphrase")), params
                )
            state_of(request).instance = instance
            # The session secret changed: every other session ends; this one
            # goes on with a cookie signed with the new secret.
            if session is not None:
                self.sessions.set_cookie(request, instance, session)
            elif not force:
                session = await self.sessions.store.create(instance, Duration.LONG)
                self.sessions.set_cookie(request, instance, session)
            await self.sessions.store.delete_others(
                instance, session.id if session else None
            )

        await shield(change(instance, session))
        request.setResponseCode(204)
        return b""

    @route("passphrase/check", "POST", auth=token(SETTINGS_DOCTYPE, verb="PUT"))
    async def check_passphrase(self, request: IRequest):
        args = read_json(request)
        passphrase = _str(args.get("passphrase")) if isinstance(args, dict) else ""
        if not await self.passphrases.check(instance_of(request), passphrase):
            raise Forbidden("Invalid passphrase")
        request.setResponseCode(204)
        return b""

    @route("hint", "GET", auth=token(SETTINGS_DOCTYPE))
    async def get_hint(self, request: IRequest):
        settings = await self.passphrases.bitwarden_settings(instance_of(request))
        if not settings.get("passphrase_hint"):
            raise NotFound("No hint")
        request.setResponseCode(204)
        return b""

    @route("hint", "PUT", auth=token(SETTINGS_DOCTYPE))
    async def update_hint(self, request: IRequest):
        instance = instance_of(request)
        args = read_json(request)
        hint = _str(args.get("hint")) if isinstance(args, dict) else ""
        if await self.passphrases.hint_is_passphrase(instance, hint):
            raise Unprocessable(
                "The hint cannot be the same as the password", source={"parameter": "hint"}
            )
        await self.passphrases.set_hint(instance, hint)
        request.setResponseCode(204)
        return b""

    # -- instance -------------------------------------------------------------------
    def _with_instance_fields(self, doc: dict[str, Any], instance: Instance) -> None:
        doc["locale"] = instance.locale
        doc["onboarding_finished"] = instance.onboarding_finished
        doc["password_defined"] = instance.password_defined
        doc["auto_update"] = not instance.extra.get("no_auto_update", False)
        doc["auth_mode"] = (
            "two_factor_mail" if instance.extra.get("auth_mode") == 1 else "basic"
        )
        doc["tos"] = instance.tos
        doc["tos_latest"] = instance.tos_latest
        doc["uuid"] = instance.uuid
        doc["oidc_id"] = instance.extra.get("oidc_id", "")
        doc["org_domain"] = instance.extra.get("org_domain", "")
        doc["org_id"] = instance.extra.get("org_id", "")
        doc["context"] = instance.context

    @route("instance", "GET", auth=token(SETTINGS_DOCTYPE, collection=False))
    async def get_instance(self, request: IRequest):
        instance = instance_of(request)
        doc = dict(await self.urls.settings_document(instance))
        # A read permission on the settings document (or its doctype).
        authorize_document(
            request,
            SETTINGS_DOCTYPE,
            INSTANCE_SETTINGS_ID,
            {"_id": INSTANCE_SETTINGS_ID, **doc},
            verb="GET",
        )
        doc.pop("_id", None)
        rev = doc.pop("_rev", None)
        self._with_instance_fields(doc, instance)
        value = doc.get("default_redirection")
        if not isinstance(value, str) or value.startswith("http"):
            doc["default_redirection"] = "home/"
        return json_response(
            request,
            {
                "data": jsonapi_doc(
                    SETTINGS_DOCTYPE,
                    INSTANCE_SETTINGS_ID,
                    doc,
                    rev=rev,
                    self_link="/settings/instance",
                )
            },
            content_type=JSONAPI,
        )

    @route("instance", "PUT", auth=token(SETTINGS_DOCTYPE, collection=False))
    async def update_instance(self, request: IRequest):
        instance = instance_of(request)
        body = read_json(request)
        data = body.get("data") if isinstance(body, dict) else None
        attributes = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(attributes, dict):
            raise BadRequest(
                "the body is not a JSON:API document with attributes", code="bad_json"
            )
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        rev = meta.get("rev") if isinstance(meta.get("rev"), str) else None
        doc = dict(attributes)
        doc.pop("_id", None)
        doc.pop("_rev", None)
        authorize_document(
            request,
            SETTINGS_DOCTYPE,
            INSTANCE_SETTINGS_ID,
            {"_id": INSTANCE_SETTINGS_ID, **doc},
            verb="PUT",
        )
        current = await self.urls.settings_document(instance)
        if permissions_of(request).type != "cli":
            for key in _CLI_ONLY:
                doc.pop(key, None)
            for key in _GUARDED:
                if key in current:
                    doc[key] = current[key]
                else:
                    doc.pop(key, None)
        instance = await self._apply_instance_fields(instance, doc)
        old = {k: v for k, v in current.items() if k not in ("_id", "_rev")}
        if old != doc or not current:
            stored = {"_id": INSTANCE_SETTINGS_ID, **doc}
            if rev:
                stored["_rev"] = rev
            try:
                rev = (await self.documents.put(instance, SETTINGS_DOCTYPE, stored))["rev"]
            except DocConflict:
                raise Conflict("Document update conflict") from None
        self._with_instance_fields(doc, instance)
        return json_response(
            request,
            {
                "data": jsonapi_doc(
                    SETTINGS_DOCTYPE,
                    INSTANCE_SETTINGS_ID,
                    doc,
                    rev=rev,
                    self_link="/settings/instance",
                )
            },
            content_type=JSONAPI,
        )

    async def _apply_instance_fields(
        self, instance: Instance, doc: dict[str, Any]
    ) -> Instance:
        """Settings kept on the instance move there (as cozy-stack does)."""
        changes: dict[str, Any] = {}
        locale = doc.pop("locale", None)
        if isinstance(locale, str) and locale and locale != instance.locale:
            changes["locale"] = locale
        finished = doc.pop("onboarding_finished", None)
        if isinstance(finished, bool) and finished != instance.onboarding_finished:
            changes["onboarding_finished"] = finished
        for key, field in (
            ("context", "context"),
            ("uuid", "uuid"),
            ("tos", "tos"),
            ("tos_latest", "tos_latest"),
        ):
            value = doc.pop(key, None)
            if isinstance(value, str) and value and value != getattr(instance, field):
                changes[field] = value
        # Shown by GET but not settings: never stored in the document.
        for key in (
            "sponsorships",
            "feature_sets",
            "oidc_id",
            "auto_update",
            "auth_mode",
            "password_defined",
            "org_domain",
            "org_id",
            "legal_notice_url",
            "oidc_logout_url",
        ):
            doc.pop(key, None)
        if not changes:
            return instance
        return await self.instances.modify(instance.domain, ModifyOptions(**changes))

    @route("disk-usage", "GET", auth=token(collection=False))
    async def disk_usage(self, request: IRequest):
        """Bytes used by files (the trash included), by old versions, and
        the quota when there is one (cozy-stack's strings)."""
        authorize_document(request, SETTINGS_DOCTYPE, DISK_USAGE_ID, verb="GET")
        instance = instance_of(request)
        usage = await self.vfs.usage(instance)
        attributes: dict[str, Any] = {
            "used": str(usage.used),
            "files": str(usage.files),
            "versions": str(usage.versions),
        }
        if instance.disk_quota:
            attributes["quota"] = str(instance.disk_quota)
        include = request.args.get(b"include") or []
        if b"trash" in b",".join(include).split(b","):
            attributes["trash"] = str(usage.trash)
        return json_response(
            request,
            {
                "data": {
                    "type": SETTINGS_DOCTYPE,
                    "id": DISK_USAGE_ID,
                    "attributes": attributes,
                    "meta": {},
                    "links": {"self": "/settings/disk-usage"},
                }
            },
            content_type=JSONAPI,
        )

    @route("capabilities", "GET", auth=token())
    async def capabilities(self, request: IRequest):
        instance = instance_of(request)
        magic_link = bool(instance.extra.get("magic_link"))
        attributes = {
            "file_versioning": True,
            "flat_subdomains": False,
            "can_auth_with_password": not magic_link,
            "can_auth_with_magic_links": magic_link,
            "can_auth_with_oidc": bool(instance.extra.get("franceconnect_id")),
        }
        return json_response(
            request,
            {
                "data": jsonapi_doc(
                    SETTINGS_DOCTYPE,
                    CAPABILITIES_ID,
                    attributes,
                    self_link="/settings/capabilities",
                )
            },
            content_type=JSONAPI,
        )

    # -- sessions ---------------------------------------------------------------------
    @route("sessions", "GET", auth=token(SESSIONS_DOCTYPE))
    async def list_sessions(self, request: IRequest):
        sessions = await self.sessions.store.all(instance_of(request))
        return json_response(
            request,
            {
                "data": [session_object(s) for s in sessions],
                "meta": {"count": len(sessions)},
            },
            content_type=JSONAPI,
        )

    @route("sessions/current", "GET")
    async def current_session(self, request: IRequest):
        session = await self.sessions.current(request)
        if session is None:
            raise NotFound("no current session")
        return json_response(
            request, {"data": session_object(session)}, content_type=JSONAPI
        )

    @route("onboarded", "GET")
    async def onboarded(self, request: IRequest):
        instance = instance_of(request)
        if not await self.sessions.logged_in(request):
            return self.pages.login_redirect(request, instance)
        if not instance.onboarding_finished:
            instance = await self.instances.modify(
                instance.domain, ModifyOptions(onboarding_finished=True)
            )
        return self.pages.redirect(request, self.urls.onboarded_redirection(instance))
