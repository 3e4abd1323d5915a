"""Run one batch through the model with a :class:`HookPlan`.

Per batch: install hooks only on the modules the plan touches, run the forward, apply each op per
row, stop right after the last value anything needs, and remove every hook and forward patch in a
``finally`` (also when the forward raises). Saved values come back per column as one CPU tensor
[rows, ...] when every row has the same shape, else a list of per-row tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.batching import Batch
from ..models.loading import LoadedModel
from ..spec.models import FileValue, TopK, ZerosValue
from .host import to_host
from .resolve import HookPlan, SaveAction, SetAction, SkipAction, Target
from .selectors import (
    SelectError,
    abs_positions,
    container_get,
    container_set,
    split_index,
    to_torch_index,
)
from .values import load_tensor_file, make_value

__all__ = ["Interleaver", "OpError"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class OpError(RuntimeError):
    """An op failed on real values (e.g. a shape that does not fit); names the op."""


class _Stop(Exception):
    """Raised after the last needed hook: the rest of the forward is not run."""


@dataclass
class _Ctx:
    batch: Batch
    token_model: bool
    store: dict[tuple[str, str], Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.batch.size

    @property
    def width(self) -> int:
        return int(next(iter(self.batch.inputs.values())).shape[1]) if self.token_model else 0


def _batched(x: torch.Tensor, ctx: _Ctx, where: str) -> torch.Tensor:
    if x.dim() >= 1 and x.shape[0] == ctx.size:
        return x
    if x.dim() >= 1 and x.shape[0] == 1:  # broadcast over the batch, e.g. GPT-2's wpe output
        return x.expand(ctx.size, *x.shape[1:])
    raise SelectError(f"{where}: leading dimension {tuple(x.shape)[:1]} is not the batch size")


def _has_seq(x: torch.Tensor, ctx: _Ctx) -> bool:
    return ctx.token_model and x.dim() >= 2 and x.shape[1] == ctx.width


def _row_view(x: torch.Tensor, i: int, seq: bool, groups: tuple, ctx: _Ctx, label: str):
    """Row i as nnsight shows a prompt run alone: batch dim kept, padding cut, selectors applied.

    Only basic indexing is used, so the result is a view: writing into it writes into ``x``.
    """
    b = ctx.batch
    r = x[i : i + 1]
    if seq:
        r = r[:, b.starts[i] : b.starts[i] + b.lengths[i]]
    for g in groups:
        r = r[to_torch_index(g, r.dim(), label)]
    return r


def _rows(
    x: torch.Tensor, tgt: Target, groups: tuple, positions: list[int] | None, ctx: _Ctx
) -> torch.Tensor | list[torch.Tensor]:
    """Per-row values of a batched tensor: [rows, ...] when fixed-shape, else a list."""
    b = ctx.batch
    seq = _has_seq(x, ctx)
    if positions is not None:
        if not seq:
            raise SelectError(
                f"{tgt.label}: positions need a sequence dimension; shape is {list(x.shape)}"
            )
        idx = abs_positions(positions, b.starts, b.lengths, x.device)
        x = x[torch.arange(ctx.size, device=x.device)[:, None], idx]
        seq = False
    if not groups:
        if not seq:
            return x
        return [x[i, b.starts[i] : b.starts[i] + b.lengths[i]] for i in range(ctx.size)]
    return [_row_view(x, i, seq, groups, ctx, tgt.label)[0] for i in range(ctx.size)]


def _extract(value: Any, tgt: Target, positions: list[int] | None, ctx: _Ctx):
    path, groups = split_index(tgt.index, value, tgt.primary)
    x = _batched(container_get(value, path), ctx, tgt.label)
    return _rows(x, tgt, groups, positions, ctx)


def _own(value: Any) -> Any:
    """A private copy of every tensor in ``value``: later modules may write into theirs."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_own(v) for v in value)
    if isinstance(value, list):
        return [_own(v) for v in value]
    return value


