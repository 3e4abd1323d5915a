"""A plan's columns, from the interleaver itself run on meta tensors: two unpadded rows of
different lengths per sweep variant, so a dimension that differs between them holds the tokens.
Each save's per-row shape and dtype come out, and for a value whose tokens are in other
dimensions than its first (attention weights: queries and keys), which dims the row view cuts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..data.batching import Batch, Encoded, collate
from ..interleave.interleaver import Interleaver, OpError
from ..interleave.resolve import HookPlan, PlanError, sample_inputs
from ..interleave.selectors import SelectError
from ..models.loading import LoadedModel, meta_safe
from ..spec.backward import CrossEntropyLoss
from ..spec.generate import step_range
from ..spec.models import Spec
from ..spec.sweep import has_placeholder
from ..spec.variants import number_columns, site_key, token_fields
from ..writers.encode import ColumnInfo

__all__ = ["infer_columns", "min_tokens"]


def _meta_batch(spec: Spec, loaded: LoadedModel, sample: Any, length: int) -> Batch:
    """One unpadded row of ``length`` tokens (or the sample tensor) per sweep variant and pair
    member, for the meta model."""
    n_var = len(spec.variants)
    if loaded.kind == "tensor":
        inputs = sample_inputs(loaded, sample, length)
        inputs = {k: v.expand(n_var, *v.shape[1:]) for k, v in inputs.items()}
        b = Batch(list(range(n_var)), inputs, [0] * n_var, [1] * n_var, None, [None] * n_var)
        b.variants = list(range(n_var))
        return b
    targets = {col: 0 for col, _ in token_fields(spec)}
    numbers = {col: 0.0 for col in number_columns(spec)}
    members = range(len(spec.data.pair.fields)) if spec.data.pair else [None]
    items = [
        Encoded(
            v, [0] * length, None, targets=targets, numbers=numbers, member=m, variant=v, unit=v
        )
        for v in range(n_var)
        for m in members
    ]
    causal = loaded.kind == "causal"
    batch = collate(items, 0, "left" if causal else "right", causal)
    # no padding, so no attention mask (meta tensors cannot build one)
    inputs = {k: v.to(loaded.device) for k, v in batch.inputs.items() if k != "attention_mask"}
    return replace(batch, inputs=inputs)


def _row_shape(data: Any, name: str, where: str) -> tuple[tuple[int, ...], torch.dtype]:
    if torch.is_tensor(data):
        return tuple(data.shape[1:]), data.dtype
    shapes = {tuple(r.shape) for r in data}
    if len(shapes) > 1:
        raise PlanError(
            [
                f"{where}: '{name}' has per-row shapes {sorted(map(list, shapes))} in different "
                "sweep variants; every variant writes the same columns, so make them agree"
            ]
        )
    return tuple(data[0].shape), data[0].dtype


def infer_columns(
    spec: Spec, loaded: LoadedModel, hooks: HookPlan, sample: Any, max_length: int
) -> tuple[list[ColumnInfo], dict[str, tuple[int, ...]]]:
    """The columns, and the saves whose tokens are not in dim 1 alone (save column -> the
    hooked tensor's dims that follow the prompt's length: attention weights' query and key)."""
    need = min_tokens(spec)
    # two unpadded rows of different lengths, both within the positions the model has
    longer = min(max(8, need + 2) + 3, max_length)
    lengths = (max(need, longer - 3), longer)
    runs, widths, raw = [], {}, []
    for length in lengths:
        try:
            with meta_safe(loaded):
                batch = _meta_batch(spec, loaded, sample, length)
                interleaver = Interleaver(loaded, hooks)
                runs.append(interleaver.run(batch, probe=True))
                widths = interleaver.widths
                raw.append(interleaver.raw_shapes)
        except (OpError, SelectError) as e:
            raise PlanError(getattr(e, "problems", None) or [str(e)]) from None
        except Exception as e:
            raise PlanError([f"model: a meta-device forward with the ops failed ({e})"]) from None
    where = {s.column: s for s in hooks.saves}
    token_dims = _token_dims(hooks, loaded, *raw)
    vocab = _vocab_size(loaded)
    problems, cols = [], []
    for name in hooks.columns:
        base = name.removesuffix("_ids").removesuffix("_values")
        act = where.get(name) or where.get(base)
        (a, dtype), (b, _) = (_row_shape(r[name], name, act.where) for r in runs)
        shape = tuple(x if x == y else None for x, y in zip(a, b))
        if act.drop_special and shape:  # the text tokens' count: the meta rows' ids say nothing
            shape = (None, *shape[1:])
        problem = _ragged_problem(spec, act, name, a, b, shape, act.column in token_dims)
        if problem:
            problems.append(problem)
            continue
        if spec.generate is not None:
            shape, problem = _over_steps(shape, act, spec.generate.max_new_tokens)
            if problem:
                problems.append(problem)
                continue
        storage = spec.output.tensor_storage if shape else "typed"
        site = _site_text(spec, act.where) or act.target.label
        is_vocab = vocab is not None and widths.get(name) == vocab
        col = ColumnInfo(name, str(dtype).removeprefix("torch."), shape, site, storage, is_vocab)
        if spec.output.layout == "per_token":
            if not col.variable:
                problems.append(
                    f"{act.where}: '{name}' has no token dimension (per-row shape "
                    f"{list(a)}); output.layout per_token needs one per token"
                )
                continue
            col = replace(col, shape=col.shape[1:])
        cols.append(col)
    if problems:
        raise PlanError(problems)
    return cols, token_dims


def _token_dims(hooks: HookPlan, loaded: LoadedModel, first: dict, second: dict) -> dict:
    """Saves whose hooked tensor follows the prompt's length in dims other than dim 1 alone
    (the two probe rows differ in length, so those dims differ): the row view cuts each."""
    out: dict[str, tuple[int, ...]] = {}
    if loaded.kind == "tensor":
        return out
    for s in hooks.saves:
        a, b = first.get(s.target), second.get(s.target)
        if a is None or b is None or len(a) != len(b):
            continue
        dims = tuple(d for d in range(1, len(a)) if a[d] != b[d])
        if dims and dims != (1,):
            out[s.column] = dims
    return out


def _ragged_problem(
    spec: Spec, act: Any, name: str, a: tuple, b: tuple, shape: tuple, tokens: bool
) -> str | None:
    """Why a column whose shape follows the prompt in more than its first dimension cannot be
    written, or None: it can where those dims are the tokens' (attention weights), on a forward
    pass, in the per-row layout."""
    if None not in shape[1:]:
        return None
    if not tokens:
        return (
            f"{act.where}: '{name}' changes shape with the prompt length in more than its "
            f"first dimension ({list(a)} vs {list(b)}); select a fixed part of it (positions "
            "or an index)"
        )
    if spec.generate is not None:
        return (
            f"{act.where}: '{name}' holds tokens in several dimensions ({list(a)} vs "
            f"{list(b)}: attention weights' queries and keys); save it on a forward pass, "
            "not under generate:, where each step has one query and a growing set of keys"
        )
    if spec.output.layout == "per_token":
        return (
            f"{act.where}: '{name}' holds tokens in several dimensions ({list(a)} vs "
            f"{list(b)}); output.layout per_token splits one of them only: use per_row"
        )
    return None


def _vocab_size(loaded: LoadedModel) -> int | None:
    """The width of the model's logits (its output embedding's rows, which may pad the
    tokenizer's vocabulary), or None for a model without a tokenizer."""
    if loaded.tokenizer is None:
        return None
    head = getattr(loaded.module, "get_output_embeddings", lambda: None)()
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(getattr(loaded.module, "config", None), "vocab_size", None)
    return size if isinstance(size, int) else len(loaded.tokenizer)


def _site_text(spec: Spec, where: str) -> str | None:
    """The site as the spec writes it when it holds sweep placeholders (its variants differ)."""
    section, i = where.split(".")[:2]
    op = getattr(spec, section)[int(i)]
    text = getattr(op, site_key(op))
    return text if has_placeholder(text) else None


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


def min_tokens(spec: Spec, variant: int | None = None) -> int:
    """The fewest real tokens a row needs for every op's positions to exist, in one sweep
    variant (or in every variant)."""
    chosen = spec.variants if variant is None else [spec.variants[variant]]
    ops = [op for v in chosen for op in (*v.edits, *v.ops)]
    # positions from a data column are each row's own: checked per row when it runs
    pos = [p for op in ops if isinstance(ps := getattr(op, "positions", None), list) for p in ps]
    if spec.backward is not None:
        loss = spec.backward.loss
        lp = getattr(loss, "positions", None)
        pos += lp if isinstance(lp, list) else []
        for key in ("logprob", "logit", "logit_diff"):
            if getattr(loss, key, None) is not None:
                pos.append(getattr(loss, key).position)
        if isinstance(loss, CrossEntropyLoss):
            pos.append(1)  # a next-token prediction needs two tokens
    return max([1, *(max(p + 1, -p) for p in pos)])
