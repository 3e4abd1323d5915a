"""Copying a value from a paired row (``set … value: {from: {site, row}}``) and the metric
reduces a patching grid reports.

The rows of a pair (``data.pair.fields``) share a batch, so a hooked value holds both: the copy
reads the partner row's value from the same hook call — nnsight's invokes + barrier, without a
forward pass per source. Rows are aligned by position, or through the record's position map.
"""

from __future__ import annotations

from typing import Any

import torch

from .actions import SetAction
from .rows import Ctx, batched, has_seq, row_positions, row_view
from .selectors import SelectError, container_get, container_set, split_index

__all__ = ["metric", "set_from_row"]


def set_from_row(value: Any, act: SetAction, ctx: Ctx, idx: list[int] | None, combine) -> Any:
    """Write into rows ``idx`` (None: every row) the source site's value of each row's partner."""
    tgt, src = act.target, act.value
    path, groups = split_index(tgt.index, value, tgt.primary)
    x = batched(container_get(value, path), ctx, tgt.label)
    stored = value if src.key == tgt.key else ctx.store[src.key]  # same site: this very call
    spath, sgroups = split_index(src.index, stored, src.primary)
    sx = batched(container_get(stored, spath), ctx, src.label)
    b = ctx.batch
    seq, sseq = has_seq(x, ctx), has_seq(sx, ctx)
    new = x.clone()
    for i in range(ctx.size) if idx is None else idx:
        j = b.partners[i][act.from_row]
        pmap = b.pos_maps[i] if b.pos_maps else None
        if act.positions is None and pmap is None:
            tv = row_view(new, i, seq, groups, ctx, tgt.label)
            sv = row_view(sx, j, sseq, sgroups, ctx, src.label)
            if sv.shape != tv.shape:
                raise SelectError(
                    f"row {_name(ctx, i)} has shape {list(tv.shape[1:])} at '{tgt.label}', its "
                    f"pair's row {_name(ctx, j)} {list(sv.shape[1:])} at '{src.label}'"
                    + (
                        "; pair rows of different lengths need data.pair.position_map"
                        if seq
                        else ""
                    )
                )
            tv.copy_(combine(tv, sv.to(tv.dtype), act.mode))
            continue
        if not (seq and sseq) or groups or sgroups:
            raise SelectError(
                "a copy from a paired row at positions (or through a position map) takes whole "
                "values with a token dimension; drop the index selector"
            )
        t_pos, s_pos = _aligned(act.positions, pmap, ctx, i, j)
        ti = torch.tensor([b.starts[i] + p for p in t_pos], device=x.device)
        sj = torch.tensor([b.starts[j] + p for p in s_pos], device=x.device)
        new[i, ti] = combine(new[i, ti], sx[j, sj].to(new.dtype), act.mode)
    return container_set(value, path, new)


def _name(ctx: Ctx, i: int) -> str:
    m = ctx.batch.members[i]
    return f"{ctx.batch.example_ids[i]!r} ({ctx.pair_fields[m] if ctx.pair_fields else m})"


def _aligned(
    positions: Any, pmap: list[list[int]] | None, ctx: Ctx, i: int, j: int
) -> tuple[list[int], list[int]]:
    """Target-row and source-row positions (from each row's first real token) that correspond."""
    b = ctx.batch
    li, lj = b.lengths[i], b.lengths[j]
    if positions is not None and not isinstance(positions, list):  # the row's own, from data
        positions = row_positions(positions, ctx)[i]

    def norm(p: int, n: int, what: str) -> int:
        q = p + n if p < 0 else p
        if not 0 <= q < n:
            raise SelectError(f"position {p} is outside {what} ({n} tokens)")
        return q

    if pmap is None:
        assert positions is not None
        return (
            [norm(p, li, f"row {_name(ctx, i)}") for p in positions],
            [norm(p, lj, f"row {_name(ctx, j)}") for p in positions],
        )
    first = b.members[i] == 0  # the map's pairs are [first field's position, second's]
    to_src = {}
    for a, c in pmap:
        t, s = (a, c) if first else (c, a)
        to_src.setdefault(norm(t, li, "the position map's row"), norm(s, lj, "its pair row"))
    if positions is None:
        t_pos = list(to_src)
    else:
        t_pos = [norm(p, li, f"row {_name(ctx, i)}") for p in positions]
        lost = [p for p, q in zip(positions, t_pos) if q not in to_src]
        if lost:
            raise SelectError(
                f"position {lost[0]} of row {_name(ctx, i)} is not in its position map"
            )
    return t_pos, [to_src[t] for t in t_pos]


def metric(data: Any, tokens: dict[str, Any], kind: str, ctx: Ctx) -> Any:
    """logit_diff, prob or logprob of the last dimension at each row's tokens."""

    def one(t: torch.Tensor, i: int) -> torch.Tensor:
        ids = {
            k: v if isinstance(v, int) else ctx.batch.targets[i][v[1]] for k, v in tokens.items()
        }
        for k, tok in ids.items():
            if not 0 <= tok < t.shape[-1]:
                raise SelectError(f"token {k}={tok} is outside the last dimension ({t.shape[-1]})")
        if kind == "logit_diff":
            return t[..., ids["a"]] - t[..., ids["b"]]
        scores = t.float().log_softmax(-1)[..., ids["token"]]
        return (scores.exp() if kind == "prob" else scores).to(t.dtype)

    if torch.is_tensor(data):
        return torch.stack([one(data[i], i) for i in range(data.shape[0])])
    return [one(r, i) for i, r in enumerate(data)]
