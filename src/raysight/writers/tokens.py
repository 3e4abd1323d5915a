"""Token ids as the strings they stand for (" Paris", not 7042): the sibling column that goes
with every column of vocabulary ids (argmax/topk over logits, input ids, generated ids).

Each token is decoded alone, as HF's ``tokenizer.decode([id])`` gives it (leading space kept,
no clean-up of spaces, special tokens shown): the form TransformerLens' ``to_str_tokens`` and
every logit-lens table use. A byte-level BPE token that is part of a multi-byte character
decodes to U+FFFD on its own; its id beside it stays exact. The vocabulary is decoded once per
tokenizer, and a column is one Arrow ``take`` from that table, not a decode per value.
"""

from __future__ import annotations

import weakref
from math import prod
from typing import Any

import numpy as np
import pyarrow as pa
import torch

__all__ = ["strings_field", "token_strings"]

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _table(tokenizer: Any, width: int) -> pa.Array:
    """Every id below ``width`` decoded; ids the tokenizer lacks (a logit width padded past the
    vocabulary) are empty strings."""
    kept = _TABLES.get(tokenizer)
    if kept is None or len(kept) < width:
        n = len(tokenizer)
        words = tokenizer.batch_decode(
            [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        kept = pa.array(words + [""] * max(0, width - n), pa.large_string())
        _TABLES[tokenizer] = kept
    return kept


def _string_type(shape: tuple) -> pa.DataType:
    """Strings nested as the ids are: a fixed dimension is a fixed-size list, the per-row token
    dimension (None) a large list."""
    typ: pa.DataType = pa.large_string()
    for d in reversed(shape):
        typ = pa.large_list(typ) if d is None else pa.list_(typ, d)
    return typ


def strings_field(name: str, shape: tuple, decodes: str) -> pa.Field:
    """The Arrow field of a strings column for ids of per-row ``shape``."""
    meta = {"raysight.decodes": decodes}
    return pa.field(name, _string_type(shape), nullable=False, metadata=meta)


def token_strings(tokenizer: Any, ids: Any, shape: tuple) -> pa.Array:
    """The strings of ``ids`` (a [rows, ...] tensor, a list of per-row tensors or of per-row
    int lists) as a column of per-row ``shape``; only the first dimension may be None."""
    variable = bool(shape) and shape[0] is None
    if not variable:
        rows = None
        if not torch.is_tensor(ids) and len(ids) and torch.is_tensor(ids[0]):
            ids = torch.stack(list(ids))
        flat = torch.as_tensor(ids, dtype=torch.int64).reshape(-1).numpy()
    else:
        rows = list(ids.unbind(0)) if torch.is_tensor(ids) else ids
        rows = [torch.as_tensor(r, dtype=torch.int64).reshape(-1) for r in rows]
        flat = torch.cat(rows).numpy() if rows else np.zeros(0, np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError(f"token id {int(flat.min())} is negative")
    table = _table(tokenizer, int(flat.max()) + 1 if flat.size else 0)
    values: pa.Array = table.take(pa.array(flat))
    inner = list(shape[1:] if variable else shape)
    for d in reversed(inner):
        values = pa.FixedSizeListArray.from_arrays(values, d)
    if not variable:
        return values
    per_row = prod(inner) if inner else 1
    lengths = np.fromiter((r.numel() // per_row for r in rows), np.int64, len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)
