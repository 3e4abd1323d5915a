"""Plan a run without loading weights: resolve every site on the meta-device model, infer each
column's per-row shape and dtype by running the interleaver itself on meta tensors at two
sequence lengths (engine/columns.py), and build the Arrow schema.
"""

from __future__ import annotations

import copy
import json
import weakref
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..interleave.resolve import HookPlan, ModuleTree, PlanError, trace_tree
from ..interleave.variants import resolve
from ..models.loading import LoadedModel, load_model
from ..spec.generate import step_range
from ..spec.models import Spec
from ..spec.reduce import strings_name
from ..spec.sweep import axis_values
from ..writers.encode import ColumnInfo, arrow_field
from ..writers.tokens import strings_field
from .columns import infer_columns, min_tokens

__all__ = ["RunPlan", "identity_fields", "make_plan", "min_tokens"]


@dataclass
class RunPlan:
    spec: Spec
    hooks: HookPlan
    tree: ModuleTree
    columns: list[ColumnInfo]
    schema: pa.Schema
    model_kind: str
    architecture: str | None
    max_length: int = 0  # data.max_length, lowered to the positions the model has
    source: Any = None  # the input's files and row counts (data.sources.Source); None: inline

    def row_bytes(self, tokens: float) -> float:
        """Bytes of saved values that one input sequence of ``tokens`` tokens produces (at most,
        for saves stacked over generation steps: every selected step made)."""
        if self.spec.output.layout == "per_token":  # one sequence makes `tokens` rows
            return tokens * sum(c.row_bytes(1) for c in self.columns)
        steps = self.stacked_steps()
        return sum(c.row_bytes(steps.get(c.name, tokens)) for c in self.columns)

    def stacked_steps(self) -> dict[str, int]:
        """Columns stacked over generation steps -> the most steps they hold."""
        gen = self.spec.generate
        if gen is None:
            return {}
        out = {}
        for s in self.hooks.saves:
            steps = step_range(s.steps, gen.max_new_tokens)
            if list(steps) != [0]:
                for c in (s.column, f"{s.column}_ids", f"{s.column}_values"):
                    out[c] = len(steps)
        return out


def identity_fields(
    spec: Spec, kind: str, id_type: pa.DataType, keep_types: dict[str, pa.DataType] | None = None
) -> list[pa.Field]:
    fields = [pa.field("example_id", id_type, nullable=False)]
    for name in spec.data.keep:  # the input's own columns, right after its id
        if keep_types is None or name not in keep_types:
            raise PlanError([f"data.keep: no type for column {name!r} (plan with the input)"])
        fields.append(pa.field(name, keep_types[name], nullable=True))
    if spec.data.chunk:
        fields.append(pa.field("offset", pa.int32(), nullable=False))
    if spec.sweep:
        fields.append(pa.field("variant", pa.int32(), nullable=False))
        for axis, values in spec.sweep.items():
            fields.append(pa.field(axis, _axis_type(axis_values(values)), nullable=False))
    if spec.data.pair:
        fields.append(pa.field("row", pa.string(), nullable=False))
    decode = spec.output.decode_tokens and kind != "tensor"
    if spec.output.layout == "per_token":
        fields += [
            pa.field("position", pa.int32(), nullable=False),
            pa.field("token_id", pa.int32(), nullable=False),
        ]
        if decode:
            fields.append(strings_field("token", (), "token_id"))
    elif kind != "tensor":
        fields += [
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("input_ids", pa.large_list(pa.int32()), nullable=False),
        ]
        if decode:
            fields.append(strings_field("input_tokens", (None,), "input_ids"))
    if spec.output.include_text and kind != "tensor":
        # per_token: the text is on each sequence's first row only (null on the rest)
        per_token = spec.output.layout == "per_token"
        fields.append(pa.field("text", pa.large_string(), nullable=per_token))
    if spec.generate is not None:
        fields += [
            pa.field("n_generated", pa.int32(), nullable=False),
            pa.field("generated_ids", pa.large_list(pa.int32()), nullable=False),
        ]
        if decode:
            fields.append(strings_field("generated_tokens", (None,), "generated_ids"))
        fields.append(pa.field("generated_text", pa.large_string(), nullable=False))
    return fields


def value_fields(spec: Spec, cols: list[ColumnInfo]) -> list[pa.Field]:
    """The saved columns' fields, each column of vocabulary ids followed by its strings."""
    out = []
    for c in cols:
        out.append(arrow_field(c))
        if c.vocab and spec.output.decode_tokens:
            out.append(strings_field(strings_name(c.name), c.shape, c.name))
    return out


