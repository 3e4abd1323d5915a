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
