"""Values from an earlier raysight run's dataset (``{dataset, column, reduce: mean}`` or
``join: example_id``): nnsight's sessions, as data.

The driver checks each such dataset once before the run (:func:`check_earlier_runs`: it must
verify complete, and its spec hash and manifest checksum go into this run's fingerprint, so a
resume notices a rewritten source). A worker reads a column once and keeps it, keyed by the
manifest's checksum: a mean is computed batch by batch; a join holds the column by example_id.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from typing import Any

import torch

from ..dataset.manifest import MANIFEST_FILE
from ..dataset.reader import Dataset, open_dataset
from ..dataset.store import Store
from ..dataset.verify import verify
from ..errors import RaysightError
from ..spec.values import DatasetValue, dataset_values

__all__ = ["EarlierRunError", "check_earlier_runs", "dataset_value"]


class EarlierRunError(RaysightError, ValueError):
    """An earlier run's dataset that cannot be used: incomplete, or without the column."""


def check_earlier_runs(ops: list[Any]) -> dict[str, dict[str, Any]]:
    """Each earlier dataset the ops read, verified complete, with the column they name: path ->
    its spec hash and manifest checksum (for the fingerprint). Raises EarlierRunError listing
    every problem."""
    problems, seen = [], {}
    for v in dataset_values(ops):
        if v.dataset not in seen:
            found = verify(v.dataset)
            if found:
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                problems.append(
                    f"dataset {v.dataset!r} is not complete: {found[0]}{more}; finish it "
                    "(rerun its spec) or check it with raysight verify"
                )
                seen[v.dataset] = None
                continue
            ds = _open(v.dataset)
            stamp = _stamp(v.dataset, fresh=True)  # the run's fingerprint: never a kept one
            seen[v.dataset] = {"spec_hash": ds.manifest.spec_hash, "manifest": stamp}
        if seen[v.dataset] is None:
            continue
        problem = _column_problem(v)
        if problem:
            problems.append(problem)
    if problems:
        raise EarlierRunError("; ".join(problems))
    return {k: s for k, s in seen.items() if s is not None}


def _column_problem(v: DatasetValue) -> str | None:
    ds = _open(v.dataset)
    info = {c["name"]: c for c in ds.manifest.columns}
    if v.column not in info:
        return f"dataset {v.dataset!r} has no column {v.column!r} (it has: {', '.join(info)})"
    shape = info[v.column]["shape"]
    if None in shape[1:]:
        return f"dataset {v.dataset!r}: column {v.column!r} holds tokens in several dimensions"
    if v.join and ds.manifest.layout == "per_token":
        return (
            f"dataset {v.dataset!r} has one row per token; join: example_id needs one row per "
            "example (output.layout per_sequence)"
        )
    return None


def _open(path: str) -> Dataset:
    try:
        return open_dataset(path)
    except (OSError, ValueError) as e:  # no such directory, not a raysight dataset
        raise EarlierRunError(f"dataset {path!r} cannot be read: {e}") from None


#: path -> (manifest checksum, when it was read): a value is read per row, the manifest at most
#: once per STAMP_SECONDS (a session's next run sees a rewritten dataset)
_STAMPS: dict[str, tuple[str, float]] = {}
STAMP_SECONDS = 2.0


def _stamp(path: str, fresh: bool = False) -> str:
    """The manifest's checksum: what a cached column is keyed by (``fresh``: read it now)."""
    now = time.monotonic()
    kept = _STAMPS.get(path)
    if fresh or kept is None or now - kept[1] > STAMP_SECONDS:
        kept = (hashlib.sha256(Store(path).read_bytes(MANIFEST_FILE)).hexdigest(), now)
        _STAMPS[path] = kept
    return kept[0]


def dataset_value(v: DatasetValue, like: torch.Tensor, example_id: Any) -> torch.Tensor:
    """The value for one row whose target is ``like``; on the meta device, one of the right
    shape (from the manifest: nothing is read)."""
    if like.device.type == "meta":
        return _meta_value(v, like)
    stamp = _stamp(v.dataset)
    if v.reduce == "mean":
        value = _mean(v.dataset, v.column, stamp)
    else:
        rows = _rows(v.dataset, v.column, stamp)
        if example_id not in rows:
            raise EarlierRunError(
                f"dataset {v.dataset!r} has no row with example_id {example_id!r} to join"
            )
        value = rows[example_id]
    return value.to(dtype=like.dtype, device=like.device)


def _meta_value(v: DatasetValue, like: torch.Tensor) -> torch.Tensor:
    problem = _column_problem(v)
    if problem:
        raise EarlierRunError(problem)
    info = {c["name"]: c for c in _open(v.dataset).manifest.columns}[v.column]
    shape = info["shape"]
    if v.reduce == "mean":  # over rows, and over the token dimension where there is one
        shape = shape[1:] if shape and shape[0] is None else shape
    elif shape and shape[0] is None:  # this row's tokens: as many as the target has
        shape = [like.shape[0] if like.dim() else 1, *shape[1:]]
    return torch.empty(shape, dtype=like.dtype, device="meta")


@lru_cache(maxsize=8)
def _mean(path: str, column: str, stamp: str) -> torch.Tensor:
    total, count = None, 0
    for batch in _open(path).iter_torch([column], batch_rows=1024):
        data = batch[column]
        flat = torch.cat(list(data)) if isinstance(data, list) else data  # tokens: rows of rows
        part = flat.double().sum(0)
        total = part if total is None else total + part
        count += flat.shape[0]
    if not count:
        raise EarlierRunError(f"dataset {path!r}: column {column!r} has no values to average")
    return (total / count).float()


@lru_cache(maxsize=2)
def _rows(path: str, column: str, stamp: str) -> dict[Any, torch.Tensor]:
    ds = _open(path)
    ids = ds.table(["example_id"]).column("example_id").to_pylist()
    values = ds.to_torch(column)
    return dict(zip(ids, values))
