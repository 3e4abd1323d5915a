"""The two edits an op makes to a hooked value: a save files each row's value (selected,
applied, reduced, cast) in the batch's results; a set writes a value into each row (a number,
zeros, noise, a file, another site, an earlier run's value, an expression), on a copy."""

from __future__ import annotations

from typing import Any

import torch

from ..spec.models import ExprValue, FileValue, SaeBinding, TopK, ZerosValue
from ..spec.reduce import metric_kind
from .actions import HookPlan, SaveAction, SetAction, Target
from .expr import evaluate
from .pairs import metric
from .rows import (
    Ctx,
    batched,
    extract,
    has_seq,
    map_rows,
    reduce_last,
    row_positions,
    row_view,
    text_tokens,
)
from .sae import load_sae
from .selectors import SelectError, abs_positions, container_get, container_set, split_index
from .values import check_broadcast, load_tensor_file, make_value

__all__ = ["DTYPES", "combine", "merge_rows", "save", "set_value"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def save(value: Any, act: SaveAction, ctx: Ctx, plan: HookPlan, modules: dict) -> None:
    """File one save's per-row values (after apply and reduce) in ``ctx.results``."""
    data = extract(value, act.target, act.positions, ctx, act.token_dims)
    if act.drop_special:
        data = text_tokens(data, act.target.label, plan.special_ids, ctx)
    if act.positions is None and not act.apply and act.reduce is None:
        data = map_rows(data, torch.clone)  # a view of the live tensor otherwise
    for name in act.apply:
        if isinstance(name, SaeBinding):  # an SAE's latents
            data = map_rows(data, lambda t, b=name: load_sae(b).to(t).encode(t))
        else:
            data = map_rows(data, modules[name].forward)  # direct call: no hooks fire
    if act.tokens is not None:
        red = metric(data, act.tokens, metric_kind(act.reduce), ctx)
    elif isinstance(act.reduce, ExprValue):  # per row, on the row's value as it is saved
        ids, at, nums = ctx.batch.example_ids, _at_rows(act, ctx), _numbers(ctx)
        red = [
            evaluate(
                act.reduce, r, plan.expr_tokens, ids[i], {s: v[i] for s, v in at.items()}, nums[i]
            )
            for i, r in enumerate(data)
        ]
        if torch.is_tensor(data) and len({r.shape for r in red}) == 1:
            red = torch.stack(red)
    else:
        red = map_rows(data, lambda t: reduce_last(t, act.reduce))
    cast = (lambda t: t.to(DTYPES[act.dtype])) if act.dtype else (lambda t: t)
    if isinstance(act.reduce, TopK) or act.reduce == "argmax":
        # what the ids index: the plan gives ids over the vocabulary a column of strings
        first = data if torch.is_tensor(data) else (data[0] if data else None)
        if first is not None:
            key = f"{act.column}_ids" if isinstance(act.reduce, TopK) else act.column
            ctx.widths[key] = int(first.shape[-1])
    if isinstance(act.reduce, TopK):
        if torch.is_tensor(data):
            vals, ids = red
        else:
            vals, ids = [r[0] for r in red], [r[1] for r in red]
        ctx.results[f"{act.column}_ids"] = ids
        ctx.results[f"{act.column}_values"] = map_rows(vals, cast)
    elif act.reduce == "argmax":
        ctx.results[act.column] = red  # token ids: never cast
    else:
        ctx.results[act.column] = map_rows(red, cast)


def _numbers(ctx: Ctx) -> list[dict[str, float]]:
    return ctx.batch.numbers or [{} for _ in range(ctx.size)]


def _at_rows(act: SaveAction | SetAction, ctx: Ctx) -> dict[str, list]:
    """Each row's value of the sites an expression reads with at(), at the op's positions."""
    return {
        site: list(extract(ctx.store[t.key], t, act.positions, ctx)) for site, t in act.at.items()
    }


def _row_value(
    val: Any, like: torch.Tensor, i: int, src: Any, ctx: Ctx, where: str, plan: HookPlan
) -> torch.Tensor:
    if isinstance(val, ExprValue):  # src: the at() sites' rows
        at = {site: rows[i] for site, rows in (src or {}).items()}
        v = evaluate(val, like, plan.expr_tokens, ctx.batch.example_ids[i], at, _numbers(ctx)[i])
        check_broadcast(v, like, f"{where}: the expression's value")
        return v.to(like.dtype)
    if isinstance(val, Target):
        v = src[i]
        if torch.broadcast_shapes(v.shape, like.shape) != like.shape:
            raise SelectError(
                f"{where}: source '{val.label}' has per-row shape "
                f"{list(v.shape)}, target has {list(like.shape)}"
            )
        return v.to(like.dtype)
    return make_value(val, like, ctx.batch.example_ids[i], where)


def combine(cur: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "add":
        return cur + v
    if mode == "scale":
        return cur * v
    return v.expand_as(cur) if v.shape != cur.shape else v


def set_value(value: Any, act: SetAction, ctx: Ctx, plan: HookPlan) -> Any:
    """``value`` with the set applied to every row (a copy: the hooked tensor is not written)."""
    tgt, where = act.target, act.where
    path, groups = split_index(tgt.index, value, tgt.primary)
    x = container_get(value, path)
    if x.dim() == 0 or x.shape[0] != ctx.size:
        raise SelectError(
            f"{tgt.label}: value of shape {list(x.shape)} has no batch dimension to set per row"
        )
    src = None
    if isinstance(act.value, Target):
        # With positions, the source gives the same positions of the same row.
        src_data = extract(ctx.store[act.value.key], act.value, act.positions, ctx)
        src = list(src_data) if torch.is_tensor(src_data) else src_data
    elif act.at:
        src = _at_rows(act, ctx)
    seq = has_seq(x, ctx)
    b = ctx.batch
    uniform = isinstance(act.value, (int, float, ZerosValue)) or (
        isinstance(act.value, FileValue)
        and load_tensor_file(act.value.file.path, act.value.file.key).dim()
        <= x.dim() - 1 - int(seq)  # spans no token dimension: same for every row
    )
    if act.positions is not None:
        if not seq:
            raise SelectError(f"{tgt.label}: positions need a sequence dimension")
        new = x.clone()  # never write into a tensor another module may still hold
        ar = torch.arange(ctx.size, device=x.device)[:, None]
        idx = abs_positions(row_positions(act.positions, ctx), b.starts, b.lengths, x.device)
        sub = x[ar, idx]
        vals = [
            _row_value(act.value, sub[i], i, src, ctx, where, plan)
            for i in range(1 if uniform else ctx.size)
        ]
        v = vals[0] if uniform else torch.stack([v.expand_as(sub[0]) for v in vals])
        new[ar, idx] = combine(sub, v, act.mode)
    elif not groups and uniform:
        row_like = x[0, : b.lengths[0]] if seq else x[0]
        v = _row_value(act.value, row_like, 0, None, ctx, where, plan)
        new = combine(x, v, act.mode)
        if act.mode == "replace":
            new = new.clone()  # materialize the broadcast value
    else:
        new = x.clone()
        for i in range(ctx.size):
            r = row_view(new, i, seq, groups, ctx, tgt.label)
            v = _row_value(act.value, r[0], i, src, ctx, where, plan)
            r.copy_(combine(r, v[None], act.mode))
    return container_set(value, path, new)


def merge_rows(value: Any, new: Any, tgt: Target, idx: list[int], ctx: Ctx) -> Any:
    """``value`` with rows ``idx`` of the target tensor taken from ``new`` (those rows only)."""
    path, _ = split_index(tgt.index, value, tgt.primary)
    full = batched(container_get(value, path), ctx, tgt.label).clone()
    full[idx] = container_get(new, path).to(full.dtype)
    return container_set(value, path, full)
