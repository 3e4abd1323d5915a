"""Duplicate ids across shards, found without the driver holding every id.

A shard's reader already refuses an id that repeats one earlier in the same shard (a row
error). Across shards, each finished shard leaves its ids as a sorted array of 64-bit keys in
``_ids/part-NNNNN.npy`` (8 bytes a row: an int id is its own key, a string id the first 8 bytes
of its BLAKE2b hash). After the run the driver merges them in passes over ranges of the key
space, so it holds at most ``PASS_BYTES`` of keys at once; a key seen in two shards is then
confirmed against the shards' example_id columns (a hash collision is not a duplicate).
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..dataset.store import Store

__all__ = [
    "IDS_DIR",
    "PASS_BYTES",
    "duplicate_ids",
    "id_keys",
    "ids_file",
    "write_keys",
]

IDS_DIR = "_ids"
PASS_BYTES = 64 * 2**20


def _key(eid: Any) -> int:
    if isinstance(eid, str):
        return int.from_bytes(hashlib.blake2b(eid.encode(), digest_size=8).digest(), "little")
    return eid & 0xFFFFFFFFFFFFFFFF  # an int64 id, as its unsigned bits


def id_keys(ids: Iterable[Any]) -> np.ndarray:
    """The sorted uint64 keys of a shard's ids."""
    return np.sort(np.fromiter((_key(i) for i in ids), dtype=np.uint64))


def ids_file(shard: int) -> str:
    return f"{IDS_DIR}/part-{shard:05d}.npy"


def write_keys(out: Store, shard: int, keys: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, keys, allow_pickle=False)
    out.write_bytes(ids_file(shard), buf.getvalue())


def _load(out: Store, shard: int) -> np.ndarray:
    """A shard's keys: memory-mapped on a local disk, downloaded from an object store."""
    if out.local:
        return np.load(out.dir / ids_file(shard), mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(out.read_bytes(ids_file(shard))), allow_pickle=False)


def duplicate_ids(
    out: Store, shards: list[int], read_ids: Any, limit: int = 5
) -> tuple[int, list[tuple[Any, list[int]]]]:
    """(how many ids appear in more than one shard, up to ``limit`` of them with their shards).

    ``read_ids(shard)`` gives a shard's example_id values, read only to confirm candidates.
    """
    total = sum((out.size(ids_file(k)) or 0) // 8 for k in shards)  # .npy: 8 bytes a key
    passes = max(1, -(-total * 12 // PASS_BYTES))  # 8 bytes of key + 4 of shard per row
    edges = [2**64 * i // passes for i in range(passes + 1)]
    candidates: dict[int, set[int]] = {}
    for lo, hi in itertools.pairwise(edges):
        keys, owners = [], []
        for k in shards:  # loaded again each pass: only this pass's range is held
            a = _load(out, k)
            i, j = np.searchsorted(a, [np.uint64(lo), np.uint64(min(hi, 2**64 - 1))])
            if hi == 2**64:
                j = len(a)
            keys.append(np.asarray(a[i:j]))
            owners.append(np.full(j - i, k, dtype=np.int32))
        if not keys:
            continue
        key, owner = np.concatenate(keys), np.concatenate(owners)
        order = np.argsort(key, kind="stable")
        key, owner = key[order], owner[order]
        same = np.flatnonzero(key[1:] == key[:-1])
        for s in same:
            candidates.setdefault(int(key[s]), set()).update((int(owner[s]), int(owner[s + 1])))
    if not candidates:
        return 0, []
    return _confirmed(candidates, read_ids, limit)


def _confirmed(
    candidates: dict[int, set[int]], read_ids: Any, limit: int
) -> tuple[int, list[tuple[Any, list[int]]]]:
    """The candidate keys that are the same id in different shards (not a hash collision)."""
    where: dict[Any, set[int]] = {}
    for k in sorted({s for ks in candidates.values() for s in ks}):
        for eid in set(read_ids(k)):
            if _key(eid) in candidates:
                where.setdefault(eid, set()).add(k)
    dup = sorted(((eid, sorted(ks)) for eid, ks in where.items() if len(ks) > 1), key=str)
    return len(dup), dup[:limit]
