"""The self-check: a few rows of every shard run again alone and unpadded, and every value they
saved compared with what the batched run wrote.

Batching is where interpretability tools go silently wrong (nnsight #672: left padding without
position_ids moved every padded row of GPT-2). A row run alone has no padding and no
neighbours, so it is the reference the batch must reproduce. The rows picked are the shortest
(in a batch of mixed lengths, the most padded) and then rows spread over the rest of the shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from ..dataset.decode import decode
from ..writers.encode import ColumnInfo

__all__ = ["SelfCheck", "SelfCheckError", "keys_of", "pick", "tolerance"]

#: (rtol, atol) per stored dtype: rounding from a different batch shape stays far inside these,
#: a padding bug (position shifted, a pad token attended) lands far outside them
_TOLERANCE = {"float32": (1e-3, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (5e-2, 5e-2)}
_KEY_COLUMNS = ("example_id", "variant", "row", "offset", "position")


class SelfCheckError(RuntimeError):
    """A row's values differ between the batched run and the row run alone."""


def tolerance(dtype: str) -> tuple[float, float]:
    return _TOLERANCE.get(dtype, (0.0, 0.0))  # integers (ids, token counts) must be equal


def pick(lengths: list[int], k: int) -> list[int]:
    """Indices of ``k`` units: the shortest, then units spread evenly over the rest."""
    if k <= 0 or not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    chosen = [order[0]]
    rest = order[1:]
    step = len(rest) / max(1, k - 1)
    chosen += [rest[int(j * step)] for j in range(min(k - 1, len(rest)))]
    return sorted(set(chosen))


def keys_of(table: pa.Table | pa.RecordBatch, position: bool = True) -> list[tuple]:
    """Each row's identity: example id, variant, pair row (and token position) where present."""
    names = _KEY_COLUMNS if position else _KEY_COLUMNS[:-1]
    cols = [table.column(c).to_pylist() for c in names if c in table.schema.names]
    return list(zip(*cols))


@dataclass
class SelfCheck:
    """Holds the reruns of the units picked (``expect``), keeps the batched rows of the same
    units as the shard is written (``keep``), and compares them (``check``)."""

    columns: list[ColumnInfo]
    references: list[tuple[str, pa.RecordBatch]] = field(default_factory=list)
    units: set[tuple] = field(default_factory=set)  # (example_id, variant, row) to keep
    batched: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    max_abs_diff: float = 0.0

    def expect(self, label: str, alone: pa.RecordBatch) -> None:
        """``alone``: the rows of one unit run by themselves; ``label`` names it in messages."""
        self.references.append((label, alone))
        self.units.update(keys_of(alone, position=False))

    def keep(self, record: pa.RecordBatch) -> None:
        """Keep the rows of ``record`` (a batch as written) that belong to the units picked."""
        if self.units:
            hits = [i for i, k in enumerate(keys_of(record, position=False)) if k in self.units]
            if hits:
                self.batched.append(record.take(pa.array(hits, pa.int64())))

    def check(self) -> None:
        """Raise SelfCheckError naming the row, the column and the difference."""
        if not self.references:
            return
        batched = pa.Table.from_batches(self.batched, schema=self.references[0][1].schema)
        where = {key: i for i, key in enumerate(keys_of(batched))}
        for label, alone in self.references:
            keys = keys_of(alone)
            if any(k not in where for k in keys):
                raise SelfCheckError(f"self-check: {label} was not written by the batched run")
            picked = batched.take(pa.array([where[k] for k in keys], pa.int64()))
            for name in alone.schema.names:
                if name not in _KEY_COLUMNS:
                    got = picked.column(name).combine_chunks()
                    self._column(label, name, got, alone.column(name))
            self.rows += len(keys)

    def _column(self, label: str, name: str, batched: pa.Array, alone: pa.Array) -> None:
        info = next((c for c in self.columns if c.name == name), None)
        if info is None:  # identity and input columns (n_tokens, input_ids, generated ids)
            if batched.to_pylist() != alone.to_pylist():
                raise SelfCheckError(
                    f"self-check: {label}, column {name}: {batched.to_pylist()} batched, "
                    f"{alone.to_pylist()} alone"
                )
            return
        if name.endswith("_ids") and not info.dtype.startswith("float"):
            return  # top-k ids may swap on near ties; their _values column is compared
        a = decode(batched, info.dtype, list(info.shape))
        b = decode(alone, info.dtype, list(info.shape))
        pairs = zip(a, b) if isinstance(a, list) else [(a, b)]
        rtol, atol = tolerance(info.dtype)
        for x, y in pairs:
            x, y = x.double(), y.double()
            if x.shape != y.shape:
                raise SelfCheckError(
                    f"self-check: {label}, column {name}: shape {list(x.shape)} batched, "
                    f"{list(y.shape)} alone"
                )
            diff = (x - y).abs()
            worst = float(diff.max()) if diff.numel() else 0.0
            self.max_abs_diff = max(self.max_abs_diff, worst)
            if not bool(torch.all(diff <= atol + rtol * y.abs())):
                raise SelfCheckError(
                    f"self-check: {label}, column {name}: max |batched - alone| = {worst:.3g} "
                    f"(tolerance {atol:g} + {rtol:g}·|value| for {info.dtype}); the batch "
                    "changed this row's values (padding, or its neighbours)"
                )

    def summary(self) -> dict[str, Any]:
        """Samples (units) rerun, the output rows compared, the largest difference found."""
        return {
            "samples": len(self.references),
            "rows": self.rows,
            "max_abs_diff": float(f"{self.max_abs_diff:.3g}"),
        }