def _map(data: torch.Tensor | list[torch.Tensor], fn) -> Any:
    return fn(data) if torch.is_tensor(data) else [fn(r) for r in data]


def _reduce(x: torch.Tensor, reduce: Any) -> Any:
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


class Interleaver:
    """Executes a hook plan on batches for one loaded model."""

    def __init__(self, loaded: LoadedModel, plan: HookPlan):
        self.loaded = loaded
        self.plan = plan
        self.modules = dict(loaded.module.named_modules())
        self.host_seconds = 0.0  # time spent copying saves off the device, all batches

    # ------------------------------------------------------------------ saves
    def _save(self, value: Any, act: SaveAction, ctx: _Ctx) -> None:
        data = _extract(value, act.target, act.positions, ctx)
        if act.positions is None and not act.apply and act.reduce is None:
            data = _map(data, torch.clone)  # a view of the live tensor otherwise
        for name in act.apply:
            data = _map(data, self.modules[name].forward)  # direct call: no hooks fire
        red = _map(data, lambda t: _reduce(t, act.reduce))
        cast = (lambda t: t.to(_DTYPES[act.dtype])) if act.dtype else (lambda t: t)
        if isinstance(act.reduce, TopK):
            if torch.is_tensor(data):
                vals, ids = red
            else:
                vals, ids = [r[0] for r in red], [r[1] for r in red]
            ctx.results[f"{act.column}_ids"] = ids
            ctx.results[f"{act.column}_values"] = _map(vals, cast)
        elif act.reduce == "argmax":
            ctx.results[act.column] = red  # token ids: never cast
        else:
            ctx.results[act.column] = _map(red, cast)

    # ------------------------------------------------------------------ sets
    def _row_value(self, val: Any, like: torch.Tensor, i: int, src: Any, ctx: _Ctx, where: str):
        if isinstance(val, Target):
            v = src[i]
            if torch.broadcast_shapes(v.shape, like.shape) != like.shape:
                raise SelectError(
                    f"{where}: source '{val.label}' has per-row shape "
                    f"{list(v.shape)}, target has {list(like.shape)}"
                )
            return v.to(like.dtype)
        return make_value(val, like, ctx.batch.example_ids[i], where)

    @staticmethod
    def _combine(cur: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "add":
            return cur + v
        if mode == "scale":
            return cur * v
        return v.expand_as(cur) if v.shape != cur.shape else v

    def _set(self, value: Any, act: SetAction, ctx: _Ctx) -> Any:
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
            src_data = _extract(ctx.store[act.value.key], act.value, act.positions, ctx)
            src = list(src_data) if torch.is_tensor(src_data) else src_data
        seq = _has_seq(x, ctx)
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
            idx = abs_positions(act.positions, b.starts, b.lengths, x.device)
            sub = x[ar, idx]
            vals = [
                self._row_value(act.value, sub[i], i, src, ctx, where)
                for i in range(1 if uniform else ctx.size)
            ]
            v = vals[0] if uniform else torch.stack([v.expand_as(sub[0]) for v in vals])
            new[ar, idx] = self._combine(sub, v, act.mode)
        elif not groups and uniform:
            row_like = x[0, : b.lengths[0]] if seq else x[0]
            v = self._row_value(act.value, row_like, 0, None, ctx, where)
            new = self._combine(x, v, act.mode)
            if act.mode == "replace":
                new = new.clone()  # materialize the broadcast value
        else:
            new = x.clone()
            for i in range(ctx.size):
                r = _row_view(new, i, seq, groups, ctx, tgt.label)
                v = self._row_value(act.value, r[0], i, src, ctx, where)
                r.copy_(self._combine(r, v[None], act.mode))
        return container_set(value, path, new)

    # ------------------------------------------------------------------ hooks
    def _apply(self, key: tuple[str, str], value: Any, ctx: _Ctx) -> Any:
        for act in self.plan.actions.get(key, ()):
            try:
                if isinstance(act, SaveAction):
                    self._save(value, act, ctx)
                else:
                    value = self._set(value, act, ctx)
            except (SelectError, ValueError, RuntimeError, IndexError) as e:
                raise OpError(f"{act.where} ({act.target.label}): {e}") from e
        if key in self.plan.sources:
            ctx.store[key] = _own(value)
        return value

    def _post_hook(self, name: str, ctx: _Ctx):
        def hook(mod, args, out):
            new = self._apply(("output", name), out, ctx)
            if self.plan.stop_event == ("post", name):
                raise _Stop
            return new

        return hook

    def _pre_hook(self, name: str, keys: set[tuple[str, str]], ctx: _Ctx):
        def hook(mod, args, kwargs):
            if ("input", name) in keys:
                if args:
                    args = (self._apply(("input", name), args[0], ctx), *args[1:])
                else:
                    key = next((k for k, v in kwargs.items() if torch.is_tensor(v)), None)
                    if key is None:
                        raise OpError(f"{name}.input: the module got no tensor argument")
                    kwargs = {**kwargs, key: self._apply(("input", name), kwargs[key], ctx)}
            if ("inputs", name) in keys:
                args, kwargs = self._apply(("inputs", name), (args, kwargs), ctx)
            if self.plan.stop_event == ("pre", name):
                raise _Stop
            return args, kwargs

        return hook

    def _skip_forward(self, sk: SkipAction, ctx: _Ctx):
        n_out = self.plan.tuple_outputs.get(sk.module)

        def forward(*args, **kwargs):
            first = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
            if sk.with_ is None:
                out = first
            elif isinstance(sk.with_, Target):
                path, groups = split_index(
                    sk.with_.index, ctx.store[sk.with_.key], sk.with_.primary
                )
                if groups:
                    raise SelectError(
                        f"{sk.where}.with: '{sk.with_.label}' must be a whole value (a tuple "
                        "element at most): a skipped module's output replaces the whole batch"
                    )
                out = container_get(ctx.store[sk.with_.key], path)
            else:
                like = torch.zeros_like(first)
                act = SetAction(
                    Target(sk.module, "output", False, (), sk.module),
                    sk.with_,
                    "replace",
                    None,
                    sk.where,
                )
                out = self._set(like, act, ctx)
            return (out, *([None] * (n_out - 1))) if n_out else out

        return forward

    # ------------------------------------------------------------------ run
    def run(self, batch: Batch) -> dict[str, Any]:
        """Saved values per column for this batch (moved to the CPU)."""
        ctx = _Ctx(batch, self.loaded.kind != "tensor")
        handles, patched = [], []
        try:
            keys = self.plan.actions.keys() | self.plan.sources
            for name in {m for a, m in keys if a == "output"}:
                hook = self._post_hook(name, ctx)
                handles.append(self.modules[name].register_forward_hook(hook))
            for name in {m for a, m in keys if a != "output"}:
                hook = self._pre_hook(name, keys, ctx)
                handles.append(self.modules[name].register_forward_pre_hook(hook, with_kwargs=True))
            for name, sk in self.plan.skips.items():
                mod = self.modules[name]
                patched.append((mod, mod.__dict__.get("forward")))
                mod.forward = self._skip_forward(sk, ctx)
            inputs = {k: v.to(self.loaded.device) for k, v in batch.inputs.items()}
            with torch.inference_mode():
                try:
                    if self.loaded.kind == "tensor":
                        self.loaded.module(inputs["input"])
                    else:
                        self.loaded.module(**inputs)
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
            for mod, old in patched:
                if old is None:
                    del mod.forward
                else:
                    mod.forward = old
        t0 = time.perf_counter()
        out = to_host(ctx.results)
        self.host_seconds += time.perf_counter() - t0
        return out
