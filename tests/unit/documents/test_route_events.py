"""Every route that writes, and the events it publishes (docs/events.md).

Each case drives one route through HTTP on the in-memory stack, with a
subscriber to every doctype of the instance and of the global databases;
the events seen during the request must be exactly the ones of the table
(an event too many fails as surely as one missing). And the table must
name every route that can write (POST, PUT, PATCH, DELETE) of every
service, so a new route cannot slip through untested.
"""

from __future__ import annotations

import pathlib
import re
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
import pytest

from cozyd.auth import tokens
from cozyd.instance.model import Instance
from cozyd.realtime.hub import CREATED, DELETED, UPDATED
from cozyd.storage.names import INSTANCES_DB, db_name
from cozyd.testing import TEST_KDF_ITERATIONS, sync
from tests.support.auth import (
    ADMIN,
    BASE,
    DOMAIN,
    PASSPHRASE,
    Browser,
    admin_token,
    basic_auth,
    client_hash,
    create_instance,
    login,
    onboard,
)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EVENTS = "io.cozy.events"
REDIRECT = "https://client.example.org/oauth/callback"
INST, G = "instance", "global"  # whose hub key an event came under

#: Routes that accept a write method but are not routes of their own.
#: Routes that write nothing although their method could (none today: the
#: admin API's answer to unknown paths is its service's ``no_route``).
NOT_ROUTES: dict[tuple[str, str, str], str] = {}


# -- the world a case runs in ---------------------------------------------------------
class World:
    """A fresh stack, browsers, and the events published while recording."""

    def __init__(self, stack, clock):
        self.stack = stack
        self.clock = clock
        self.admin = Browser(stack.admin)
        self.owner = Browser(stack.public)
        self.events: list[tuple[str, str, str]] = []
        self.docs: list[dict[str, Any]] = []
        self._recording = False
        stack.hub.subscribe(Instance.new(DOMAIN), None, self._recorder(INST))
        stack.hub.subscribe("global", None, self._recorder(G))

    def _recorder(self, owner: str):
        def record(event):
            if self._recording:
                self.events.append((owner, event["doctype"], event["verb"]))
                self.docs.append(event["doc"])

        return record

    def start(self) -> None:
        """From here on, events count."""
        self.events.clear()
        self._recording = True

    # -- set-ups -------------------------------------------------------------------------
    def onboarded(self) -> None:
        """alice exists and its owner's browser holds a session."""
        assert onboard(self.owner, create_instance(self.admin)).status == 200

    def instance(self) -> Instance:
        return Instance.from_doc(
            sync(self.stack.store.get_doc(INSTANCES_DB, Instance.new(DOMAIN).id))
        )

    def cli(self, scope: str = f"{EVENTS} io.cozy.settings io.cozy.files") -> str:
        return admin_token(self.admin, Audience="cli", Scope=scope)

    def app_token(self, slug: str = "home") -> str:
        """A webapp token bound to the owner's session."""
        instance = self.instance()
        sync(
            self.stack.store.put_doc(
                db_name(instance.prefix, "io.cozy.permissions"),
                {
                    "_id": f"perm-{slug}",
                    "type": "app",
                    "source_id": f"io.cozy.apps/{slug}",
                    "permissions": {"settings": {"type": "io.cozy.settings"}},
                },
            )
        )
        session_id = self.owner.cookies["cozysessid"].split(".")[0]
        return tokens.issue(
            instance,
            tokens.APP,
            slug,
            issued_at=self.clock.seconds(),
            session_id=session_id,
        )

    def data(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str,
        headers: dict[str, str] | None = None,
        status: int = 200,
    ):
        all_headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            **(headers or {}),
        }
        reply = self.owner.request(
            method, f"{BASE}/data{path}", body=body, headers=all_headers, cookies=False
        )
        assert reply.status == status, (method, path, reply.status, reply.body)
        return reply.json() if reply.body else None

    def client(self, **fields: Any) -> dict[str, Any]:
        """A registered OAuth client (pending until a token is issued)."""
        reply = self.owner.request(
            "POST",
            BASE + "/auth/register",
            body={
                "redirect_uris": [REDIRECT],
                "client_name": "Client",
                "software_id": "github.com/example/client",
                **fields,
            },
            headers={"Accept": "application/json"},
            cookies=False,
        )
        assert reply.status == 201, reply.body
        return reply.json()

    def access_code(self, client: dict[str, Any]) -> str:
        """What the consent page gives (an access code), as a browser gets it."""
        query = {
            "client_id": client["client_id"],
            "redirect_uri": REDIRECT,
            "state": "state-of-the-art",
            "response_type": "code",
            "scope": EVENTS,
        }
        page = self.owner.request("GET", BASE + "/auth/authorize?" + urlencode(query))
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        reply = self.owner.request(
            "POST", BASE + "/auth/authorize", form={**query, "csrf_token": csrf}
        )
        assert reply.status == 302, reply.body
        return parse_qs(urlsplit(reply.header("location")).query)["code"][0]


def admin_request(w: World, method: str, path: str, status: int, **params: str):
    reply = w.admin.request(
        method, f"{ADMIN}{path}?{urlencode(params)}", headers=basic_auth()
    )
    assert reply.status == status, reply.body
    return reply


# -- the cases ---------------------------------------------------------------------------
@attrs.frozen
class Case:
    name: str
    #: (service, method, route) as ``registered_routes`` lists it.
    route: tuple[str, str, str]
    run: Callable[[World], None]
    #: (owner, doctype, verb): each event once, in any order.
    events: tuple[tuple[str, str, str], ...]


CASES: list[Case] = []


def case(
    service: str, method: str, route: str, *events: tuple[str, str, str], name: str = ""
):
    def register(run):
        CASES.append(Case(name or run.__name__, (service, method, route), run, events))
        return run

    return register


# /data ------------------------------------------------------------------------------------
def with_token(w: World) -> str:
    w.onboarded()
    return w.cli()


