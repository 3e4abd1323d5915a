"""A batch's output rows, in the plan's schema: identity columns (per_token: repeated on each
real token), data.keep columns, the saved values, and each column of token ids decoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..data.batching import Batch
from ..spec.models import Spec
from ..spec.reduce import strings_name
from ..writers.encode import encode_column
from ..writers.tokens import token_strings
from .plan import RunPlan

__all__ = ["ShardError", "record_batch", "special_ids"]


class ShardError(RuntimeError):
    """A shard that failed as a whole (every row raised inside the model, or a data.keep
    value does not fit its column's type)."""


def special_ids(tokenizer: Any) -> np.ndarray:
    """The tokenizer's special token ids (computed once per worker, not per batch)."""
    return np.array(sorted(tokenizer.all_special_ids), dtype=np.int64)


def record_batch(
    spec: Spec,
    plan: RunPlan,
    tokenizer: Any,
    kind: str,
    rows: dict,
    batch: Batch,
    values: dict,
    special: np.ndarray | None = None,
) -> pa.RecordBatch:
    """One batch's output rows: the identity columns, the kept input columns, the saved values
    and the decoded tokens, in the plan's schema (per_token: a row per real token, less the
    ``special`` ids' rows under ``output.special_tokens: drop``)."""
    cols: dict[str, Any] = {}
    kept = None  # per_token: which token rows are written
    ids = batch.example_ids
    cols["variant"] = batch.variants
    for name in spec.data.keep:  # the input row's own value (the same for its windows)
        cols[name] = [rows[eid].fields[name] for eid in ids]
    for axis in spec.sweep or {}:
        cols[axis] = [spec.variants[v].values[axis] for v in batch.variants]
        if pa.types.is_string(plan.schema.field(axis).type):
            cols[axis] = [str(x) for x in cols[axis]]
    if spec.data.pair:
        cols["row"] = [spec.data.pair.fields[m] for m in batch.members]
    if spec.data.chunk:
        cols["offset"] = batch.offsets
    if spec.output.layout == "per_token":
        for name in ["offset", "variant", "row", *(spec.sweep or {}), *spec.data.keep]:
            if name in cols:
                cols[name] = [x for x, n in zip(cols[name], batch.lengths) for _ in range(n)]
        cols["example_id"] = [eid for eid, n in zip(ids, batch.lengths) for _ in range(n)]
        cols["position"] = [p for n in batch.lengths for p in range(n)]
        cols["token_id"] = [t for toks in batch.token_ids or [] for t in toks]
        if spec.output.special_tokens == "drop":
            kept = ~np.isin(np.asarray(cols["token_id"], dtype=np.int64), special)
        if spec.output.include_text:
            cols["text"] = _first_row_text(batch, kept)
    else:
        cols["example_id"] = ids
        if kind != "tensor":
            cols["n_tokens"] = batch.lengths
            cols["input_ids"] = batch.token_ids
            if spec.output.include_text:
                cols["text"] = batch.texts
        if spec.generate is not None:
            new = [t.tolist() for t in values["generated_ids"]]
            cols["n_generated"] = [len(t) for t in new]
            cols["generated_ids"] = new
            cols["generated_text"] = tokenizer.batch_decode(new)
    schema = plan.schema
    arrays = {}
    for f in schema:
        if f.name in cols:
            try:
                arrays[f.name] = pa.array(cols[f.name], type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                if f.name not in spec.data.keep:
                    raise
                raise ShardError(
                    f"data.keep: column {f.name!r} has a value that is not {f.type} (the "
                    f"type its first rows gave): {e}"
                ) from None
    for col in plan.columns:
        data = values[col.name]
        if col.variable and not col.ragged and not torch.is_tensor(data):  # no steps (stopped)
            empty = torch.empty((0, *col.shape[1:]), dtype=col.torch_dtype)
            data = [r if r.numel() else empty for r in data]
        if spec.output.layout == "per_token":
            data = torch.cat(list(data)) if not torch.is_tensor(data) else data.flatten(0, 1)
        arrays[col.name] = encode_column(col, data)
        if col.vocab and spec.output.decode_tokens:
            name = strings_name(col.name)
            arrays[name] = token_strings(tokenizer, data, col.shape)
    for f in schema:  # the identity ids' strings
        decodes = (f.metadata or {}).get(b"raysight.decodes", b"").decode()
        if f.name not in arrays and decodes in cols:
            shape = () if decodes == "token_id" else (None,)
            arrays[f.name] = token_strings(tokenizer, cols[decodes], shape)
    record = pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)
    if kept is not None:  # per_token: only the text tokens' rows
        record = record.filter(pa.array(kept))
    return record


def _first_row_text(batch: Batch, kept: np.ndarray | None) -> list[str | None]:
    """per_token `text`: each sequence's text on its first written row and null on the rest,
    so a 512-token prompt is stored once, not 512 times (join on example_id for the rest)."""
    seq = np.repeat(np.arange(len(batch.lengths)), batch.lengths)
    at = np.flatnonzero(kept) if kept is not None else np.arange(len(seq))  # written rows
    first = np.zeros(len(seq), dtype=bool)
    if len(at):
        live = seq[at]  # each written row's sequence: a new one starts where it changes
        first[at[np.r_[True, live[1:] != live[:-1]]]] = True
    return [batch.texts[s] if f else None for s, f in zip(seq.tolist(), first.tolist())]
