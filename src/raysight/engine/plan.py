"""Plan a run without loading weights: resolve every site on the meta-device model, infer each
column's per-row shape and dtype by running the interleaver itself on meta tensors at two
sequence lengths (a dimension that changes is the token dimension), and build the Arrow schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from ..data.batching import Batch
from ..interleave.interleaver import Interleaver, OpError
from ..interleave.resolve import (
    HookPlan,
    ModuleTree,
    PlanError,
    resolve,
    sample_inputs,
    trace_tree,
)
from ..interleave.selectors import SelectError
from ..models.loading import LoadedModel, load_model, meta_safe
from ..spec.backward import CrossEntropyLoss, loss_fields
from ..spec.generate import step_range
from ..spec.models import Spec
from ..writers.encode import ColumnInfo, arrow_field

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


def _meta_batch(spec: Spec, loaded: LoadedModel, sample: Any, length: int) -> Batch:
    """One unpadded row of ``length`` tokens (or the sample tensor) for the meta model."""
    inputs = sample_inputs(loaded, sample, length)
    if loaded.kind == "tensor":
        return Batch([0], inputs, [0], [1], None, [None])
    targets = [{col: 0 for col, _ in loss_fields(spec.backward)}]
    return Batch([0], inputs, [0], [length], [[0] * length], [None], targets)


def _row_shape(data: Any) -> tuple[tuple[int, ...], torch.dtype]:
    if torch.is_tensor(data):
        return tuple(data.shape[1:]), data.dtype
    return tuple(data[0].shape), data[0].dtype


def _infer_columns(
    spec: Spec, loaded: LoadedModel, hooks: HookPlan, sample: Any
) -> list[ColumnInfo]:
    need = min_tokens(spec)
    lengths = (max(8, need + 2), max(8, need + 2) + 3)
    runs = []
    for length in lengths:
        try:
            with meta_safe(loaded):
                batch = _meta_batch(spec, loaded, sample, length)
                runs.append(Interleaver(loaded, hooks).run(batch, probe=True))
        except (OpError, SelectError) as e:
            raise PlanError(getattr(e, "problems", None) or [str(e)]) from None
        except Exception as e:
            raise PlanError([f"model: a meta-device forward with the ops failed ({e})"]) from None
    where = {s.column: s for s in hooks.saves}
    problems, cols = [], []
    for name in hooks.columns:
        (a, dtype), (b, _) = _row_shape(runs[0][name]), _row_shape(runs[1][name])
        shape = tuple(x if x == y else None for x, y in zip(a, b))
        base = name.removesuffix("_ids").removesuffix("_values")
        act = where.get(name) or where.get(base)
        if None in shape[1:]:
            problems.append(
                f"{act.where}: '{name}' changes shape with the prompt length in "
                f"more than its first dimension ({list(a)} vs {list(b)}); select a "
                "fixed part of it (positions or an index)"
            )
            continue
        if spec.generate is not None:
            shape, problem = _over_steps(shape, act, spec.generate.max_new_tokens)
            if problem:
                problems.append(problem)
                continue
        storage = spec.output.tensor_storage if shape else "typed"
        col = ColumnInfo(name, str(dtype).removeprefix("torch."), shape, act.target.label, storage)
        if spec.output.layout == "per_token":
            if not col.variable:
                problems.append(
                    f"{act.where}: '{name}' has no token dimension (per-row shape "
                    f"{list(a)}); output.layout per_token needs one per token"
                )
                continue
            col = ColumnInfo(name, col.dtype, col.shape[1:], col.site, col.storage)
        cols.append(col)
    if problems:
        raise PlanError(problems)
    return cols


def _over_steps(shape: tuple, act: Any, n_steps: int) -> tuple[tuple, str | None]:
    """A column's per-row shape when generating: a step-0-only op keeps its shape; an op over
    later steps stacks one value per step ([steps, ...]), where a token dimension is 1."""
    steps = step_range(act.steps, n_steps)
    if list(steps) == [0]:
        return shape, None
    if shape and shape[0] is None:
        if 0 in steps:
            return shape, (
                f"{act.where}: '{act.target.label}' is stacked over steps {act.steps!r}, but "
                "step 0 has every prompt token and later steps one; select positions (e.g. "
                "[-1]) or save step 0 in an op of its own"
            )
        shape = (1, *shape[1:])
    return (None, *shape), None


def min_tokens(spec: Spec) -> int:
    """The fewest real tokens a row needs for every op's positions to exist."""
    pos = [p for op in [*spec.edits, *spec.ops] for p in (getattr(op, "positions", None) or [])]
    if spec.backward is not None:
        loss = spec.backward.loss
        pos += getattr(loss, "positions", None) or []
        for key in ("logprob", "logit", "logit_diff"):
            if getattr(loss, key, None) is not None:
                pos.append(getattr(loss, key).position)
        if isinstance(loss, CrossEntropyLoss):
            pos.append(1)  # a next-token prediction needs two tokens
    return max([1, *(max(p + 1, -p) for p in pos)])


def identity_fields(spec: Spec, kind: str, id_type: pa.DataType) -> list[pa.Field]:
    fields = [pa.field("example_id", id_type, nullable=False)]
    if spec.output.layout == "per_token":
        fields += [
            pa.field("position", pa.int32(), nullable=False),
            pa.field("token_id", pa.int32(), nullable=False),
        ]
    elif kind != "tensor":
        fields += [
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("input_ids", pa.large_list(pa.int32()), nullable=False),
        ]
    if spec.output.include_text and kind != "tensor":
        fields.append(pa.field("text", pa.large_string(), nullable=False))
    if spec.generate is not None:
        fields += [
            pa.field("n_generated", pa.int32(), nullable=False),
            pa.field("generated_ids", pa.large_list(pa.int32()), nullable=False),
            pa.field("generated_text", pa.large_string(), nullable=False),
        ]
    return fields


def make_plan(
    spec: Spec,
    sample: Any = None,
    id_type: pa.DataType | None = None,
    loaded: LoadedModel | None = None,
) -> RunPlan:
    """Resolve and shape-check ``spec`` on the meta-device model; raises PlanError."""
    meta = loaded or load_model(spec.model, meta=True)
    if meta.kind == "tensor" and sample is None:
        raise PlanError(["model.factory models take tensors: set data.input_field"])
    if meta.kind != "tensor" and spec.data.input_field:
        raise PlanError(["data.input_field is for model.factory models; this model takes text"])
    try:
        tree = trace_tree(meta, sample)
    except Exception as e:
        raise PlanError([f"model: a forward pass on the meta device failed ({e})"]) from None
    hooks = resolve(spec, meta, tree)
    cols = _infer_columns(spec, meta, hooks, sample)
    fields = identity_fields(spec, meta.kind, id_type or pa.int64())
    schema = pa.schema([*fields, *(arrow_field(c) for c in cols)])
    return RunPlan(spec, hooks, tree, cols, schema, meta.kind, meta.names.architecture)
