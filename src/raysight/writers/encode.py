"""Tensors to Arrow arrays with types fixed by the plan, so every file of a run shares a schema.

- fixed per-row shape  -> nested ``fixed_size_list``, one level per dimension (scalars: a plain
                          column): HF datasets (``List(length=)``), polars (``Array``) and
                          duckdb (``FLOAT[n]``) read it as it is; none of them knows Arrow's
                          ``fixed_shape_tensor`` extension, which datasets written before used
- variable first dim   -> ``large_list<fixed_size_list<T, rest>>`` (``large_list<T>`` for 1-d)
- tokens in other dims -> ``large_list<T>``, each row's values flat in C order (attention
                          weights, ``[heads, tokens, tokens]``): every ``null`` in
                          ``raysight.shape`` is the row's token count, solved from its length
- bytes storage        -> ``fixed_size_binary`` / ``large_binary``: one value per row holding
                          the tensor's raw bytes (C order), bit-exact

Arrow has no bfloat16 type and Parquet would widen uint16 to INT32, so bfloat16 is always stored
as bytes. Other dtypes are stored as bytes when ``output.tensor_storage: bytes`` asks: Parquet
encodes a float16 list element by element (~140 MB/s here) but a binary value per row at disk
speed (FACTS: 740-950 MB/s). Every tensor column's metadata records ``raysight.dtype``,
``raysight.shape`` (``null`` for the per-row token dimension) and ``raysight.storage``, so
:func:`raysight.open` (or ``numpy.frombuffer``) turns bytes back into tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import pyarrow as pa
import torch

__all__ = ["ColumnInfo", "arrow_field", "encode_column"]

_NP = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
_TORCH = {str(k).removeprefix("torch."): k for k in [*_NP, torch.bfloat16]}


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    dtype: str  # torch dtype name without "torch.", e.g. "float32", "bfloat16"
    shape: tuple[int | None, ...]  # per row; None = the row's token count
    site: str = ""
    storage: str = "typed"  # "typed" or "bytes"; bfloat16 is always "bytes"
    vocab: bool = False  # token ids of the model's vocabulary (a strings column goes with it)

    @property
    def as_bytes(self) -> bool:
        return self.storage == "bytes" or self.dtype == "bfloat16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH[self.dtype]

    @property
    def variable(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    @property
    def ragged(self) -> bool:
        """The row's token count in a dimension after the first (each row stored flat)."""
        return None in self.shape[1:]

    def row_bytes(self, tokens: float) -> float:
        n = prod(tokens if d is None else d for d in self.shape)
        return n * self.torch_dtype.itemsize


def _value_type(dtype: str) -> pa.DataType:
    return pa.from_numpy_dtype(_NP[_TORCH[dtype]])


def arrow_field(col: ColumnInfo) -> pa.Field:
    meta = {
        "raysight.dtype": col.dtype,
        "raysight.shape": json.dumps(list(col.shape)),
        "raysight.site": col.site,
        "raysight.storage": "bytes" if col.as_bytes else "typed",
    }
    if col.ragged:
        typ0 = pa.large_binary() if col.as_bytes else pa.large_list(_value_type(col.dtype))
        return pa.field(col.name, typ0, nullable=False, metadata=meta)
    rest = col.shape[1:] if col.variable else col.shape
    n = prod(rest) if rest else 1
    if col.as_bytes:
        size = col.torch_dtype.itemsize
        typ: pa.DataType = pa.large_binary() if col.variable else pa.binary(size * n)
    elif col.variable:
        inner = _value_type(col.dtype)
        typ = pa.large_list(pa.list_(inner, n) if rest else inner)
    else:
        typ = _value_type(col.dtype)
        for d in reversed(col.shape):
            typ = pa.list_(typ, d)
    return pa.field(col.name, typ, nullable=False, metadata=meta)


def _flat_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    return t.numpy().reshape(-1)


def encode_column(col: ColumnInfo, data: Any) -> pa.Array:
    """Encode one column of a batch: a [rows, ...] tensor or a list of per-row tensors."""
    field = arrow_field(col)
    if col.ragged:
        return _encode_flat_rows(col, list(data) if not torch.is_tensor(data) else data.unbind(0))
    if col.variable:
        rows = list(data) if not torch.is_tensor(data) else list(data.unbind(0))
        lengths = np.fromiter((r.shape[0] for r in rows), dtype=np.int64, count=len(rows))
        rest = prod(col.shape[1:]) if col.shape[1:] else 1
        flat = _flat_numpy(
            torch.cat([r.reshape(r.shape[0], rest) for r in rows])  # a row may have 0 entries
            if rows
            else torch.empty(0, dtype=col.torch_dtype)
        )
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if col.as_bytes:
            size = rest * col.torch_dtype.itemsize
            return pa.LargeBinaryArray.from_buffers(
                pa.large_binary(),
                len(rows),
                [None, pa.py_buffer(offsets * size), pa.py_buffer(flat)],
            )
        values = pa.array(flat)
        if col.shape[1:]:
            values = pa.FixedSizeListArray.from_arrays(values, rest)
        return pa.LargeListArray.from_arrays(pa.array(offsets), values)
    batch = data if torch.is_tensor(data) else torch.stack(list(data))
    n = len(batch)
    flat = _flat_numpy(batch)
    if col.as_bytes:
        if not field.type.byte_width:
            return pa.array([], field.type)
        return pa.FixedSizeBinaryArray.from_buffers(field.type, n, [None, pa.py_buffer(flat)])
    values = pa.array(flat)
    for d in reversed(col.shape):
        values = pa.FixedSizeListArray.from_arrays(values, d)
    return values


def _encode_flat_rows(col: ColumnInfo, rows: Any) -> pa.Array:
    """One flat list (or binary value) per row, whatever its shape."""
    rows = list(rows)
    lengths = np.fromiter((r.numel() for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = _flat_numpy(
        torch.cat([r.reshape(-1) for r in rows]) if rows else torch.empty(0, dtype=col.torch_dtype)
    )
    if col.as_bytes:
        size = col.torch_dtype.itemsize
        return pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(rows), [None, pa.py_buffer(offsets * size), pa.py_buffer(flat)]
        )
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))
