"""``raysight modules MODEL``: the module tree (nnsight's ``print(model)``) with each module's
standardized name and, from one forward on the meta device (no weights read), the shapes of its
input and output for a prompt of ``tokens`` tokens. Layers with the same structure as the first
are folded into one line, so a 30-layer model prints one layer in full."""

from __future__ import annotations

from typing import Any

import torch

from ..models.loading import LoadedModel
from ..models.names import LAYER_PARTS, SUB_PARTS
from .tree import trace_tree

__all__ = ["describe_modules"]


def describe_modules(loaded: LoadedModel, tokens: int = 8) -> str:
    module = loaded.module
    tree = trace_tree(loaded, length=tokens)
    shapes = {n: (*tree.shapes[n], tree.calls.get(n, 0)) for n in tree.shapes or {}}
    standard = _standard_names(loaded)
    rows: list[tuple[str, str, str, str]] = []
    folded = _folded_layers(loaded, shapes)
    modules = dict(module.named_modules())
    for name in modules:
        if not name or any(name.startswith(f"{p}.") or name == p for p in folded["hidden"]):
            if name in folded["first_of"]:
                rows.append(folded["first_of"][name])
            continue
        pre, post, calls = shapes.get(name, ("", "", 0))
        std = standard.get(name, "")
        shown = "  " * name.count(".") + name.rsplit(".", 1)[-1]
        container = isinstance(modules[name], torch.nn.ModuleList | torch.nn.ModuleDict)
        note = "" if calls or container else "  (not called)"
        if calls > 1:
            note = f"  (called {calls} times)"
        rows.append((shown, std, f"{pre} -> {post}" if calls else "", note))
    arch = (
        loaded.names.architecture
        or f"{loaded.model_type or type(module).__name__} (raw names only)"
    )
    head = f"{type(module).__name__}: {arch}; shapes for a prompt of {tokens} tokens"
    width = max(len(r[0]) for r in rows) + 2
    sw = max([len(r[1]) for r in rows] + [12]) + 2
    lines = [head, f"{'module':<{width}}{'standardized':<{sw}}input -> output"]
    lines += [f"{a:<{width}}{b:<{sw}}{c}{d}".rstrip() for a, b, c, d in rows]
    lines.append(
        "A site is a module path or standardized name with .output or .input "
        "(layers.3.output); root.output is what the model returns; TransformerLens names "
        "(blocks.3.hook_resid_post) work too."
    )
    return "\n".join(lines)


def _standard_names(loaded: LoadedModel) -> dict[str, str]:
    """Raw path -> standardized name, for the names this model's table resolves."""
    names = loaded.names
    out: dict[str, str] = {}
    modules = dict(loaded.module.named_modules())
    for std in ("embed", "final_norm", "lm_head"):
        raw, _ = _try(names, std)
        if raw in modules:
            out[raw] = std
    base, _ = _try(names, "layers")
    if base in modules:
        out[base] = "layers"
        for i, _ in enumerate(modules[base].children()):
            out[f"{base}.{i}"] = f"layers.{i}"
            for part in (*LAYER_PARTS, *SUB_PARTS):
                raw, _ = _try(names, f"layers.{i}.{part}")
                if raw in modules:
                    out[raw] = f"layers.{i}.{part}"
    return out


def _try(names: Any, path: str) -> tuple[str | None, bool]:
    try:
        return names.translate(path)
    except KeyError:
        return None, False


def _folded_layers(loaded: LoadedModel, shapes: dict) -> dict[str, Any]:
    """Layers 1..N-1 whose subtree has the same modules and shapes as layer 0's: hidden, with
    one line standing for them in place of layer 1."""
    base, _ = _try(loaded.names, "layers")
    modules = dict(loaded.module.named_modules())
    if base not in modules:
        return {"hidden": [], "first_of": {}}
    layers = list(modules[base].named_children())

    def structure(prefix: str) -> list:
        inside = [n for n in modules if n == prefix or n.startswith(prefix + ".")]
        return [(n[len(prefix) :], shapes.get(n)) for n in inside]

    first = structure(f"{base}.{layers[0][0]}") if layers else []
    same = [n for n, _ in layers[1:] if structure(f"{base}.{n}") == first]
    if not same:
        return {"hidden": [], "first_of": {}}
    hidden = [f"{base}.{n}" for n in same]
    label = f"{same[0]}–{same[-1]}" if len(same) > 1 else same[0]
    indent = "  " * (base.count(".") + 1)
    line = (f"{indent}{label}", f"layers.{label}", "(same modules and shapes as layer 0)", "")
    return {"hidden": hidden, "first_of": {hidden[0]: line}}
