"""Permission rules and sets, as cozy-stack defines them.

A rule is ``{type, verbs, values, selector, description}`` (only ``type`` is
mandatory). A set is an ordered map ``title -> rule`` plus who holds it
(``type``: app, konnector, cli, oauth, register, share…, and ``source_id``).
Rules come from JSON (app manifests, stored permission documents) or from a
scope string (OAuth, CLI tokens): rules separated by spaces, each
``type[:VERBS[:value1,value2[:selector]]]``.

Matching (what the route decorator asks):

- a *collection* request (list, find, changes, create without id…) needs a
  rule on the doctype with the verb and **no values**;
- a *document* request needs a rule on the doctype with the verb and either
  no values, or the document id in ``values`` (no selector), or the
  document's ``selector`` field intersecting ``values``.

Types may end with ``.*`` (at least three dots before it) to cover a doctype
and its sub-doctypes; ``*`` alone is the maximal set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from cozyd.errors import BadRequest

ALL_VERBS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_DOCTYPE_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
MAX_RULES = 100


class InvalidPermission(BadRequest):
    code = "invalid_permission"


def _check_type(doctype: Any) -> str:
    if not isinstance(doctype, str) or not doctype:
        raise InvalidPermission("a permission needs a type")
    if doctype == "*":
        return doctype
    if doctype.endswith(".*"):
        base = doctype[:-2]
        if base.count(".") < 2 or not _DOCTYPE_RE.match(base):
            raise InvalidPermission(
                f"invalid wildcard type {doctype!r}: it needs at least three dots "
                "(io.cozy.bank.* is fine, io.cozy.* is not)"
            )
        return doctype
    if not _DOCTYPE_RE.match(doctype):
        raise InvalidPermission(f"invalid permission type {doctype!r}")
    return doctype


def _check_verbs(verbs: Any) -> frozenset[str]:
    if verbs is None or verbs == []:
        return ALL_VERBS
    if isinstance(verbs, str) or not isinstance(verbs, list):
        raise InvalidPermission('verbs must be a list such as ["GET", "POST"]')
    result: set[str] = set()
    for verb in verbs:
        if not isinstance(verb, str):
            raise InvalidPermission("verbs must be strings")
        upper = verb.upper()
        if upper == "ALL":
            result |= ALL_VERBS
        elif upper in ALL_VERBS:
            result.add(upper)
        else:
            raise InvalidPermission(f"unknown verb {verb!r}")
    return frozenset(result)


def _check_strings(values: Any, what: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidPermission(f"{what} must be a list of strings")
    return tuple(values)


def type_covers(rule_type: str, doctype: str) -> bool:
    if rule_type == "*" or rule_type == doctype:
        return True
    if rule_type.endswith(".*"):
        base = rule_type[:-2]
        return doctype == base or doctype.startswith(base + ".")
    return False


def verb_of(method: str) -> str:
    """The permission verb an HTTP method needs (HEAD reads like GET)."""
    method = method.upper()
    return "GET" if method == "HEAD" else method


@attrs.frozen
class Rule:
    type: str
    verbs: frozenset[str] = ALL_VERBS
    values: tuple[str, ...] = ()
    selector: str = ""
    description: str = ""

    @classmethod
    def from_json(cls, data: Any) -> Rule:
        if not isinstance(data, Mapping):
            raise InvalidPermission("a permission must be an object")
        selector = data.get("selector") or ""
        description = data.get("description") or ""
        if not isinstance(selector, str) or not isinstance(description, str):
            raise InvalidPermission("selector and description must be strings")
        return cls(
            type=_check_type(data.get("type")),
            verbs=_check_verbs(data.get("verbs")),
            values=_check_strings(data.get("values"), "values"),
            selector=selector,
            description=description,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type}
        if self.description:
            data["description"] = self.description
        data["verbs"] = ["ALL"] if self.verbs == ALL_VERBS else sorted(self.verbs)
        if self.values:
            data["values"] = list(self.values)
        if self.selector:
            data["selector"] = self.selector
        return data

    def to_scope(self) -> str:
        parts = [self.type]
        if self.verbs != ALL_VERBS or self.values:
            parts.append("ALL" if self.verbs == ALL_VERBS else ",".join(sorted(self.verbs)))
        if self.values:
            parts.append(",".join(self.values))
            if self.selector:
                parts.append(self.selector)
        return ":".join(parts)

    def allows_collection(self, verb: str, doctype: str) -> bool:
        return not self.values and verb in self.verbs and type_covers(self.type, doctype)

    def allows_document(
        self,
        verb: str,
        doctype: str,
        doc_id: str,
        field: Callable[[str], Iterable[str]] | None,
    ) -> bool:
        if verb not in self.verbs or not type_covers(self.type, doctype):
            return False
        if not self.values:
            return True
        if not self.selector:
            return doc_id in self.values
        if field is None:
            return False
        return any(value in self.values for value in field(self.selector))


def parse_rule(text: str) -> Rule:
    parts = text.split(":")
    if len(parts) > 4 or not parts[0]:
        raise InvalidPermission(f"invalid scope {text!r}")
    rule_type = _check_type(parts[0])
    verbs = _check_verbs(parts[1].split(",")) if len(parts) > 1 else ALL_VERBS
    values = tuple(v for v in parts[2].split(",") if v) if len(parts) > 2 else ()
    selector = parts[3] if len(parts) > 3 else ""
    if len(parts) > 2 and not values:
        raise InvalidPermission(f"invalid scope {text!r}: empty values")
    return Rule(type=rule_type, verbs=verbs, values=values, selector=selector)


@attrs.frozen
class PermissionSet:
    """Who holds which rules (titles keep their order)."""

    type: str
    rules: tuple[tuple[str, Rule], ...]
    source_id: str = ""
    id: str = ""
    #: What the holder is (app slug, client id, "CLI"…), for handlers' use.
    subject: str = ""

    @classmethod
    def from_scope(
        cls, scope: str, *, type: str, source_id: str = "", subject: str = ""
    ) -> PermissionSet:
        parts = scope.split()
        if len(parts) > MAX_RULES:
            raise InvalidPermission(f"a scope holds at most {MAX_RULES} rules")
        rules = tuple((f"rule{i}", parse_rule(part)) for i, part in enumerate(parts))
        return cls(type=type, rules=rules, source_id=source_id, subject=subject)

    @classmethod
    def from_json(
        cls,
        permissions: Any,
        *,
        type: str,
        source_id: str = "",
        id: str = "",
        subject: str = "",
    ) -> PermissionSet:
        if permissions is None:
            permissions = {}
        if not isinstance(permissions, Mapping):
            raise InvalidPermission("permissions must be an object of title: rule")
        if len(permissions) > MAX_RULES:
            raise InvalidPermission(f"a permission set holds at most {MAX_RULES} rules")
        rules = tuple(
            (str(title), Rule.from_json(rule)) for title, rule in permissions.items()
        )
        return cls(type=type, rules=rules, source_id=source_id, id=id, subject=subject)

    def permissions_json(self) -> dict[str, Any]:
        return {title: rule.to_json() for title, rule in self.rules}

    def scope(self) -> str:
        return " ".join(rule.to_scope() for _, rule in self.rules)

    @property
    def is_maximal(self) -> bool:
        return any(rule.type == "*" for _, rule in self.rules)

    def allows_collection(self, verb: str, doctype: str) -> bool:
        return any(rule.allows_collection(verb, doctype) for _, rule in self.rules)

    def allows_document(
        self,
        verb: str,
        doctype: str,
        doc_id: str,
        field: Callable[[str], Iterable[str]] | None = None,
    ) -> bool:
        return any(
            rule.allows_document(verb, doctype, doc_id, field) for _, rule in self.rules
        )


def document_field(doc: Mapping[str, Any]) -> Callable[[str], list[str]]:
    """The values of a document's field, for selector rules (lists are
    flattened; ``referenced_by`` yields ``doctype/id`` like cozy-stack)."""

    def field(name: str) -> list[str]:
        if name == "referenced_by":
            refs = doc.get("referenced_by") or []
            return [
                f"{r.get('type')}/{r.get('id')}" for r in refs if isinstance(r, Mapping)
            ]
        value: Any = doc
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, list):
            return [str(v) for v in value if isinstance(v, (str, int, float))]
        return [] if value is None or isinstance(value, (dict, bool)) else [str(value)]

    return field
