"""Independent references: each prompt run alone through the plain HF model with plain PyTorch
hooks, no raysight code involved."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def alone(
    model: torch.nn.Module,
    tok: Any,
    prompt: str,
    capture: dict[str, str] | None = None,
    edit: dict[str, Callable[[Any], Any]] | None = None,
    pre_capture: dict[str, str] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Run one unpadded prompt. ``capture``: name -> module path whose output to keep;
    ``edit``: module path -> fn(output) -> new output; ``pre_capture``: name -> module path
    whose first positional input to keep. Returns (captured, model output)."""
    mods = dict(model.named_modules())
    got: dict[str, Any] = {}
    handles = []
    for path, fn in (edit or {}).items():
        handles.append(mods[path].register_forward_hook(lambda m, a, o, fn=fn: fn(o)))
    for name, path in (capture or {}).items():
        handles.append(
            mods[path].register_forward_hook(lambda m, a, o, name=name: got.__setitem__(name, o))
        )
    for name, path in (pre_capture or {}).items():
        handles.append(
            mods[path].register_forward_pre_hook(
                lambda m, a, name=name: got.__setitem__(name, a[0])
            )
        )
    ids = torch.tensor([tok(prompt)["input_ids"]])
    try:
        with torch.no_grad():
            out = model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return got, out


def first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def on_first(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], Any]:
    """An ``edit`` for :func:`alone` that replaces a module's primary value (element 0 of a
    tuple output) with ``fn(value)``, keeping the rest."""

    def edit(out: Any) -> Any:
        new = fn(first(out))
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return edit


def grads_alone(
    model: torch.nn.Module,
    tok: Any,
    prompt: str,
    loss_fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
    capture: dict[str, str],
    grad_edit: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Plain autograd on one unpadded prompt: the model's own parameters require grad, so every
    activation is in the graph. ``loss_fn(logits[0], captured outputs) -> scalar``;
    ``capture``: name -> module path whose output (element 0 of a tuple) and gradient to keep;
    ``grad_edit``: module path -> fn(grad) -> grad, a tensor hook on that output.
    Returns (activations, gradients), without the batch dimension."""
    mods = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, path: str):
        def hook(m, a, o):
            t = first(o)
            t.retain_grad()
            acts[name] = t
            if path in (grad_edit or {}):
                t.register_hook(grad_edit[path])

        return hook

    for name, path in capture.items():
        handles.append(mods[path].register_forward_hook(keep(name, path)))
    for path in set(grad_edit or {}) - set(capture.values()):
        handles.append(mods[path].register_forward_hook(keep(f"_{path}", path)))
    ids = torch.tensor([tok(prompt)["input_ids"]])
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids).logits
            loss_fn(logits[0], acts).backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    grads = {k: v.grad[0] for k, v in acts.items() if not k.startswith("_")}
    return {k: v.detach()[0] for k, v in acts.items()}, grads