@case("public", "PUT", "/data/{doctype}")
def data_create_db(w):
    token = with_token(w)
    w.start()
    w.data("PUT", "/io.cozy.events.fresh", token=w.cli("io.cozy.events.fresh"), status=201)
    del token


@case("public", "DELETE", "/data/{doctype}")
def data_delete_db(w):
    token = with_token(w)
    w.data("POST", f"/{EVENTS}/", {"a": 1}, token=token, status=201)
    w.start()
    w.data("DELETE", f"/{EVENTS}", token=token)


@case("public", "POST", "/data/{doctype}", (INST, EVENTS, CREATED))
def data_create_doc(w):
    token = with_token(w)
    w.start()
    created = w.data("POST", f"/{EVENTS}/", {"title": "hello"}, token=token, status=201)
    assert w.docs == [{"_id": created["id"], "_rev": created["rev"], "title": "hello"}]


@case(
    "public",
    "PUT",
    "/data/{doctype}/{docid}",
    (INST, EVENTS, CREATED),
    name="data_put_new_doc",
)
def data_put_new_doc(w):
    token = with_token(w)
    w.start()
    w.data("PUT", f"/{EVENTS}/fixed", {"title": "hello"}, token=token)


@case(
    "public",
    "PUT",
    "/data/{doctype}/{docid}",
    (INST, EVENTS, UPDATED),
    name="data_update_doc",
)
def data_update_doc(w):
    token = with_token(w)
    created = w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
    w.start()
    w.data(
        "PUT",
        f"/{EVENTS}/{created['id']}",
        {"_id": created["id"], "_rev": created["rev"], "n": 2},
        token=token,
    )
    # A conflict publishes nothing.
    w.data(
        "PUT",
        f"/{EVENTS}/{created['id']}",
        {"_id": created["id"], "_rev": created["rev"], "n": 3},
        token=token,
        status=409,
    )


@case(
    "public",
    "PUT",
    "/data/{doctype}/{docid}",
    (INST, EVENTS, DELETED),
    name="data_put_deleted",
)
def data_put_deleted(w):
    token = with_token(w)
    created = w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
    w.start()
    w.data(
        "PUT",
        f"/{EVENTS}/{created['id']}",
        {"_id": created["id"], "_rev": created["rev"], "_deleted": True},
        token=token,
    )


@case("public", "DELETE", "/data/{doctype}/{docid}", (INST, EVENTS, DELETED))
def data_delete_doc(w):
    token = with_token(w)
    created = w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
    w.start()
    w.data("DELETE", f"/{EVENTS}/{created['id']}?rev={created['rev']}", token=token)
    assert w.docs[0]["n"] == 1  # the document deleted, with the tombstone's rev


@case(
    "public",
    "POST",
    "/data/{doctype}/_bulk_docs",
    (INST, EVENTS, CREATED),
    (INST, EVENTS, CREATED),
    (INST, EVENTS, UPDATED),
)
def data_bulk_docs(w):
    token = with_token(w)
    created = w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
    w.start()
    results = w.data(
        "POST",
        f"/{EVENTS}/_bulk_docs",
        {
            "docs": [
                {"a": 1},
                {"_id": "b"},
                {"_id": created["id"], "_rev": created["rev"], "n": 2},
                {"_id": created["id"], "_rev": created["rev"], "n": 3},  # conflict
                {"_id": "_local/checkpoint"},
            ]
        },
        token=token,
        status=201,
    )
    assert "error" in results[3]


@case(
    "public",
    "POST",
    "/data/{doctype}/_bulk_docs",
    (INST, EVENTS, CREATED),
    (INST, EVENTS, UPDATED),
    name="data_bulk_docs_replicated",
)
def data_bulk_docs_replicated(w):
    token = with_token(w)
    one = {
        "_id": "r",
        "_rev": "1-" + "a" * 32,
        "_revisions": {"start": 1, "ids": ["a" * 32]},
    }
    two = {
        "_id": "r",
        "_rev": "2-" + "b" * 32,
        "_revisions": {"start": 2, "ids": ["b" * 32, "a" * 32]},
    }
    w.data(
        "POST", f"/{EVENTS}/_bulk_docs", {"docs": [{"_id": "x"}]}, token=token, status=201
    )
    w.start()
    w.data(
        "POST",
        f"/{EVENTS}/_bulk_docs",
        {"docs": [one, two, one], "new_edits": False},
        token=token,
        status=201,
    )
    # The same revisions again change nothing: no event.
    w.data(
        "POST",
        f"/{EVENTS}/_bulk_docs",
        {"docs": [one, two], "new_edits": False},
        token=token,
        status=201,
    )


@case("public", "POST", "/data/{doctype}/_index")
def data_define_index(w):
    token = with_token(w)
    w.start()
    w.data(
        "POST",
        f"/{EVENTS}/_index",
        {"index": {"fields": ["title"]}, "ddoc": "mine"},
        token=token,
    )


@case("public", "POST", "/data/{doctype}/_design/{ddoc}/copy")
def data_copy_design_doc(w):
    token = with_token(w)
    w.data(
        "POST",
        f"/{EVENTS}/_index",
        {"index": {"fields": ["title"]}, "ddoc": "mine"},
        token=token,
    )
    w.start()
    w.data(
        "POST",
        f"/{EVENTS}/_design/mine/copy",
        token=token,
        headers={"Destination": "_design/copied"},
        status=201,
    )


@case("public", "DELETE", "/data/{doctype}/_design/{ddoc}")
def data_delete_design_doc(w):
    token = with_token(w)
    made = w.data(
        "POST",
        f"/{EVENTS}/_index",
        {"index": {"fields": ["title"]}, "ddoc": "mine"},
        token=token,
    )
    rev = w.data("GET", f"/{EVENTS}/_design/mine", token=token)["_rev"]
    w.start()
    w.data("DELETE", f"/{EVENTS}/_design/mine?rev={rev}", token=token)
    del made


@case("public", "PUT", "/data/{doctype}/_local/{docid}")
def data_put_local(w):
    token = with_token(w)
    w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
    w.start()
    w.data("PUT", f"/{EVENTS}/_local/checkpoint", {"seq": 1}, token=token, status=201)


