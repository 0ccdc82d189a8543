"""Revision trees: parsing, merging, the winner, stemming, revs_diff."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cozyd.storage.interface import InvalidRequest
from cozyd.storage.revisions import (
    InvalidRevision,
    MergeOutcome,
    RevTree,
    add_child,
    merge_path,
    missing_revs,
    new_rev,
    parse_rev,
    rev_sort_key,
    revision_path,
    stem,
)

A, B, C, D, E, F = (c * 32 for c in "abcdef")


def tree_of(*paths: list[str], deleted: tuple[str, ...] = ()) -> RevTree:
    tree = RevTree()
    for path in paths:
        tree, _ = merge_path(tree, path, path[0] in deleted)
    return tree


# -- revision ids --------------------------------------------------------------
def test_parse_rev():
    assert parse_rev("1-" + A) == (1, A)
    assert parse_rev("12-x-y") == (12, "x-y")


@pytest.mark.parametrize(
    "bad", ["", "1", "1-", "-abc", "a-b", "1.5-abc", " 1-a", None, 3, "١-abc"]
)
def test_parse_rev_refuses(bad):
    with pytest.raises(InvalidRevision) as caught:
        parse_rev(bad)
    assert isinstance(caught.value, InvalidRequest)
    assert caught.value.status == 400


def test_new_rev_is_deterministic():
    rev = new_rev(None, {"a": 1, "b": [1, 2]}, False)
    assert rev == new_rev(None, {"b": [1, 2], "a": 1}, False)  # key order is no content
    assert rev.startswith("1-") and len(rev) == 34
    child = new_rev(rev, {"a": 2}, False)
    assert child.startswith("2-")
    # The parent, the content and the deletion flag all make the id.
    others = {
        new_rev(None, {"a": 2, "b": [1, 2]}, False),
        new_rev(None, {"a": 1, "b": [1, 2]}, True),
        new_rev("1-" + A, {"a": 1, "b": [1, 2]}, False),
    }
    assert rev not in others and len(others) == 3


def test_revision_path_from_revisions():
    assert revision_path("3-" + C, {"start": 3, "ids": [C, B, A]}) == [
        "3-" + C,
        "2-" + B,
        "1-" + A,
    ]
    assert revision_path("5-" + E, None) == ["5-" + E]
    # _revisions wins over _rev, as in CouchDB.
    assert revision_path("9-zzz", {"start": 2, "ids": [B, A]}) == ["2-" + B, "1-" + A]


@pytest.mark.parametrize(
    "revisions",
    [
        {"start": "2", "ids": [B, A]},
        {"start": 2, "ids": "ab"},
        {"start": 2, "ids": []},
        {"start": 1, "ids": [B, A]},
        {"start": 2, "ids": [B, 7]},
        ["not", "an", "object"],
        {"start": True, "ids": [A]},
    ],
)
def test_revision_path_refuses(revisions):
    with pytest.raises(InvalidRevision):
        revision_path("2-" + B, revisions)


def test_hex_hashes_compare_as_couchdb_binaries():
    # 32-hex hashes are compared as the bytes they encode, others as text.
    assert rev_sort_key("1-" + "f" * 32) > rev_sort_key("1-" + "0" * 32)
    assert rev_sort_key("1-" + "A" * 32) == rev_sort_key("1-" + "a" * 32)
    assert rev_sort_key("2-" + "0" * 32) > rev_sort_key("1-" + "f" * 32)


# -- merging -------------------------------------------------------------------
def test_merge_outcomes():
    tree, outcome = merge_path(RevTree(), ["2-" + B, "1-" + A], False)
    assert outcome is MergeOutcome.NEW_LEAF
    assert tree.parents == {"2-" + B: "1-" + A, "1-" + A: None}
    same, outcome = merge_path(tree, ["2-" + B, "1-" + A], False)
    assert outcome is MergeOutcome.EXISTS and same == tree
    _, outcome = merge_path(tree, ["1-" + A], False)  # an ancestor: known
    assert outcome is MergeOutcome.EXISTS


def test_merge_does_not_change_its_input():
    tree = tree_of(["1-" + A])
    merge_path(tree, ["2-" + B, "1-" + A], False)
    assert tree.parents == {"1-" + A: None}


def test_a_stemmed_root_learns_its_ancestors():
    tree = tree_of(["3-" + C])  # ancestors unknown
    grown, outcome = merge_path(tree, ["3-" + C, "2-" + B, "1-" + A], False)
    assert outcome is MergeOutcome.ANCESTRY
    assert grown.history("3-" + C) == ["3-" + C, "2-" + B, "1-" + A]


def test_merge_refuses_a_broken_path():
    with pytest.raises(InvalidRevision):
        merge_path(RevTree(), ["3-" + C, "1-" + A], False)
    with pytest.raises(InvalidRevision):
        merge_path(RevTree(), [], False)


def test_add_child():
    tree = add_child(RevTree(), None, "1-" + A, False)
    tree = add_child(tree, "1-" + A, "2-" + B, True)
    assert tree.leaves() == ["2-" + B] and tree.is_deleted("2-" + B)
    assert not tree.is_leaf("1-" + A)


# -- the winner and conflicts --------------------------------------------------
def test_highest_generation_wins_then_highest_hash():
    tree = tree_of(["2-" + B, "1-" + A], ["2-" + C, "1-" + A])
    assert tree.winner() == "2-" + C
    assert tree.conflicts() == ["2-" + B]
    tree = tree_of(["2-" + B, "1-" + A], ["2-" + C, "1-" + A], ["3-" + D, "2-" + B])
    assert tree.winner() == "3-" + D
    assert tree.leaves() == ["3-" + D, "2-" + C]


def test_a_live_leaf_beats_a_deleted_one():
    tree = tree_of(
        ["2-" + B, "1-" + A], ["3-" + D, "2-" + C, "1-" + A], deleted=("3-" + D,)
    )
    assert tree.winner() == "2-" + B
    assert tree.conflicts() == []
    assert tree.deleted_conflicts() == ["3-" + D]


def test_all_deleted_the_highest_wins():
    tree = tree_of(["2-" + B, "1-" + A], ["2-" + C, "1-" + A], deleted=("2-" + B, "2-" + C))
    assert tree.winner() == "2-" + C
    assert tree.deleted_conflicts() == ["2-" + B]


hashes = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
branches = st.lists(
    st.tuples(st.integers(2, 5), hashes, st.booleans()),
    min_size=1,
    max_size=6,
    unique_by=lambda b: b[1],
)


@given(branches, st.randoms())
def test_the_winner_does_not_depend_on_arrival_order(branch_specs, random):
    """Branches from one root, merged in two orders, elect the same leaf."""
    paths = []
    for length, leaf_hash, deleted in branch_specs:
        path = [f"{g}-{leaf_hash[:-1]}{g % 10}" for g in range(length, 1, -1)] + ["1-" + A]
        paths.append((path, deleted))
    shuffled = list(paths)
    random.shuffle(shuffled)
    trees = []
    for order in (paths, shuffled):
        tree = RevTree()
        for path, deleted in order:
            tree, _ = merge_path(tree, path, deleted)
        trees.append(tree)
    assert trees[0] == trees[1]
    assert trees[0].winner() == trees[1].winner()
    leaves = trees[0].leaves()
    live = [rev for rev in leaves if not trees[0].is_deleted(rev)]
    expected = max(live or leaves, key=rev_sort_key)
    assert trees[0].winner() == expected


# -- history, revs_info, stemming ----------------------------------------------
def test_revisions_and_revs_info():
    tree = tree_of(
        ["3-" + C, "2-" + B, "1-" + A], ["2-" + D, "1-" + A], deleted=("2-" + D,)
    )
    assert tree.revisions("3-" + C) == {"start": 3, "ids": [C, B, A]}
    assert tree.revs_info("3-" + C) == [
        {"rev": "3-" + C, "status": "available"},
        {"rev": "2-" + B, "status": "missing"},
        {"rev": "1-" + A, "status": "missing"},
    ]
    assert tree.revs_info("2-" + D)[0] == {"rev": "2-" + D, "status": "deleted"}
    assert tree.descendant_leaves("1-" + A) == ["3-" + C, "2-" + D]
    assert tree.descendant_leaves("2-" + B) == ["3-" + C]


def test_stem_keeps_the_last_revisions_of_every_branch():
    line = [f"{g}-{E}" for g in range(6, 0, -1)]
    tree = tree_of(line, ["2-" + F, "1-" + E])
    stemmed = stem(tree, 3)
    assert stemmed.history("6-" + E) == ["6-" + E, "5-" + E, "4-" + E]
    assert stemmed.history("2-" + F) == ["2-" + F, "1-" + E]
    assert "3-" + E not in stemmed
    assert stem(tree, 1000) is tree


def test_json_round_trip():
    tree = tree_of(["2-" + B, "1-" + A], ["2-" + C, "1-" + A], deleted=("2-" + C,))
    assert RevTree.from_json(tree.to_json()) == tree


# -- revs_diff -----------------------------------------------------------------
def test_missing_revs():
    tree = tree_of(["2-" + B, "1-" + A], ["2-" + C, "1-" + A])
    assert missing_revs(tree, ["1-" + A, "2-" + B]) == ([], [])
    missing, ancestors = missing_revs(tree, ["3-" + D, "2-" + B, "1-" + F])
    assert missing == ["1-" + F, "3-" + D]  # sorted, as CouchDB walks them
    assert ancestors == ["2-" + B, "2-" + C]
    assert missing_revs(tree, ["2-" + E]) == (["2-" + E], [])  # no lower leaf
    assert missing_revs(None, ["2-" + B, "1-" + A]) == (["2-" + B, "1-" + A], [])
    with pytest.raises(InvalidRevision):
        missing_revs(tree, ["nope"])


# -- the queries a tree keeps --------------------------------------------------
_HASHES = [c * 32 for c in "0123456789abcdef"]


@st.composite
def _paths(draw) -> list[tuple[list[str], bool]]:
    """Revision paths as replication brings them: a line of generations,
    newest first, each with a tombstone flag."""
    paths = []
    for _ in range(draw(st.integers(1, 12))):
        top = draw(st.integers(1, 8))
        length = draw(st.integers(1, top))
        path = [
            f"{g}-{draw(st.sampled_from(_HASHES[:4]))}"
            for g in range(top, top - length, -1)
        ]
        paths.append((path, draw(st.booleans())))
    return paths


@given(_paths(), st.integers(1, 6))
@example(  # a root that learns its parent was already a leaf (once, not twice)
    [
        ([f"1-{_HASHES[0]}"], False),
        ([f"2-{_HASHES[0]}"], False),
        ([f"2-{_HASHES[0]}", f"1-{_HASHES[0]}"], False),
    ],
    1,
)
def test_kept_leaves_are_those_of_the_tree_as_it_is(paths, limit):
    # Each step asks the tree (so that it keeps its answers), then merges
    # into a copy or stems: the copy's kept answers must be what a tree
    # built fresh from the same revisions answers.
    tree = RevTree()
    for path, deleted in paths:
        tree.leaves()
        tree.is_leaf(path[0])
        tree, _ = merge_path(tree, path, deleted)
        fresh = RevTree(dict(tree.parents), set(tree.deleted))
        assert tree.leaves() == fresh.leaves()
        assert {r: tree.is_leaf(r) for r in tree.parents} == {
            r: fresh.is_leaf(r) for r in fresh.parents
        }
        stemmed = stem(tree, limit)
        fresh = RevTree(dict(stemmed.parents), set(stemmed.deleted))
        assert stemmed.leaves() == fresh.leaves()
        assert stemmed.conflicts() == fresh.conflicts()
