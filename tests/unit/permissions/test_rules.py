import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.permissions.rules import (
    ALL_VERBS,
    InvalidPermission,
    PermissionSet,
    Rule,
    document_field,
    parse_rule,
    type_covers,
    verb_of,
)


def test_scope_string_round_trip():
    scope = (
        "io.cozy.contacts io.cozy.files:GET:io.cozy.files.music-dir "
        "io.cozy.jobs:POST:sendmail:worker"
    )
    permissions = PermissionSet.from_scope(scope, type="oauth")
    titles = [title for title, _ in permissions.rules]
    assert titles == ["rule0", "rule1", "rule2"]
    contacts, files, jobs = (rule for _, rule in permissions.rules)
    assert contacts == Rule(type="io.cozy.contacts")
    assert files.verbs == {"GET"} and files.values == ("io.cozy.files.music-dir",)
    assert (jobs.verbs, jobs.values, jobs.selector) == ({"POST"}, ("sendmail",), "worker")
    assert permissions.scope() == scope
    assert PermissionSet.from_scope(permissions.scope(), type="oauth") == permissions


@pytest.mark.parametrize(
    "scope",
    [
        "io.cozy.*",
        "io.*",
        "io.cozy.files:FETCH",
        "io.cozy.files:GET:",
        "a:b:c:d:e",
        ":GET",
        "IO.COZY.files",
        "io.cozy.files:GET:a,b:sel:extra",
    ],
)
def test_bad_scopes_are_refused(scope):
    with pytest.raises(InvalidPermission):
        PermissionSet.from_scope(scope, type="cli")


def test_json_rules_and_defaults():
    permissions = PermissionSet.from_json(
        {
            "contacts": {
                "type": "io.cozy.contacts",
                "verbs": ["GET"],
                "description": "autocomplete",
            },
            "all": {"type": "io.cozy.notes", "verbs": ["ALL"]},
            "nothing-said": {"type": "io.cozy.todos"},
        },
        type="app",
        source_id="io.cozy.apps/x",
    )
    assert dict(permissions.rules)["all"].verbs == ALL_VERBS
    assert dict(permissions.rules)["nothing-said"].verbs == ALL_VERBS
    assert permissions.permissions_json()["contacts"] == {
        "type": "io.cozy.contacts",
        "description": "autocomplete",
        "verbs": ["GET"],
    }
    for bad in (
        [],
        {"x": {"verbs": ["GET"]}},
        {"x": {"type": "a.b", "verbs": "GET"}},
        {"x": {"type": "a.b", "values": "one"}},
        {"x": "io.cozy.files"},
    ):
        with pytest.raises(InvalidPermission):
            PermissionSet.from_json(bad, type="app")


def test_wildcards_need_three_dots():
    assert type_covers("io.cozy.bank.*", "io.cozy.bank")
    assert type_covers("io.cozy.bank.*", "io.cozy.bank.accounts.stats")
    assert not type_covers("io.cozy.bank.*", "io.cozy.banks")
    assert type_covers("*", "anything.at.all")
    assert parse_rule("io.cozy.bank.*").type == "io.cozy.bank.*"
    with pytest.raises(InvalidPermission):
        parse_rule("io.cozy.*")


def test_collection_routes_need_a_whole_type_rule():
    permissions = PermissionSet.from_scope(
        "io.cozy.contacts:GET io.cozy.files:GET,POST:dir1 io.cozy.events:GET:cal1:calendar",
        type="oauth",
    )
    assert permissions.allows_collection("GET", "io.cozy.contacts")
    assert not permissions.allows_collection("POST", "io.cozy.contacts")
    assert not permissions.allows_collection("GET", "io.cozy.files")  # values restrict
    assert not permissions.allows_collection("GET", "io.cozy.notes")


def test_document_rules_by_id_and_selector():
    permissions = PermissionSet.from_scope(
        "io.cozy.files:GET,POST:dir1 io.cozy.events:GET:cal1:calendar", type="oauth"
    )
    assert permissions.allows_document("GET", "io.cozy.files", "dir1")
    assert not permissions.allows_document("GET", "io.cozy.files", "dir2")
    assert not permissions.allows_document("DELETE", "io.cozy.files", "dir1")
    event = {"_id": "e1", "calendar": "cal1"}
    assert permissions.allows_document("GET", "io.cozy.events", "e1", document_field(event))
    other = {"_id": "e2", "calendar": "cal2"}
    assert not permissions.allows_document(
        "GET", "io.cozy.events", "e2", document_field(other)
    )
    assert not permissions.allows_document("GET", "io.cozy.events", "e1")  # no doc given


def test_document_field_values():
    doc = {
        "referenced_by": [{"type": "io.cozy.albums", "id": "a1"}],
        "tags": ["x", 2],
        "metadata": {"sharing": {"status": "ok"}},
        "flag": True,
    }
    field = document_field(doc)
    assert field("referenced_by") == ["io.cozy.albums/a1"]
    assert field("tags") == ["x", "2"]
    assert field("metadata.sharing.status") == ["ok"]
    assert field("flag") == [] and field("missing") == []


def test_head_reads_like_get():
    assert verb_of("HEAD") == "GET" and verb_of("patch") == "PATCH"


_doctype = st.from_regex(r"[a-z]{2,5}(\.[a-z]{2,5}){1,3}", fullmatch=True)
_verbs = st.lists(st.sampled_from(sorted(ALL_VERBS)), min_size=1, unique=True)
_values = st.lists(
    st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), max_size=3, unique=True
)


@given(_doctype, _verbs, _values)
def test_any_rule_survives_its_scope_form(doctype, verbs, values):
    rule = Rule(type=doctype, verbs=frozenset(verbs), values=tuple(values))
    assert parse_rule(rule.to_scope()) == rule


@given(st.text(max_size=60))
def test_scope_parsing_never_crashes(scope):
    try:
        PermissionSet.from_scope(scope, type="cli")
    except InvalidPermission:
        pass
