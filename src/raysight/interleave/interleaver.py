"""Run one batch through the model with a :class:`HookPlan`.

Per batch: install hooks only on the modules the plan touches, run the forward, apply each op per
row, stop right after the last value anything needs, and remove every hook and forward patch in a
``finally`` (also when the forward raises). Saved values come back per column as one CPU tensor
[rows, ...] when every row has the same shape, else a list of per-row tensors.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from ..data.batching import Batch
from ..models.loading import LoadedModel
from ..spec.generate import step_range
from .actions import GradAction, HookPlan, SaveAction, SetAction, SkipAction, Target
from .edits import DTYPES, combine, merge_rows, save, set_value
from .generation import assemble, generate, step_batch
from .gradients import backward
from .host import to_host
from .pairs import set_from_row
from .rows import (
    Ctx,
    OpError,
    batched,
    extract,
    map_rows,
    own,
    select_rows,
    token_flat,
    token_rows,
)
from .selectors import (
    SelectError,
    container_get,
    container_set,
    split_index,
)

__all__ = ["Interleaver", "OpError"]


class _Stop(Exception):
    """Raised after the last needed hook: the rest of the forward is not run."""


class Interleaver:
    """Executes a hook plan on batches for one loaded model."""

    def __init__(self, loaded: LoadedModel, plan: HookPlan):
        self.loaded = loaded
        self.plan = plan
        self.modules = dict(loaded.module.named_modules())
        self.host_seconds = 0.0  # time spent copying saves off the device, all batches
        self.widths: dict[str, int] = {}  # the last run's id columns -> the width they index
        self._steps: dict[int, set[int]] = {}  # id(action) -> generation steps it applies to
        if plan.generate is not None:
            every = [a for acts in [*plan.actions.values(), *plan.skips.values()] for a in acts]
            n = plan.generate.max_new_tokens
            self._steps = {id(a): set(step_range(a.steps, n)) for a in every}

    def _on(self, act: Any, ctx: Ctx) -> bool:
        """Whether an action applies in the forward pass running now."""
        return not ctx.generating or ctx.step in self._steps[id(act)]

    # ------------------------------------------------------------------ hooks
    def _apply(self, key: tuple[str, str], value: Any, ctx: Ctx) -> Any:
        call = ctx.calls.get(key, 0)  # which call of the module this is, in this forward
        ctx.calls[key] = call + 1
        if key in self.plan.token_flat:
            value, n = token_rows(value, ctx.size, f"{key[1]}.{key[0]}")
            return token_flat(self._apply_rows(key, value, ctx, call), n)
        return self._apply_rows(key, value, ctx, call)

    def _apply_rows(self, key: tuple[str, str], value: Any, ctx: Ctx, call: int) -> Any:
        for act in self.plan.actions.get(key, ()):
            idx = ctx.rows_for(act)
            if not self._on(act, ctx) or idx == [] or act.target.call not in (None, call):
                continue
            try:
                if isinstance(act, SetAction) and act.from_row is not None:
                    value = set_from_row(value, act, ctx, idx, combine)
                elif isinstance(act, GradAction):
                    value = self._grad(value, act, ctx, idx)
                elif idx is None:
                    if isinstance(act, SaveAction):
                        save(value, act, ctx, self.plan, self.modules)
                    else:
                        value = set_value(value, act, ctx, self.plan)
                else:  # a sweep variant's op: run it on its rows only
                    sub, part = ctx.sub(idx), select_rows(value, idx, ctx.size)
                    if isinstance(act, SaveAction):
                        save(part, act, sub, self.plan, self.modules)
                        ctx.put_rows(sub.results, idx)
                    else:
                        new = set_value(part, act, sub, self.plan)
                        value = merge_rows(value, new, act.target, idx, ctx)
            except (SelectError, ValueError, RuntimeError, IndexError) as e:
                raise OpError(f"{act.where} ({act.target.label}): {e}") from e
        if key in self.plan.sources:
            ctx.store[key] = own(value)
        if self.plan.loss is not None and key == self.plan.loss.target.key:
            ctx.loss_value = value
        return value

    def _grad(self, value: Any, act: GradAction, ctx: Ctx, idx: list[int] | None) -> Any:
        """Hook the site's tensor so its gradient is saved or set when the loss is
        differentiated; a value no grad flows into yet becomes a leaf that requires one."""
        path, groups = split_index(act.target.index, value, act.target.primary)
        x = batched(container_get(value, path), ctx, act.target.label)
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        local = replace(act.target, primary=False, index=groups)  # indexes the bare tensor
        activation = x.detach() if act.kind == "attribution" else None

        @torch.no_grad()
        def hook(g: torch.Tensor) -> torch.Tensor | None:
            ctx.fired.add(id(act))
            sub, part = (ctx, g) if idx is None else (ctx.sub(idx), g[idx])
            try:
                if act.kind == "set":
                    set_ = SetAction(local, act.value, act.mode, act.positions, act.where)
                    new = set_value(part, set_, sub, self.plan)
                    if idx is None:
                        return new
                    full = g.clone()
                    full[idx] = new
                    return full
                if act.kind == "save":
                    save(part, replace(act.out, target=local), sub, self.plan, self.modules)
                else:
                    act_rows = activation if idx is None else activation[idx]
                    data = extract(part * act_rows, local, act.positions, sub)
                    cast = DTYPES.get(act.out.dtype)
                    sub.results[act.out.column] = map_rows(
                        data, lambda t: t.sum(-1).to(cast) if cast else t.sum(-1)
                    )
                if idx is not None:
                    ctx.put_rows(sub.results, idx)
            except (SelectError, ValueError, RuntimeError, IndexError) as e:
                raise OpError(f"{act.where} ({act.target.label}.grad): {e}") from e
            return None

        x.register_hook(hook)
        return container_set(value, path, x)

    def _post_hook(self, name: str, ctx: Ctx):
        def hook(mod, args, out):
            new = self._apply(("output", name), out, ctx)
            if self.plan.stop_event == ("post", name):
                raise _Stop
            return new

        return hook

    def _pre_hook(self, name: str, keys: set[tuple[str, str]], ctx: Ctx):
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

    def _skip_forward(self, skips: list[SkipAction], ctx: Ctx, original: Any):
        def forward(*args, **kwargs):
            live = [(sk, ctx.rows_for(sk)) for sk in skips if self._on(sk, ctx)]
            live = [(sk, idx) for sk, idx in live if idx != []]
            if not live:  # a generation step or a sweep variant the skip does not apply to
                return original(*args, **kwargs)
            if live[0][1] is None:
                return self._skip_value(live[0][0], ctx, args, kwargs)
            # Some rows skip: run the module for the batch, then replace those rows' output.
            out = original(*args, **kwargs)
            main = out[0] if isinstance(out, tuple) else out
            main = main.clone()
            for sk, idx in live:
                sub = ctx.sub(idx)
                part = self._skip_value(
                    sk, sub, select_rows(args, idx, ctx.size), select_rows(kwargs, idx, ctx.size)
                )
                main[idx] = (part[0] if isinstance(part, tuple) else part).to(main.dtype)
            return (main, *out[1:]) if isinstance(out, tuple) else main

        return forward

    def _skip_value(self, sk: SkipAction, ctx: Ctx, args: tuple, kwargs: dict) -> Any:
        """What a skipped module returns: its `with` value, or its first input."""
        n_out = self.plan.tuple_outputs.get(sk.module)
        first = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        if sk.with_ is None:
            out = first
        elif isinstance(sk.with_, Target):
            stored = ctx.store[sk.with_.key]  # a sub-context selects its rows on each read
            path, groups = split_index(sk.with_.index, stored, sk.with_.primary)
            if groups:
                raise SelectError(
                    f"{sk.where}.with: '{sk.with_.label}' must be a whole value (a tuple "
                    "element at most): a skipped module's output replaces the whole batch"
                )
            out = container_get(stored, path)
        else:
            like = torch.zeros_like(first)
            act = SetAction(
                Target(sk.module, "output", False, (), sk.module),
                sk.with_,
                "replace",
                None,
                sk.where,
            )
            out = set_value(like, act, ctx, self.plan)
        return (out, *([None] * (n_out - 1))) if n_out else out

    # ------------------------------------------------------------------ run
    def run(self, batch: Batch, probe: bool = False) -> dict[str, Any]:
        """Saved values per column for this batch (moved to the CPU). ``probe`` (planning) runs
        one forward with every op, whatever its generation steps."""
        ctx = Ctx(batch, self.loaded.kind != "tensor")
        ctx.generating = self.plan.generate is not None and not probe
        ctx.pair_fields = self.plan.pair_fields
        self.widths = ctx.widths  # filled as the saves run; read by planning
        ctx.raw_shapes = {} if probe else None
        self.raw_shapes = ctx.raw_shapes  # each saved tensor's shape, for planning
        per_step: dict[int, dict[str, Any]] = {}
        handles, patched = [], []
        try:
            keys = self.plan.hooked
            for name in {m for a, m in keys if a == "output"}:
                hook = self._post_hook(name, ctx)
                handles.append(self.modules[name].register_forward_hook(hook))
            for name in {m for a, m in keys if a != "output"}:
                hook = self._pre_hook(name, keys, ctx)
                handles.append(self.modules[name].register_forward_pre_hook(hook, with_kwargs=True))
            for name, skips in self.plan.skips.items():
                mod = self.modules[name]
                patched.append((mod, mod.__dict__.get("forward")))
                mod.forward = self._skip_forward(skips, ctx, mod.forward)
            if ctx.generating:
                root = self.loaded.module
                handles.append(root.register_forward_pre_hook(self._step_hook(ctx, per_step)))
                with torch.inference_mode():
                    new = generate(self.loaded, self.plan, batch, self._hooks_logits(keys))
                per_step[ctx.step] = ctx.finish()
                ctx.results = assemble(self.plan, per_step, new)
                return self._to_host(ctx)
            inputs = {k: v.to(self.loaded.device) for k, v in batch.inputs.items()}
            grads = self.plan.loss is not None
            with torch.enable_grad() if grads else torch.inference_mode():
                try:
                    if self.loaded.kind == "tensor":
                        self.loaded.module(inputs["input"])
                    else:
                        self.loaded.module(**inputs)
                except _Stop:
                    pass
                if grads:
                    backward(self.plan, ctx)
        finally:
            for h in handles:
                h.remove()
            for mod, old in patched:
                if old is None:
                    del mod.forward
                else:
                    mod.forward = old
        return self._to_host(ctx)

    def _to_host(self, ctx: Ctx) -> dict[str, Any]:
        ctx.finish()
        t0 = time.perf_counter()
        out = to_host(ctx.results)
        self.host_seconds += time.perf_counter() - t0
        return out

    def _step_hook(self, ctx: Ctx, per_step: dict[int, dict[str, Any]]):
        """Count generate's forward passes: each new one files the previous step's saves."""
        first = [True]

        def hook(mod, args):
            ctx.calls = {}  # a new forward: call indices count from 0 again
            if first[0]:
                first[0] = False
                return
            per_step[ctx.step] = ctx.finish()
            ctx.results, ctx.masks = {}, {}
            if ctx.step == 0:
                ctx.batch = step_batch(ctx.batch)
            ctx.step += 1

        return hook

    def _hooks_logits(self, keys: set[tuple[str, str]]) -> bool:
        """Whether an op reads or replaces the LM head (then generate keeps every position's
        logits at step 0, not only the last), or the model's output (`root.output`)."""
        head = getattr(self.loaded.module, "get_output_embeddings", lambda: None)()
        names = {m for _, m in keys} | set(self.plan.skips)
        if ("output", "") in keys:
            return True
        return head is not None and any(self.modules.get(n) is head for n in names)
