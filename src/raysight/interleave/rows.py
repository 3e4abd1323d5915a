"""Row views of batched values: what one prompt sees of a hooked value when run alone.

A hooked tensor holds the whole batch. Row i's view keeps a batch dimension of 1 and cuts the
padding off the sequence dimension, so selectors and positions mean the same thing whatever the
row's neighbours and padding side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.batching import Batch, select
from ..errors import RaysightError
from .actions import Target
from .selectors import SelectError, abs_positions, container_get, split_index, to_torch_index

__all__ = [
    "Ctx",
    "OpError",
    "batched",
    "extract",
    "has_seq",
    "map_rows",
    "own",
    "reduce_last",
    "row_positions",
    "row_view",
    "rows",
    "select_rows",
    "text_tokens",
    "token_flat",
    "token_rows",
]


class OpError(RaysightError, RuntimeError):
    """An op failed on real values (e.g. a shape that does not fit); names the op."""


@dataclass
class Ctx:
    batch: Batch
    token_model: bool
    store: dict[tuple[str, str], Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    loss_value: Any = None  # the loss site's value, with its autograd graph
    fired: set[int] = field(default_factory=set)  # ids of the grad actions whose hook ran
    step: int = 0  # generation step of the forward pass running now
    generating: bool = False
    partial: dict[str, list] = field(default_factory=dict)  # column -> per-row values so far
    masks: dict[int, list[int] | None] = field(default_factory=dict)  # id(action) -> its rows
    pair_fields: list[str] = field(default_factory=list)  # data.pair.fields, for messages
    widths: dict[str, int] = field(default_factory=dict)  # id column -> the width it indexes
    calls: dict[tuple[str, str], int] = field(default_factory=dict)  # hook firings this forward
    raw_shapes: dict[Any, tuple[int, ...]] | None = None  # planning: each saved tensor's shape

    @property
    def size(self) -> int:
        return self.batch.size

    @property
    def width(self) -> int:
        return int(next(iter(self.batch.inputs.values())).shape[1]) if self.token_model else 0

    def rows_for(self, act: Any) -> list[int] | None:
        """The batch rows an action applies to: its sweep variants, and for a copy from a
        paired row the pair's other rows. None means every row."""
        key = id(act)
        if key not in self.masks:
            b, variants = self.batch, getattr(act, "variants", None)
            src = getattr(act, "from_row", None)
            idx = [
                i
                for i in range(self.size)
                if (variants is None or (b.variants[i] if b.variants else 0) in variants)
                and (src is None or b.members[i] != src)
            ]
            self.masks[key] = None if len(idx) == self.size else idx
        return self.masks[key]

    def sub(self, idx: list[int]) -> Ctx:
        """A context over rows ``idx`` only; stored sources are read at those rows."""
        c = Ctx(select(self.batch, idx), self.token_model, _RowsOf(self.store, idx, self.size))
        c.step, c.generating, c.pair_fields = self.step, self.generating, self.pair_fields
        return c

    def put_rows(self, results: dict[str, Any], idx: list[int]) -> None:
        """File a sub-context's saved values at their rows of this batch."""
        for col, data in results.items():
            slots = self.partial.setdefault(col, [None] * self.size)
            for i, r in zip(idx, data):
                slots[i] = r

    def finish(self) -> dict[str, Any]:
        """Every column's values, the ones saved row by row put together."""
        for col, slots in self.partial.items():
            missing = [i for i, r in enumerate(slots) if r is None]
            if missing:
                raise OpError(f"column '{col}': no value for batch rows {missing[:5]}")
            same = len({tuple(r.shape) for r in slots}) == 1
            self.results[col] = torch.stack(slots) if same else slots
        self.partial = {}
        return self.results


class _RowsOf(Mapping):
    """A read-only view of a store at some rows."""

    def __init__(self, store: Mapping, idx: list[int], size: int):
        self.store, self.idx, self.size = store, idx, size

    def __getitem__(self, key: Any) -> Any:
        return select_rows(self.store[key], self.idx, self.size)

    def __iter__(self):
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)


def select_rows(value: Any, idx: list[int], size: int) -> Any:
    """Rows ``idx`` of every batched tensor in ``value`` (tuples, lists and dicts walked)."""
    if torch.is_tensor(value):
        if value.dim() >= 1 and value.shape[0] == size and size != 1:
            return value[torch.tensor(idx, device=value.device)]
        return value
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(select_rows(v, idx, size) for v in value)
    if isinstance(value, list):
        return [select_rows(v, idx, size) for v in value]
    if isinstance(value, dict):
        return {k: select_rows(v, idx, size) for k, v in value.items()}
    return value


def batched(x: torch.Tensor, ctx: Ctx, where: str) -> torch.Tensor:
    if x.dim() >= 1 and x.shape[0] == ctx.size:
        return x
    if x.dim() >= 1 and x.shape[0] == 1:  # broadcast over the batch, e.g. GPT-2's wpe output
        return x.expand(ctx.size, *x.shape[1:])
    raise SelectError(f"{where}: leading dimension {tuple(x.shape)[:1]} is not the batch size")


def has_seq(x: torch.Tensor, ctx: Ctx) -> bool:
    return ctx.token_model and x.dim() >= 2 and x.shape[1] == ctx.width


def row_view(
    x: torch.Tensor, i: int, seq: bool | tuple[int, ...], groups: tuple, ctx: Ctx, label: str
):
    """Row i as nnsight shows a prompt run alone: batch dim kept, padding cut, selectors applied.
    ``seq``: whether dim 1 holds the tokens, or the dims that do (attention weights: the query
    and key dims).

    Only basic indexing is used, so the result is a view: writing into it writes into ``x``.
    """
    b = ctx.batch
    r = x[i : i + 1]
    for d in (1,) if seq is True else seq or ():
        r = r.narrow(d, b.starts[i], b.lengths[i])
    for g in groups:
        r = r[to_torch_index(g, r.dim(), label)]
    return r


