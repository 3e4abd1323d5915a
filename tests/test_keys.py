"""The bounded-memory merge that finds values in more than one group (duplicate ids across
shards, rows written by two files), against a plain Counter over every value."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from raysight.dataset import keys


def _reference(groups: dict[int, list]) -> dict:
    where = defaultdict(set)
    for g, values in groups.items():
        for v in values:
            where[v].add(g)
    return {v: sorted(gs) for v, gs in where.items() if len(gs) > 1}


@pytest.mark.parametrize("pass_bytes", [keys.PASS_BYTES, 64, 1])  # one pass, several, one a key
def test_repeated_values_match_a_counter(pass_bytes):
    rng = random.Random(0)
    pool = [f"doc-{i}" for i in range(300)] + list(range(-50, 250))
    groups = {g: rng.sample(pool, 60) for g in range(7)}
    groups[3] += groups[3][:5]  # a group's own repeats are not across groups
    arrays = {g: keys.sorted_keys(v) for g, v in groups.items()}
    found = keys.repeated_keys(
        sorted(groups), arrays.__getitem__, {g: len(a) for g, a in arrays.items()}, pass_bytes
    )
    n, some = keys.confirmed(found, groups.__getitem__, limit=10**6)
    want = _reference({g: set(v) for g, v in groups.items()})
    assert n == len(want) and dict(some) == want


def test_a_hash_collision_is_a_candidate_never_a_duplicate(monkeypatch):
    monkeypatch.setattr(keys, "key64", lambda value: 7)
    groups = {0: ["a", "b"], 1: ["c"], 2: ["d", "a"]}
    arrays = {g: keys.sorted_keys(v) for g, v in groups.items()}
    found = keys.repeated_keys([0, 1, 2], arrays.__getitem__, {g: 2 for g in groups})
    assert found == {7: {0, 1, 2}}
    assert keys.confirmed(found, groups.__getitem__, limit=5) == (1, [("a", [0, 2])])


def test_the_extreme_keys_fall_in_a_pass():
    top = np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)
    found = keys.repeated_keys([0, 1], lambda g: top, {0: 3, 1: 3}, pass_bytes=12)
    assert found == {0: {0, 1}, 2**63: {0, 1}, 2**64 - 1: {0, 1}}