@case("public", "POST", "/data/{doctype}/_ensure_full_commit")
def data_ensure_full_commit(w):
    token = with_token(w)
    w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
    w.start()
    w.data("POST", f"/{EVENTS}/_ensure_full_commit", token=token, status=201)


def read_only_data_case(route: str, method: str, path: str, body: Any):
    def run(w):
        token = with_token(w)
        w.data("POST", f"/{EVENTS}/", {"n": 1}, token=token, status=201)
        w.data("POST", f"/{EVENTS}/_index", {"index": {"fields": ["n"]}}, token=token)
        w.start()
        w.data(method, f"/{EVENTS}{path}", body, token=token)

    name = "data_reads_" + route.rsplit("/", 1)[1].strip("_")
    case("public", method, route, name=name)(run)


read_only_data_case("/data/{doctype}/_all_docs", "POST", "/_all_docs", {"keys": ["x"]})
read_only_data_case("/data/{doctype}/_find", "POST", "/_find", {"selector": {"n": 1}})
read_only_data_case(
    "/data/{doctype}/_changes", "POST", "/_changes?filter=_doc_ids", {"doc_ids": ["x"]}
)
read_only_data_case(
    "/data/{doctype}/_bulk_get", "POST", "/_bulk_get", {"docs": [{"id": "x"}]}
)
read_only_data_case("/data/{doctype}/_revs_diff", "POST", "/_revs_diff", {"x": ["1-a"]})


# /auth and /settings: the owner ----------------------------------------------------------
@case(
    "public",
    "POST",
    "/settings/passphrase",
    (G, "instances", UPDATED),
    (INST, "io.cozy.settings", CREATED),
    (INST, "io.cozy.sessions", CREATED),
    (INST, "io.cozy.sessions.logins", CREATED),
)
def settings_register_passphrase(w):
    register_token = create_instance(w.admin)
    w.start()
    assert onboard(w.owner, register_token).status == 200


@case(
    "public",
    "PUT",
    "/settings/passphrase",
    (G, "instances", UPDATED),
    (INST, "io.cozy.settings", UPDATED),
    (INST, "io.cozy.sessions", DELETED),
)
def settings_update_passphrase(w):
    w.onboarded()
    other = Browser(w.stack.public)
    assert login(other).status == 303  # a second session, ended by the change
    w.start()
    reply = w.owner.request(
        "PUT",
        BASE + "/settings/passphrase",
        body={
            "current_passphrase": client_hash(),
            "new_passphrase": client_hash("new one!"),
            "iterations": TEST_KDF_ITERATIONS,
            "key": "0.aXY=|a2V5",
        },
        headers={"Authorization": f"Bearer {w.cli('io.cozy.settings')}"},
    )
    assert reply.status == 204, reply.body


