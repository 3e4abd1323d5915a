"""Arrow columns back to torch tensors: typed tensor columns, raw bytes (always for bfloat16),
and per-row token dimensions as lists of tensors, without a copy per row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ..writers.encode import _NP, _TORCH

__all__ = ["decode", "fixed_view"]


def _from_numpy(flat: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "bfloat16":
        return torch.from_numpy(flat.view(np.int16).copy()).view(torch.bfloat16)
    # Arrow buffers are read-only; torch wants writable memory, so take a private copy.
    return torch.from_numpy(np.array(flat, dtype=_NP[_TORCH[dtype]], copy=True))


def decode(arr: pa.Array, dtype: str, shape: list[int | None]) -> torch.Tensor | list:
    n = len(arr)
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if None in shape[1:]:
        return _decode_flat_rows(arr, dtype, shape)
    variable = bool(shape) and shape[0] is None
    rest = [int(d) for d in (shape[1:] if variable else shape)]
    width = int(np.prod(rest)) if rest else 1
    if pa.types.is_fixed_size_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return _decode_bytes(arr, dtype, rest, width, variable)
    if variable:
        offsets = arr.offsets.to_numpy()
        offsets = offsets - offsets[0]  # a slice's offsets start mid-buffer; flatten() does not
        flat = arr.flatten()
        flat = flat.flatten() if rest else flat
        values = _from_numpy(flat.to_numpy(zero_copy_only=False), dtype)
        return [
            values[offsets[i] * width : offsets[i + 1] * width].reshape(-1, *rest) for i in range(n)
        ]
    return _from_numpy(fixed_view(arr, dtype, rest), dtype).reshape(n, *rest)


def fixed_view(arr: pa.Array, dtype: str, rest: list[int]) -> np.ndarray:
    """The values of a fixed-shape tensor column as one flat, read-only numpy view of the Arrow
    buffers (no copy where the storage allows; bfloat16 as its uint16 bits)."""
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    n, width = len(arr), int(np.prod(rest)) if rest else 1
    if pa.types.is_fixed_size_binary(arr.type):
        item = _TORCH[dtype].itemsize
        start = arr.offset * width * item
        buf = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[start : start + n * width * item]
        return buf.view(np.uint16 if dtype == "bfloat16" else _NP[_TORCH[dtype]])
    while pa.types.is_fixed_size_list(arr.type):  # one level per dimension (one level before)
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False)


def _decode_bytes(
    arr: pa.Array, dtype: str, rest: list[int], width: int, variable: bool
) -> torch.Tensor | list:
    """Tensors stored as one binary value per row: read the data buffer once, no per-row copy."""
    n = len(arr)
    item = _TORCH[dtype].itemsize
    raw = np.uint16 if dtype == "bfloat16" else _NP[_TORCH[dtype]]
    if not variable:
        return _from_numpy(fixed_view(arr, dtype, rest), dtype).reshape(n, *rest)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    values = _from_numpy(data.view(raw), dtype)
    ends = (offsets - offsets[0]) // item
    return [values[ends[i] : ends[i + 1]].reshape(-1, *rest) for i in range(n)]


def _decode_flat_rows(arr: pa.Array, dtype: str, shape: list[int | None]) -> list:
    """Rows stored flat (tokens in a dimension after the first): every None in ``shape`` is the
    row's token count, the one number that makes the row's length come out."""
    n = len(arr)
    raw = np.uint16 if dtype == "bfloat16" else _NP[_TORCH[dtype]]
    if pa.types.is_large_binary(arr.type):
        item = _TORCH[dtype].itemsize
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        values, ends = _from_numpy(data.view(raw), dtype), (offsets - offsets[0]) // item
    else:
        offsets = arr.offsets.to_numpy()
        ends = offsets - offsets[0]
        values = _from_numpy(arr.flatten().to_numpy(zero_copy_only=False), dtype)
    known = int(np.prod([d for d in shape if d is not None])) if shape else 1
    k = sum(d is None for d in shape)
    out = []
    for i in range(n):
        row = values[ends[i] : ends[i + 1]]
        tokens = round((row.numel() / known) ** (1 / k)) if known else 0
        out.append(row.reshape([tokens if d is None else d for d in shape]))
    return out
