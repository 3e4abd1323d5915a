"""Duplicate ids across shards, found without the driver holding every id.

A shard's reader already refuses an id that repeats one earlier in the same shard (a row
error). Across shards, each finished shard leaves its ids as a sorted array of 64-bit keys in
``_ids/part-NNNNN.npy`` (8 bytes a row, dataset/keys.py). After the run the driver merges them
in passes over ranges of the key space, holding at most ``keys.PASS_BYTES`` of keys at once; a
key seen in two shards is then confirmed against the shards' example_id columns (a hash
collision is not a duplicate).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..dataset import keys
from ..dataset.store import Store

__all__ = ["IDS_DIR", "duplicate_ids", "id_keys", "ids_file", "write_keys"]

IDS_DIR = "_ids"


def id_keys(ids: Iterable[Any]) -> np.ndarray:
    """The sorted uint64 keys of a shard's ids."""
    return keys.sorted_keys(ids)


def ids_file(shard: int) -> str:
    return f"{IDS_DIR}/part-{shard:05d}.npy"


def write_keys(out: Store, shard: int, shard_keys: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, shard_keys, allow_pickle=False)
    out.write_bytes(ids_file(shard), buf.getvalue())


def _load(out: Store, shard: int) -> np.ndarray:
    """A shard's keys: memory-mapped on a local disk, downloaded from an object store."""
    if out.local:
        return np.load(out.dir / ids_file(shard), mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(out.read_bytes(ids_file(shard))), allow_pickle=False)


def duplicate_ids(
    out: Store, shards: list[int], read_ids: Callable[[int], list], limit: int = 5
) -> tuple[int, list[tuple[Any, list[int]]]]:
    """(how many ids appear in more than one shard, up to ``limit`` of them with their shards).

    ``read_ids(shard)`` gives a shard's example_id values, read only to confirm candidates.
    """
    sizes = {k: (out.size(ids_file(k)) or 0) // 8 for k in shards}  # .npy: 8 bytes a key
    candidates = keys.repeated_keys(shards, lambda k: _load(out, k), sizes)
    if not candidates:
        return 0, []
    return keys.confirmed(candidates, read_ids, limit)