@case("public", "POST", "/settings/passphrase/check")
def settings_check_passphrase(w):
    w.onboarded()
    token = w.cli("io.cozy.settings")
    w.start()
    reply = w.owner.request(
        "POST",
        BASE + "/settings/passphrase/check",
        body={"passphrase": client_hash()},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status == 204, reply.body


@case("public", "PUT", "/settings/hint", (INST, "io.cozy.settings", UPDATED))
def settings_update_hint(w):
    w.onboarded()
    token = w.cli("io.cozy.settings")
    w.start()
    for _ in range(2):  # the second sets the same hint: nothing changes
        reply = w.owner.request(
            "PUT",
            BASE + "/settings/hint",
            body={"hint": "a hint"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert reply.status == 204, reply.body


def get_instance(w: World, token: str) -> dict[str, Any]:
    reply = w.owner.request(
        "GET",
        BASE + "/settings/instance",
        cookies=False,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status == 200, reply.body
    return reply.json()["data"]


def put_instance(w: World, token: str, **attributes: Any):
    rev = get_instance(w, token)["meta"]["rev"]
    reply = w.owner.request(
        "PUT",
        BASE + "/settings/instance",
        body={
            "data": {
                "type": "io.cozy.settings",
                "id": "io.cozy.settings.instance",
                "attributes": attributes,
                "meta": {"rev": rev},
            }
        },
        cookies=False,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.api+json"},
    )
    assert reply.status == 200, reply.body


@case("public", "PUT", "/settings/instance", (INST, "io.cozy.settings", UPDATED))
def settings_update_instance(w):
    w.onboarded()
    token = w.cli("io.cozy.settings")
    w.start()
    put_instance(w, token, public_name="Alice")
    put_instance(w, token, public_name="Alice")  # unchanged: not written again


@case(
    "public",
    "PUT",
    "/settings/instance",
    (G, "instances", UPDATED),
    name="settings_update_instance_locale",
)
def settings_update_instance_locale(w):
    w.onboarded()
    token = w.cli("io.cozy.settings")
    current = get_instance(w, token)["attributes"]
    w.start()
    # The same settings, another locale: the instance changes, the document not.
    put_instance(
        w,
        token,
        **{k: v for k, v in current.items() if k in ("email", "public_name", "tz")},
        locale="fr",
    )


@case(
    "public",
    "POST",
    "/auth/login",
    (INST, "io.cozy.sessions", CREATED),
    (INST, "io.cozy.sessions.logins", CREATED),
)
def auth_login(w):
    w.onboarded()
    browser = Browser(w.stack.public)
    w.start()
    assert login(browser).status == 303


@case("public", "DELETE", "/auth/login", (INST, "io.cozy.sessions", DELETED))
def auth_logout_from_an_app(w):
    w.onboarded()
    token = w.app_token()
    w.start()
    reply = w.owner.request(
        "DELETE", BASE + "/auth/login", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status == 204, reply.body


@case(
    "public",
    "DELETE",
    "/auth/login/others",
    (INST, "io.cozy.sessions", DELETED),
    (INST, "io.cozy.sessions", DELETED),
)
def auth_logout_others(w):
    w.onboarded()
    for _ in range(2):
        assert login(Browser(w.stack.public)).status == 303
    token = w.app_token()
    w.start()
    reply = w.owner.request(
        "DELETE", BASE + "/auth/login/others", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status == 204, reply.body


@case("public", "POST", "/auth/logout", (INST, "io.cozy.sessions", DELETED))
def auth_logout(w):
    w.onboarded()
    page = w.owner.request("GET", BASE + "/auth/logout")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    w.start()
    assert (
        w.owner.request("POST", BASE + "/auth/logout", form={"csrf_token": csrf}).status
        == 303
    )


# OAuth ------------------------------------------------------------------------------------
@case("public", "POST", "/auth/register", (INST, "io.cozy.oauth.clients", CREATED))
def oauth_register(w):
    w.onboarded()
    w.start()
    w.client()


def registration(
    w: World, method: str, client: dict[str, Any], body: Any = None, status: int = 200
):
    reply = w.owner.request(
        method,
        f"{BASE}/auth/register/{client['client_id']}",
        body=body,
        cookies=False,
        headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {client['registration_access_token']}",
        },
    )
    assert reply.status == status, reply.body


@case(
    "public", "PUT", "/auth/register/{client_id}", (INST, "io.cozy.oauth.clients", UPDATED)
)
def oauth_update_client(w):
    w.onboarded()
    client = w.client()
    w.start()
    registration(
        w,
        "PUT",
        client,
        {
            "client_id": client["client_id"],
            "redirect_uris": [REDIRECT],
            "client_name": "Renamed",
            "software_id": "github.com/example/client",
        },
    )


@case(
    "public",
    "DELETE",
    "/auth/register/{client_id}",
    (INST, "io.cozy.oauth.clients", DELETED),
)
def oauth_delete_client(w):
    w.onboarded()
    client = w.client()
    w.start()
    registration(w, "DELETE", client, status=204)


@case(
    "public",
    "POST",
    "/auth/authorize",
    (INST, "io.cozy.oauth.access_codes", CREATED),
    (INST, "io.cozy.oauth.clients", UPDATED),
)  # no longer pending
def oauth_authorize(w):
    w.onboarded()
    client = w.client()
    w.start()
    w.access_code(client)


@case(
    "public",
    "POST",
    "/auth/access_token",
    (INST, "io.cozy.oauth.access_codes", DELETED),
    (INST, "io.cozy.oauth.clients", UPDATED),
)
def oauth_access_token(w):
    w.onboarded()
    client = w.client()
    code = w.access_code(client)
    w.start()
    reply = w.owner.request(
        "POST",
        BASE + "/auth/access_token",
        form={
            "grant_type": "authorization_code",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "code": code,
        },
        cookies=False,
    )
    assert reply.status == 200, reply.body


@case(
    "public",
    "DELETE",
    "/settings/clients/{client_id}",
    (INST, "io.cozy.oauth.clients", DELETED),
)
def settings_revoke_client(w):
    w.onboarded()
    client = w.client()
    token = w.cli("io.cozy.oauth.clients")
    w.start()
    reply = w.owner.request(
        "DELETE",
        f"{BASE}/settings/clients/{client['client_id']}",
        headers={"Authorization": f"Bearer {token}"},
        cookies=False,
    )
    assert reply.status == 204, reply.body


# /files ------------------------------------------------------------------------------
FILES_EV = "io.cozy.files"
VERSIONS_EV = "io.cozy.files.versions"


class FilesWorld:
    """An onboarded alice with a files token, and raw HTTP to /files."""

    def __init__(self, w: World):
        from cozyd.testing import MemoryClient

        w.onboarded()
        self.w = w
        self.http = MemoryClient(w.stack.public)
        self.token = w.cli("io.cozy.files")

    def call(self, method, path, *, data=None, body=None, status=200, headers=None):
        import json as _json

        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if body is not None:
            data = _json.dumps(body).encode()
        reply = self.http.request(method, BASE + path, headers=all_headers, data=data)
        assert reply.status == status, (method, path, reply.status, reply.body)
        return reply.json() if reply.body else None

    def mkdir(self, name="d", parent=""):
        return self.call("POST", f"/files/{parent}?Type=directory&Name={name}", status=201)[
            "data"
        ]["id"]

    def upload(self, name="f.txt", parent="io.cozy.files.root-dir", content=b"abc"):
        return self.call(
            "POST", f"/files/{parent}?Type=file&Name={name}", data=content, status=201
        )["data"]["id"]

    def version(self, doc_id):
        self.call("PUT", f"/files/{doc_id}", data=b"second")
        versions = self.call("GET", f"/files/{doc_id}/versions")["data"]
        return versions[0]["id"].split("/", 1)[1]


@case("public", "POST", "/files", (INST, FILES_EV, CREATED))
def files_mkdir_root(w):
    f = FilesWorld(w)
    w.start()
    f.mkdir()


@case("public", "POST", "/files/{dir_id}", (INST, FILES_EV, CREATED))
def files_upload(w):
    f = FilesWorld(w)
    w.start()
    f.upload()


@case(
    "public",
    "PUT",
    "/files/{file_id}",
    (INST, FILES_EV, UPDATED),
    (INST, VERSIONS_EV, CREATED),
)
def files_overwrite(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call("PUT", f"/files/{doc}", data=b"new")


def _patch_body(**attributes):
    return {"data": {"type": "io.cozy.files", "attributes": attributes}}


@case("public", "PATCH", "/files/metadata", (INST, FILES_EV, UPDATED))
def files_patch_by_path(w):
    f = FilesWorld(w)
    f.upload()
    w.start()
    f.call("PATCH", "/files/metadata?Path=/f.txt", body=_patch_body(name="g.txt"))


@case("public", "PATCH", "/files/{file_id}", (INST, FILES_EV, UPDATED))
def files_patch(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call("PATCH", f"/files/{doc}", body=_patch_body(tags=["x"]))


@case("public", "PATCH", "/files", (INST, FILES_EV, UPDATED))
def files_patch_batch(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call(
        "PATCH", "/files/", body={"data": [{"id": doc, "attributes": {"name": "n.txt"}}]}
    )


@case("public", "DELETE", "/files/{file_id}", (INST, FILES_EV, UPDATED))
def files_trash(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call("DELETE", f"/files/{doc}")


@case("public", "DELETE", "/files/trash", (INST, FILES_EV, DELETED))
def files_empty_trash(w):
    f = FilesWorld(w)
    doc = f.upload()
    f.call("DELETE", f"/files/{doc}")
    w.start()
    f.call("DELETE", "/files/trash", status=204)


@case("public", "POST", "/files/trash/{file_id}", (INST, FILES_EV, UPDATED))
def files_restore(w):
    f = FilesWorld(w)
    doc = f.upload()
    f.call("DELETE", f"/files/{doc}")
    w.start()
    f.call("POST", f"/files/trash/{doc}")


@case("public", "DELETE", "/files/trash/{file_id}", (INST, FILES_EV, DELETED))
def files_destroy(w):
    f = FilesWorld(w)
    doc = f.upload()
    f.call("DELETE", f"/files/{doc}")
    w.start()
    f.call("DELETE", f"/files/trash/{doc}", status=204)


@case(
    "public",
    "POST",
    "/files/revert/{file_id}/{version_id}",
    (INST, VERSIONS_EV, DELETED),
    (INST, FILES_EV, UPDATED),
    (INST, VERSIONS_EV, CREATED),
)
def files_revert(w):
    f = FilesWorld(w)
    doc = f.upload()
    version = f.version(doc)
    w.start()
    f.call("POST", f"/files/revert/{doc}/{version}")


@case("public", "DELETE", "/files/{file_id}/{version_id}", (INST, VERSIONS_EV, DELETED))
def files_delete_version(w):
    f = FilesWorld(w)
    doc = f.upload()
    version = f.version(doc)
    w.start()
    f.call("DELETE", f"/files/{doc}/{version}", status=204)


@case("public", "PATCH", "/files/{file_id}/{version_id}", (INST, VERSIONS_EV, UPDATED))
def files_tag_version(w):
    f = FilesWorld(w)
    doc = f.upload()
    version = f.version(doc)
    w.start()
    f.call("PATCH", f"/files/{doc}/{version}", body=_patch_body(tags=["old"]))


@case("public", "DELETE", "/files/versions", (INST, VERSIONS_EV, DELETED))
def files_clean_versions(w):
    f = FilesWorld(w)
    f.version(f.upload())
    w.start()
    f.call("DELETE", "/files/versions", status=204)


@case("public", "POST", "/files/{file_id}/copy", (INST, FILES_EV, CREATED))
def files_copy(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call("POST", f"/files/{doc}/copy", status=201)


_REF = {"data": [{"type": "io.cozy.photos.albums", "id": "a1"}]}


@case(
    "public",
    "POST",
    "/files/{file_id}/relationships/referenced_by",
    (INST, FILES_EV, UPDATED),
)
def files_add_references(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call("POST", f"/files/{doc}/relationships/referenced_by", body=_REF)


@case(
    "public",
    "DELETE",
    "/files/{file_id}/relationships/referenced_by",
    (INST, FILES_EV, UPDATED),
)
def files_remove_references(w):
    f = FilesWorld(w)
    doc = f.upload()
    f.call("POST", f"/files/{doc}/relationships/referenced_by", body=_REF)
    w.start()
    f.call("DELETE", f"/files/{doc}/relationships/referenced_by", body=_REF)


@case("public", "POST", "/files/_find")
def files_find(w):
    f = FilesWorld(w)
    w.start()
    f.call("POST", "/files/_find", body={"selector": {"name": "x"}})


@case("public", "POST", "/files/_all_docs")
def files_all_docs(w):
    f = FilesWorld(w)
    w.start()
    f.call("POST", "/files/_all_docs", body={"keys": ["io.cozy.files.root-dir"]})


@case("public", "POST", "/files/downloads")
def files_download_link(w):
    f = FilesWorld(w)
    f.upload()
    w.start()
    f.call("POST", "/files/downloads?Path=/f.txt")


@case("public", "POST", "/files/archive")
def files_archive_link(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call(
        "POST",
        "/files/archive",
        body={"data": {"attributes": {"name": "a", "ids": [doc]}}},
    )


@case(
    "public",
    "POST",
    "/data/{doctype}/{docid}/relationships/references",
    (INST, FILES_EV, UPDATED),
)
def data_add_references(w):
    f = FilesWorld(w)
    doc = f.upload()
    f.token = w.cli("io.cozy.files io.cozy.photos.albums")
    w.start()
    f.call(
        "POST",
        "/data/io.cozy.photos.albums/a1/relationships/references",
        body={"data": [{"type": "io.cozy.files", "id": doc}]},
        status=204,
    )


@case(
    "public",
    "DELETE",
    "/data/{doctype}/{docid}/relationships/references",
    (INST, FILES_EV, UPDATED),
)
def data_remove_references(w):
    f = FilesWorld(w)
    doc = f.upload()
    f.token = w.cli("io.cozy.files io.cozy.photos.albums")
    body = {"data": [{"type": "io.cozy.files", "id": doc}]}
    f.call(
        "POST",
        "/data/io.cozy.photos.albums/a1/relationships/references",
        body=body,
        status=204,
    )
    w.start()
    f.call(
        "DELETE",
        "/data/io.cozy.photos.albums/a1/relationships/references",
        body=body,
        status=204,
    )


@case("public", "POST", "/files/upload/metadata")
def files_upload_metadata(w):
    f = FilesWorld(w)
    w.start()
    f.call(
        "POST",
        "/files/upload/metadata",
        body={"data": {"attributes": {"datetime": "2020-01-01T00:00:00Z"}}},
        status=201,
    )


@case(
    "public",
    "POST",
    "/files/{file_id}/versions",
    (INST, FILES_EV, UPDATED),
    (INST, VERSIONS_EV, CREATED),
)
def files_new_version(w):
    f = FilesWorld(w)
    doc = f.upload()
    w.start()
    f.call(
        "POST",
        f"/files/{doc}/versions",
        body={"data": {"attributes": {"qualification": {"label": "x"}}}},
    )


# The admin API -----------------------------------------------------------------------
@case("admin", "POST", "/instances/{domain}/files/dir", (INST, "io.cozy.files", CREATED))
def admin_files_mkdir(w):
    w.onboarded()
    w.start()
    admin_request(w, "POST", f"/instances/{DOMAIN}/files/dir", 201, Path="/imported")


@case(
    "admin",
    "POST",
    "/instances/{domain}/files/file",
    (INST, "io.cozy.files", CREATED),
    (INST, "io.cozy.files", CREATED),
)
def admin_files_upload(w):
    w.onboarded()
    w.start()
    reply = w.admin.request(
        "POST",
        f"{ADMIN}/instances/{DOMAIN}/files/file?Path=/new/a.txt",
        headers=basic_auth(),
        body="some content",
    )
    assert reply.status == 201, reply.body


TREE = ((INST, "io.cozy.files", CREATED),) * 6  # root, trash, and four directories


@case(
    "admin",
    "POST",
    "/instances",
    (G, "instances", CREATED),
    (G, "instances", UPDATED),
    (G, "domain_aliases", CREATED),
    (INST, "io.cozy.settings", CREATED),
    (INST, "io.cozy.settings", CREATED),
    (INST, "io.cozy.contacts", CREATED),
    *TREE,
)
def admin_create_instance(w):
    w.start()
    admin_request(
        w,
        "POST",
        "/instances",
        201,
        Domain=DOMAIN,
        DomainAliases="alias.cozy.test",
        Passphrase=PASSPHRASE,
        KdfIterations=str(TEST_KDF_ITERATIONS),
        Email="alice@example.org",
    )


@case(
    "admin",
    "PATCH",
    "/instances/{domain}",
    (G, "instances", UPDATED),
    (INST, "io.cozy.settings", UPDATED),
    (G, "domain_aliases", CREATED),
)
def admin_modify_instance(w):
    create_instance(w.admin)
    w.start()
    admin_request(
        w,
        "PATCH",
        f"/instances/{DOMAIN}",
        200,
        Email="new@example.org",
        DomainAliases="alias.cozy.test",
    )


@case(
    "admin",
    "DELETE",
    "/instances/{domain}",
    (G, "instances", UPDATED),
    (G, "instances", DELETED),
    (G, "domain_aliases", DELETED),
)
def admin_destroy_instance(w):
    create_instance(w.admin, DomainAliases="alias.cozy.test")
    w.start()
    admin_request(w, "DELETE", f"/instances/{DOMAIN}", 204)


@case("admin", "POST", "/instances/token")
def admin_token_route(w):
    create_instance(w.admin)
    w.start()
    admin_request(
        w, "POST", "/instances/token", 200, Domain=DOMAIN, Audience="cli", Scope=EVENTS
    )


@case("admin", "POST", "/instances/oauth_client", (INST, "io.cozy.oauth.clients", CREATED))
def admin_oauth_client(w):
    create_instance(w.admin)
    w.start()
    admin_request(
        w,
        "POST",
        "/instances/oauth_client",
        200,
        Domain=DOMAIN,
        RedirectURI=REDIRECT,
        ClientName="Operator",
        SoftwareID="sw",
    )


# /realtime ---------------------------------------------------------------------------------
@case("public", "POST", "/realtime/{doctype}/{doc_id}")
def realtime_notify(w):
    # NOTIFIED goes to the websockets only: never through the hub (no trigger
    # may fire on it), so no event here.
    token = with_token(w)
    w.start()
    reply = w.owner.request(
        "POST",
        f"{BASE}/realtime/{EVENTS}/progress-1",
        body={"subtype": "progress", "imported": 10},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        cookies=False,
    )
    assert reply.status == 204, reply.body


# /apps, /konnectors and the admin API's apps routes ----------------------------------------
APPS, KONNS, PERMS = "io.cozy.apps", "io.cozy.konnectors", "io.cozy.permissions"


def app_source(version: str = "1.0.0", kind: str = "webapp", **fields: Any) -> str:
    import tempfile

    from tests.support.apps import app_files, manifest, write_folder

    extra = {"type": "konnector", "routes": None} if kind == "konnector" else {}
    files = app_files(manifest("notes", version, **extra, **fields), kind)
    return "file://" + write_folder(tempfile.mkdtemp(prefix="cozyd-app-"), files)


def apps_request(w: World, method: str, path: str, status: int, **params: str):
    token = w.cli("io.cozy.apps io.cozy.konnectors")
    reply = w.owner.request(
        method,
        f"{BASE}{path}?{urlencode(params)}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.api+json"},
        cookies=False,
    )
    assert reply.status == status, reply.body
    return reply


def app_cases(service: str, kind: str, doctype: str) -> None:
    base = "/apps" if kind == "webapp" else "/konnectors"
    route = base if service == "public" else f"/instances/{{domain}}{base}"

    def send(w: World, method: str, status: int, **params: str):
        if service == "public":
            return apps_request(w, method, f"{base}/notes", status, **params)
        return admin_request(
            w, method, f"/instances/{DOMAIN}{base}/notes", status, **params
        )

    created = 202 if service == "public" else 200

    def install(w):
        w.onboarded()
        source = app_source(kind=kind)
        w.start()
        send(w, "POST", created, Source=source)

    def update(w):
        w.onboarded()
        send(w, "POST", created, Source=app_source(kind=kind))
        more = {"notes": {"type": "io.cozy.notes"}, "files": {"type": "io.cozy.files"}}
        source = app_source("2.0.0", kind=kind, permissions=more)
        w.start()
        send(w, "PUT", created, Source=source, PermissionsAcked="true")

    def uninstall(w):
        w.onboarded()
        send(w, "POST", created, Source=app_source(kind=kind))
        w.start()
        send(w, "DELETE", 200)

    prefix = f"{service}_{kind}"
    case(
        service,
        "POST",
        f"{route}/{{slug}}",
        (INST, doctype, CREATED),
        (INST, PERMS, CREATED),
        (INST, doctype, UPDATED),
        name=f"{prefix}_install",
    )(install)
    case(
        service,
        "PUT",
        f"{route}/{{slug}}",
        (INST, doctype, UPDATED),
        (INST, PERMS, UPDATED),
        (INST, doctype, UPDATED),
        name=f"{prefix}_update",
    )(update)
    case(
        service,
        "DELETE",
        f"{route}/{{slug}}",
        (INST, PERMS, DELETED),
        (INST, doctype, DELETED),
        name=f"{prefix}_uninstall",
    )(uninstall)


for _service in ("public", "admin"):
    app_cases(_service, "webapp", APPS)
    app_cases(_service, "konnector", KONNS)


# /permissions: shares by link --------------------------------------------------------------
PERMISSIONS = "io.cozy.permissions"


def drive_token(w: World) -> str:
    """A token of an app allowed every event (no session: 30 minutes)."""
    instance = w.instance()
    sync(
        w.stack.store.put_doc(
            db_name(instance.prefix, PERMISSIONS),
            {
                "_id": "perm-drive",
                "type": "app",
                "source_id": "io.cozy.apps/drive",
                "permissions": {"events": {"type": EVENTS}},
            },
        )
    )
    return tokens.issue(instance, tokens.APP, "drive", issued_at=w.clock.seconds())


def share(w: World, **attributes: Any) -> tuple[str, str]:
    """A share of the events by the drive app (its id, the app's token)."""
    w.onboarded()
    token = drive_token(w)
    reply = permissions_request(
        w,
        "POST",
        "?codes=bob",
        {"data": {"attributes": {"permissions": {"e": {"type": EVENTS}}, **attributes}}},
        token,
    )
    assert reply.status == 200, reply.body
    return reply.json()["data"]["id"], token


def permissions_request(w: World, method: str, path: str, body: Any, token: str):
    return w.owner.request(
        method,
        BASE + "/permissions" + path,
        body=body,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        cookies=False,
    )


@case("public", "POST", "/permissions", (INST, PERMISSIONS, CREATED))
def permissions_create_share(w):
    w.onboarded()
    token = drive_token(w)
    w.start()
    reply = permissions_request(
        w,
        "POST",
        "?codes=bob,jane",
        {"data": {"attributes": {"permissions": {"e": {"type": EVENTS}}}}},
        token,
    )
    assert reply.status == 200, reply.body
    assert w.docs[0]["type"] == "share"


@case("public", "PATCH", "/permissions/{perm_id}", (INST, PERMISSIONS, UPDATED))
def permissions_patch_share(w):
    perm_id, app = share(w)
    w.start()
    reply = permissions_request(
        w, "PATCH", f"/{perm_id}", {"data": {"attributes": {"expires_at": ""}}}, app
    )
    assert reply.status == 200, reply.body


@case("public", "DELETE", "/permissions/{perm_id}", (INST, PERMISSIONS, DELETED))
def permissions_revoke_share(w):
    perm_id, app = share(w)
    w.start()
    reply = permissions_request(w, "DELETE", f"/{perm_id}", None, app)
    assert reply.status == 204, reply.body


@case("public", "POST", "/permissions/exists")
def permissions_exists(w):
    _, app = share(w)
    w.start()
    reply = permissions_request(
        w, "POST", "/exists", {"data": [{"type": EVENTS, "id": "x"}]}, app
    )
    assert reply.status == 200, reply.body


@case("public", "POST", "/auth/share-by-link/password")
def permissions_share_password(w):
    perm_id, _ = share(w, password="pw")
    w.start()
    reply = w.owner.request(
        "POST",
        BASE + "/auth/share-by-link/password",
        form={"password": "pw", "perm_id": perm_id},
        cookies=False,
    )
    assert reply.json() == {"password": "ok"}


# /jobs ------------------------------------------------------------------------------------
JOBS_SCOPE = "io.cozy.jobs io.cozy.triggers"


def jobs_call(w: World, method: str, path: str, body: Any = None, *, status: int):
    if not hasattr(w, "jobs_token"):  # the first call: alice and a CLI token
        w.onboarded()
        w.jobs_token = w.cli(JOBS_SCOPE)
    reply = w.owner.request(
        method,
        f"{BASE}/jobs{path}",
        body=body,
        headers={"Authorization": f"Bearer {w.jobs_token}"},
        cookies=False,
    )
    assert reply.status == status, (method, path, reply.status, reply.body)
    return reply.json() if reply.body else None


def a_trigger(w: World, **attributes: Any) -> str:
    attributes = {"type": "@every", "arguments": "1h", "worker": "log", **attributes}
    made = jobs_call(
        w, "POST", "/triggers", {"data": {"attributes": attributes}}, status=201
    )
    return made["data"]["id"]


@case("public", "POST", "/jobs/queue/{worker}", (INST, "io.cozy.jobs", CREATED))
def jobs_push(w):
    jobs_call(w, "GET", "/queue/log", status=200)
    w.start()
    jobs_call(
        w, "POST", "/queue/log", {"data": {"attributes": {"arguments": {}}}}, status=202
    )


@case("public", "DELETE", "/jobs/purge")
def jobs_purge(w):
    jobs_call(w, "POST", "/queue/log", {"data": {"attributes": {}}}, status=202)
    w.start()
    jobs_call(w, "DELETE", "/purge?duration=1D", status=200)


@case("public", "PATCH", "/jobs/{job_id}", (INST, "io.cozy.jobs", UPDATED))
def jobs_complete_client_job(w):
    trigger = a_trigger(w, type="@client", arguments="")
    job = jobs_call(w, "POST", f"/triggers/{trigger}/launch", status=201)["data"]
    w.start()
    jobs_call(
        w, "PATCH", f"/{job['id']}", {"data": {"attributes": {"state": "done"}}}, status=200
    )


@case("public", "POST", "/jobs/triggers", (INST, "io.cozy.triggers", CREATED))
def jobs_create_trigger(w):
    jobs_call(w, "GET", "/triggers", status=200)
    w.start()
    a_trigger(w)


@case("public", "PATCH", "/jobs/triggers/{trigger_id}", (INST, "io.cozy.triggers", UPDATED))
def jobs_patch_trigger(w):
    trigger = a_trigger(w, type="@cron", arguments="0 0 0 * * *")
    w.start()
    body = {"data": {"attributes": {"arguments": "0 0 1 * * *"}}}
    jobs_call(w, "PATCH", f"/triggers/{trigger}", body, status=200)


@case(
    "public", "POST", "/jobs/triggers/{trigger_id}/launch", (INST, "io.cozy.jobs", CREATED)
)
def jobs_launch_trigger(w):
    trigger = a_trigger(w)
    jobs_call(w, "GET", "/queue/log", status=200)
    w.start()
    jobs_call(w, "POST", f"/triggers/{trigger}/launch", status=201)


@case(
    "public", "DELETE", "/jobs/triggers/{trigger_id}", (INST, "io.cozy.triggers", DELETED)
)
def jobs_delete_trigger(w):
    trigger = a_trigger(w)
    w.start()
    jobs_call(w, "DELETE", f"/triggers/{trigger}", status=204)


@case("public", "POST", "/jobs/webhooks/{trigger_id}", (INST, "io.cozy.jobs", CREATED))
def jobs_fire_webhook(w):
    trigger = a_trigger(w, type="@webhook", arguments="")
    jobs_call(w, "GET", "/queue/log", status=200)
    w.start()
    reply = w.owner.request("POST", f"{BASE}/jobs/webhooks/{trigger}", body={"a": 1})
    assert reply.status == 204, reply.body


@case(
    "admin",
    "POST",
    "/instances/{domain}/jobs/queue/{worker}",
    (INST, "io.cozy.jobs", CREATED),
)
def admin_push_job(w):
    jobs_call(w, "GET", "/queue/log", status=200)
    w.start()
    admin_request(w, "POST", f"/instances/{DOMAIN}/jobs/queue/log", 202, Arguments="{}")


@case("admin", "DELETE", "/instances/{domain}/jobs/purge")
def admin_purge_jobs(w):
    jobs_call(w, "GET", "/queue/log", status=200)
    w.start()
    admin_request(w, "DELETE", f"/instances/{DOMAIN}/jobs/purge", 200, duration="1D")


@case(
    "admin",
    "POST",
    "/instances/{domain}/triggers/{trigger_id}/launch",
    (INST, "io.cozy.jobs", CREATED),
)
def admin_launch_trigger(w):
    trigger = a_trigger(w)
    jobs_call(w, "GET", "/queue/log", status=200)
    w.start()
    admin_request(w, "POST", f"/instances/{DOMAIN}/triggers/{trigger}/launch", 201)


@case(
    "admin",
    "DELETE",
    "/instances/{domain}/triggers/{trigger_id}",
    (INST, "io.cozy.triggers", DELETED),
)
def admin_delete_trigger(w):
    trigger = a_trigger(w)
    w.start()
    admin_request(w, "DELETE", f"/instances/{DOMAIN}/triggers/{trigger}", 204)


# -- the routes of the services ---------------------------------------------------------
def _service_routes(resource) -> list[tuple[str, str]] | None:
    """A service's declared routes (``cozyd.web.routing``), as (method, path)."""
    router = getattr(type(resource), "router", None)
    if router is None:
        return None
    return [
        (method, "/" + "/".join(r.pattern) if r.pattern else "/")
        for r in router.routes
        for method in r.methods
    ]


def registered_routes(stack) -> set[tuple[str, str, str]]:
    """(service, method, path) of every route of the public and admin sites
    (paths with the prefix the public root serves them under)."""
    found: set[tuple[str, str, str]] = set()
    seen: set[tuple[int, str]] = set()
    root = getattr(stack.public, "_site", stack.public)  # AppHosts wraps the root
    for key, resource in root._services.items():
        prefix = key.split("/")[0]
        if (id(resource), prefix) in seen:
            continue
        seen.add((id(resource), prefix))
        routes = _service_routes(resource)
        assert routes is not None, f"cannot list the routes of /{key}"
        for method, path in routes:
            full = "/" + "/".join(p for p in (prefix, path.strip("/")) if p)
            found.add(("public", method, full))
    for method, path in _service_routes(stack.admin) or ():
        found.add(("admin", method, path))
    return found


def test_the_table_names_every_route_that_can_write(stack):
    writing = {
        route
        for route in registered_routes(stack)
        if route[1] in WRITE_METHODS or route[1] == "*"
    }
    assert ("public", "POST", "/data/{doctype}") in writing  # the listing works
    tabled = {c.route for c in CASES} | set(NOT_ROUTES)
    assert sorted(writing - tabled) == [], "routes that write but are not in the table"
    assert sorted(tabled - writing) == [], "routes of the table that do not exist"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_route_publishes_its_events(stack, clock, case):
    world = World(stack, clock)
    case.run(world)
    assert world._recording, "the case never started recording"
    assert Counter(world.events) == Counter(case.events)


def events_table() -> str:
    """The table of docs/events.md, made from ``CASES``."""
    lines = ["| Route | Case | Events (owner: doctype verb) |", "|---|---|---|"]
    for c in CASES:
        counted = Counter(c.events)
        events = (
            ", ".join(
                f"{owner}: {doctype} {verb}" + (f" ×{n}" if n > 1 else "")
                for (owner, doctype, verb), n in counted.items()
            )
            or "none"
        )
        service, method, path = c.route
        where = f"{method} {path}" if service == "public" else f"{method} {path} (admin)"
        lines.append(f"| `{where}` | {c.name} | {events} |")
    return "\n".join(lines)


def test_docs_events_md_shows_this_table():
    # Regenerate with: python -m tests.unit.documents.test_route_events
    text = (pathlib.Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text(
        encoding="utf-8"
    )
    assert events_table() in text


if __name__ == "__main__":  # python -m tests.unit.documents.test_route_events
    print(events_table())