def rows(
    x: torch.Tensor,
    tgt: Target,
    groups: tuple,
    positions: list[int] | None,
    ctx: Ctx,
    token_dims: tuple[int, ...] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Per-row values of a batched tensor: [rows, ...] when fixed-shape, else a list.
    ``token_dims``: the dims holding tokens where they are not dim 1 alone (the plan measures
    them: attention weights have two)."""
    b = ctx.batch
    if ctx.raw_shapes is not None:  # planning: which dims follow the prompt's length
        ctx.raw_shapes[tgt] = tuple(x.shape)
    if token_dims:  # the plan refuses positions here: its probe finds no tokens in dim 1
        return [row_view(x, i, token_dims, groups, ctx, tgt.label)[0] for i in range(ctx.size)]
    seq = has_seq(x, ctx)
    if positions is not None:
        if not seq:
            raise SelectError(
                f"{tgt.label}: positions need a sequence dimension; shape is {list(x.shape)}"
            )
        idx = abs_positions(row_positions(positions, ctx), b.starts, b.lengths, x.device)
        x = x[torch.arange(ctx.size, device=x.device)[:, None], idx]
        seq = False
    if not groups:
        if not seq:
            return x
        return [x[i, b.starts[i] : b.starts[i] + b.lengths[i]] for i in range(ctx.size)]
    return [row_view(x, i, seq, groups, ctx, tgt.label)[0] for i in range(ctx.size)]


def extract(
    value: Any,
    tgt: Target,
    positions: list[int] | None,
    ctx: Ctx,
    token_dims: tuple[int, ...] | None = None,
):
    path, groups = split_index(tgt.index, value, tgt.primary)
    x = batched(container_get(value, path), ctx, tgt.label)
    return rows(x, tgt, groups, positions, ctx, token_dims)


def text_tokens(data: Any, label: str, special: list[int], ctx: Ctx) -> list[torch.Tensor]:
    """Each row's value without the positions of special tokens (its first dimension is the
    row's real tokens, as ``rows`` gives it without positions or selectors)."""
    ids = ctx.batch.token_ids
    if ids is None:
        raise SelectError(f"{label}: special_tokens: drop needs token ids (a token model)")
    out = []
    for i, r in enumerate(data):
        if r.dim() == 0 or r.shape[0] != len(ids[i]):
            raise SelectError(
                f"{label}: special_tokens: drop needs a value with a sequence dimension; "
                f"shape is {list(r.shape)}"
            )
        keep = [p for p, t in enumerate(ids[i]) if t not in special]
        out.append(r[torch.tensor(keep, dtype=torch.long, device=r.device)])
    return out


def own(value: Any) -> Any:
    """A private copy of every tensor in ``value``: later modules may write into theirs."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(own(v) for v in value)
    if isinstance(value, list):
        return [own(v) for v in value]
    return value


def map_rows(data: torch.Tensor | list[torch.Tensor], fn) -> Any:
    return fn(data) if torch.is_tensor(data) else [fn(r) for r in data]


def reduce_last(x: torch.Tensor, reduce: Any) -> Any:
    if reduce is None:
        return x
    if reduce == "argmax":
        return x.argmax(-1)
    if reduce == "norm":
        return torch.linalg.vector_norm(x, dim=-1)
    if reduce == "mean":
        return x.mean(-1)
    k = min(reduce.topk, x.shape[-1])
    return torch.topk(x, k, dim=-1)  # (values, indices)


def token_rows(value: Any, size: int, where: str) -> tuple[Any, int | None]:
    """A value whose leading dimension is every token of the batch (OPT's MLP, a mixture of
    experts' router flatten ``[batch, seq]``) viewed as ``[batch, seq, ...]``, with the token
    count to flatten it back by; the plan marks such values (ModuleTree.flat)."""
    first = value[0] if type(value) is tuple and value else value
    if not torch.is_tensor(first) or first.dim() == 0 or first.shape[0] % size:
        got = list(first.shape) if torch.is_tensor(first) else type(first).__name__
        raise OpError(f"{where}: expected a value of [batch × tokens, ...], got {got}")
    n = first.shape[0]

    def view(t: Any) -> Any:
        return t.view(size, n // size, *t.shape[1:]) if _flat(t, n) else t

    return (tuple(view(t) for t in value) if first is not value else view(value)), n


def token_flat(value: Any, n: int) -> Any:
    """The inverse of :func:`token_rows`: ``[batch, seq, ...]`` back to the module's layout."""

    def flat(t: Any) -> Any:
        if torch.is_tensor(t) and t.dim() >= 2 and t.shape[0] * t.shape[1] == n:
            return t.reshape(n, *t.shape[2:])
        return t

    return tuple(flat(t) for t in value) if type(value) is tuple else flat(value)


def _flat(t: Any, n: int) -> bool:
    return torch.is_tensor(t) and t.dim() >= 1 and t.shape[0] == n


def row_positions(positions: Any, ctx: Ctx) -> list[int] | list[list[int]]:
    """An op's positions for abs_positions: its list, or each row's own from a data column
    (positions: {field}), carried with the row's numbers (checked against its length when the
    shard read it)."""
    if isinstance(positions, list):
        return positions
    numbers = ctx.batch.numbers or [{} for _ in range(ctx.size)]
    return [[int(n[positions.field])] for n in numbers]
