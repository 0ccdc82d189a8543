"""The import rules of docs/imports.md, read from the source with ``ast``:

1. no cycle between cozyd's packages (a top-level module such as
   ``cozyd.errors`` counts as a package of its own);
2. ``cozyd.web`` never imports ``cozyd.storage`` (it goes through
   ``cozyd.documents``);
3. domain packages never import ``twisted.web`` or Klein; the storage
   engines may use twisted.web's HTTP *client* (CouchDB), nothing else of it.

Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "cozyd"

#: Packages that are not domain logic: the HTTP layer, the command line,
#: the test helpers, the storage engines and the wiring.
NOT_DOMAIN = frozenset({"web", "cli", "testing", "storage", "service", "tap"})
#: What of twisted.web a storage engine may use: an HTTP client.
CLIENT_SIDE = (
    "twisted.web.client",
    "twisted.web.http_headers",
    "twisted.web.iweb",
    "twisted.web._newclient",
)


def module_name(path: pathlib.Path) -> str:
    parts = ("cozyd", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Is ``cozyd.x.y`` a module or package of the source tree?"""
    relative = pathlib.Path(*name.split(".")[1:])
    return (ROOT / relative).with_suffix(".py").is_file() or (
        ROOT / relative / "__init__.py"
    ).is_file()


def imports_of(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports. ``from a import b`` gives ``a.b`` (and
    ``a`` itself too for cozyd's own modules)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if not module.startswith("cozyd"):
                # ``from twisted.web import client``: judged as twisted.web.client
                found.update(f"{module}.{alias.name}" for alias in node.names)
                continue
            found.add(module)
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                if is_module(candidate):
                    found.add(candidate)
    return found


def package_of(module: str) -> str | None:
    """``cozyd.auth.login`` → ``auth``; ``cozyd.errors`` → ``errors``."""
    parts = module.split(".")
    if parts[0] != "cozyd" or len(parts) < 2:
        return None
    return parts[1]


def all_imports() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(ROOT.rglob("*.py"))}


def package_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in imports.items():
        source = package_of(module)
        if source is None:
            continue
        graph[source]
        for target in targets:
            package = package_of(target)
            if package is not None and package != source:
                graph[source].add(package)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


@pytest.fixture(scope="module")
def imports():
    return all_imports()


def test_the_reader_sees_the_imports_it_must_judge(imports):
    # The rules below mean nothing if the reader misses imports.
    assert (
        "cozyd.documents.layer" in imports["cozyd.web.data"]
        or "cozyd.documents" in imports["cozyd.web.data"]
    )
    # from cozyd import passphrase
    assert "cozyd.passphrase" in imports["cozyd.instance.lifecycle"]
    assert "cozyd.storage.sqlite" in imports["cozyd.service"]  # inside a function
    graph = package_graph(imports)
    assert {"documents", "storage"} <= graph["instance"]


def test_no_cycle_between_packages(imports):
    assert find_cycle(package_graph(imports)) is None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_the_web_layer_never_imports_storage(imports):
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in imports.items()
        if package_of(module) == "web"
        for target in targets
        if package_of(target) == "storage"
    )
    assert offenders == []


def test_domain_packages_know_nothing_of_http_servers(imports):
    offenders = []
    for module, targets in imports.items():
        package = package_of(module)
        if package in NOT_DOMAIN - {"storage"}:
            continue
        for target in targets:
            http = (
                target == "klein"
                or target.startswith("klein.")
                or target == "twisted.web"
                or target.startswith("twisted.web.")
            )
            if not http:
                continue
            if package == "storage" and target.startswith(CLIENT_SIDE):
                continue
            offenders.append(f"{module} imports {target}")
    assert sorted(offenders) == []
