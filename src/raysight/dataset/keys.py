"""Values that occur in more than one of many groups (shards), found in bounded memory.

Each group's values become a sorted array of 64-bit keys (8 bytes a value: an int is its own
key, anything else the first 8 bytes of the BLAKE2b hash of its repr). The arrays are merged in
passes over ranges of the key space, so at most ``PASS_BYTES`` of keys are held at once. A key
in two groups is only a candidate: the caller confirms it on the values themselves, so a hash
collision is never reported. The run uses this for duplicate ids across shards (engine/ids.py),
verify for rows written by more than one shard file.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["PASS_BYTES", "confirmed", "key64", "repeated_keys", "sorted_keys"]

PASS_BYTES = 64 * 2**20
# bytes a key costs at the peak of a pass: its 8 and its group's 4, concatenated (12 more), then
# the sort's 8-byte index and the reordered copy (measured: 6M keys in 2 passes peaked at
# 162 MB with 12 assumed; with this, 6M keys take 3 passes)
_PEAK_BYTES = 32


def key64(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFFFFFFFFFFFFFFFF  # an int64, as its unsigned bits
    text = value if isinstance(value, str) else repr(value)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def sorted_keys(values: Iterable[Any]) -> np.ndarray:
    """The sorted uint64 keys of a group's values (looked up here, so a test can patch key64)."""
    return np.sort(np.fromiter((key64(v) for v in values), dtype=np.uint64))


def repeated_keys(
    groups: list[int],
    load: Callable[[int], np.ndarray],
    sizes: dict[int, int],
    pass_bytes: int | None = None,
) -> dict[int, set[int]]:
    """Every key that occurs in two or more of ``groups``, with the groups it occurs in.

    ``load(g)`` gives group g's sorted keys (memory-mapped where it can be: each pass reads
    only its range); ``sizes[g]`` is how many it has; ``pass_bytes`` (default PASS_BYTES)
    bounds the keys held in one pass. Keys repeated within one group count only where
    another group has them too: a group's own repeats are the caller's to judge.
    """
    total = sum(sizes.get(g, 0) for g in groups)
    per_pass = pass_bytes or PASS_BYTES
    passes = max(1, -(-total * _PEAK_BYTES // per_pass))
    edges = [2**64 * i // passes for i in range(passes + 1)]
    found: dict[int, set[int]] = {}
    for lo, hi in itertools.pairwise(edges):
        keys, owners = [], []
        for g in groups:  # loaded again each pass: only this pass's range is held
            a = load(g)
            i, j = np.searchsorted(a, [np.uint64(lo), np.uint64(min(hi, 2**64 - 1))])
            if hi == 2**64:
                j = len(a)
            part = np.unique(np.asarray(a[i:j]))  # a group's own repeats are not evidence
            keys.append(part)
            owners.append(np.full(len(part), g, dtype=np.int32))
        if not keys:
            continue
        key, owner = np.concatenate(keys), np.concatenate(owners)
        del keys, owners, part
        order = np.argsort(key, kind="stable")
        key = key[order]
        owner = owner[order]
        del order
        for s in np.flatnonzero(key[1:] == key[:-1]):
            found.setdefault(int(key[s]), set()).update((int(owner[s]), int(owner[s + 1])))
    return found


def confirmed(
    candidates: dict[int, set[int]], read: Callable[[int], Iterable[Any]], limit: int
) -> tuple[int, list[tuple[Any, list[int]]]]:
    """The candidate keys that are the same value in different groups (not a hash
    collision): (how many, up to ``limit`` of them with their groups)."""
    where: dict[Any, set[int]] = {}
    for g in sorted({s for gs in candidates.values() for s in gs}):
        for value in set(read(g)):
            if key64(value) in candidates:
                where.setdefault(value, set()).add(g)
    dup = sorted(((v, sorted(gs)) for v, gs in where.items() if len(gs) > 1), key=str)
    return len(dup), dup[:limit]