def _axis_type(values: list) -> pa.DataType:
    if all(isinstance(v, int) for v in values):
        return pa.int64()
    if all(isinstance(v, (int, float)) for v in values):
        return pa.float64()
    return pa.string()


def make_plan(
    spec: Spec,
    sample: Any = None,
    id_type: pa.DataType | None = None,
    loaded: LoadedModel | None = None,
    source: Any = None,
    keep_types: dict[str, pa.DataType] | None = None,
) -> RunPlan:
    """Resolve and shape-check ``spec`` on the meta-device model; raises PlanError."""
    meta = loaded or load_model(spec.model, meta=True)
    if meta.kind == "tensor" and sample is None:
        raise PlanError(["model.factory models take tensors: set data.input_field"])
    if meta.kind != "tensor" and spec.data.input_field:
        raise PlanError(["data.input_field is for model.factory models; this model takes text"])
    try:
        tree = _tree(meta, sample)
    except Exception as e:
        raise PlanError([f"model: a forward pass on the meta device failed ({e})"]) from None
    hooks = resolve(spec, meta, tree)
    max_length = _max_length(spec, meta)
    need = min_tokens(spec)
    if meta.kind != "tensor" and need > max_length:
        raise PlanError(
            [
                f"ops: the positions need rows of at least {need} tokens, but rows are cut to "
                f"{max_length} (data.max_length or data.chunk.size, or the model's positions)"
            ]
        )
    cols = _columns(spec, meta, hooks, sample, max_length)
    fields = identity_fields(spec, meta.kind, id_type or pa.int64(), keep_types)
    schema = pa.schema([*fields, *value_fields(spec, cols)])
    arch = meta.names.architecture
    return RunPlan(spec, hooks, tree, cols, schema, meta.kind, arch, max_length, source)


# A text model's tree depends on the model alone: a session (engine/session.py), which keeps
# the meta model between runs, traces it once. A tensor model's depends on its sample input.
_TREES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tree(meta: LoadedModel, sample: Any) -> Any:
    if sample is not None:
        return trace_tree(meta, sample)
    if meta.module not in _TREES:
        _TREES[meta.module] = trace_tree(meta, sample)
    return _TREES[meta.module]


_COLUMNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _columns(
    spec: Spec, meta: LoadedModel, hooks: HookPlan, sample: Any, max_length: int
) -> list[ColumnInfo]:
    """The columns, kept per meta model (so by a session) for a spec that differs only in its
    rows or output path: the shapes come from synthetic rows, never from the input's. A spec
    whose ops read files is planned again each time (a file may have changed shape)."""
    data = spec.model_dump(mode="json", by_alias=True)
    data["output"].pop("path", None)
    for key in ("prompts", "source", "limit"):
        data["data"].pop(key, None)
    key = json.dumps([data, max_length], sort_keys=True, default=str)
    if sample is not None or '"file":' in key:
        cols, dims = infer_columns(spec, meta, hooks, sample, max_length)
    else:
        kept = _COLUMNS.setdefault(meta.module, {})
        if key not in kept:
            kept[key] = infer_columns(spec, meta, hooks, sample, max_length)
        cols, dims = copy.deepcopy(kept[key])
    for s in hooks.saves:
        s.token_dims = dims.get(s.column)
    return cols


def _max_length(spec: Spec, meta: LoadedModel) -> int:
    """Tokens a row keeps: data.max_length (or data.chunk.size), but never more than the model
    has positions for (a longer row would index past its position table). Asking for more,
    explicitly, is an error; the default is lowered to fit."""
    config = getattr(meta.module, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    chunk = spec.data.chunk
    if chunk is not None:
        if isinstance(limit, int) and 0 < limit < chunk.size:
            raise PlanError(
                [f"data.chunk.size: {chunk.size} tokens, but the model has {limit} positions"]
            )
        if chunk.bos and meta.tokenizer is not None and meta.tokenizer.bos_token_id is None:
            raise PlanError(["data.chunk.bos: the tokenizer has no BOS token; set bos: false"])
        return chunk.size
    asked = spec.data.max_length
    if not isinstance(limit, int) or limit <= 0 or asked <= limit:
        return asked
    if "max_length" in spec.data.model_fields_set:
        raise PlanError([f"data.max_length: {asked} tokens, but the model has {limit} positions"])
    return limit
