"""The model's module tree as one forward pass on the meta device records it: children, call
order (pre/post events per module), call counts and which modules return tuples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.loading import LoadedModel, meta_safe

__all__ = ["ModuleTree", "sample_inputs", "trace_tree"]


@dataclass
class ModuleTree:
    children: dict[str, list[str]]
    events: list[tuple[str, str]]  # ("pre" | "post", module) in execution order
    calls: dict[str, int]
    tuple_outputs: dict[str, int]  # module -> tuple length, for modules returning tuples
    # module -> "tensor" / "tuple" (led by a tensor), "+seq" if dim 1 is the sequence; or the
    # type it returns
    outputs: dict[str, str] | None = None
    # module -> (its first input's shape, its output's shape), as text (raysight modules)
    shapes: dict[str, tuple[str, str]] | None = None
    # (attr, module) whose value lays the tokens out flat, [batch × seq, ...] (OPT's MLP)
    flat: set[tuple[str, str]] | None = None

    def event_index(self, kind: str, module: str) -> int | None:
        try:
            return self.events.index((kind, module))
        except ValueError:
            return None


def sample_inputs(loaded: LoadedModel, sample: Any, length: int) -> dict[str, torch.Tensor]:
    """Forward inputs for one unpadded row: ``length`` token ids, or the sample tensor."""
    dev = loaded.device
    if loaded.kind == "tensor":
        return {"input": torch.as_tensor(sample, dtype=torch.float32).to(dev)[None]}
    ids = torch.zeros((1, length), dtype=torch.long, device=dev)
    inputs = {"input_ids": ids}
    if loaded.kind == "causal":
        inputs["position_ids"] = torch.arange(length, device=dev)[None]
    return inputs


def trace_tree(loaded: LoadedModel, sample: Any = None, length: int | None = None) -> ModuleTree:
    """Record children, call order, tuple outputs and shapes with one meta-device forward of
    a row of ``length`` tokens (default ``_LENGTH``, which the ``+seq`` kinds are told by)."""
    module = loaded.module
    children: dict[str, list[str]] = {}
    for name, mod in module.named_modules():
        children[name] = [k for k, _ in mod.named_children()]
    events: list[tuple[str, str]] = []
    calls: dict[str, int] = {}
    tuples: dict[str, int] = {}
    outputs: dict[str, str] = {}
    shapes: dict[str, tuple[str, str]] = {}
    flat: set[tuple[str, str]] = set()
    length = length or _LENGTH
    handles = []

    def pre(name: str):
        def hook(mod, args):
            events.append(("pre", name))
            calls[name] = calls.get(name, 0) + 1

        return hook

    def post(name: str):
        def hook(mod, args, kwargs, out):
            events.append(("post", name))
            if isinstance(out, tuple) and type(out) is tuple:
                tuples[name] = len(out)
            outputs[name] = _kind(out, length)
            first = args[0] if args else next(iter(kwargs.values()), None)
            shapes[name] = (_shape(first), _shape(out))
            for attr, value in (("input", first), ("output", out)):
                if _token_flat(value, length, loaded.kind):
                    flat.add((attr, name))

        return hook

    try:
        for name, mod in module.named_modules():  # '' is the root: `root.input` / `.output`
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name), with_kwargs=True))
        inputs = sample_inputs(loaded, sample, length)
        with torch.inference_mode(), meta_safe(loaded):
            if loaded.kind == "tensor":
                module(inputs["input"])
            else:
                module(**inputs)
    finally:
        for h in handles:
            h.remove()
    return ModuleTree(children, events, calls, tuples, outputs, shapes, flat)


#: the sample's length in trace_tree: a value with it at dim 1 has a sequence dimension
_LENGTH = 6


def _kind(out: Any, length: int) -> str:
    """tensor / tuple (led by a tensor), with ``+seq`` when dim 1 is the sequence; else the
    type returned."""
    first = out[0] if type(out) is tuple and out else out
    if not torch.is_tensor(first):
        return "None" if out is None else type(out).__name__
    seq = "+seq" if first.dim() >= 2 and first.shape[1] == length else ""
    return ("tensor" if first is out else "tuple") + seq


def _token_flat(value: Any, length: int, kind: str) -> bool:
    """Whether a value of the one-row sample leads with its tokens, not the batch: a module that
    flattens [batch, seq] (the sample's batch is 1, so a batch-first value leads with 1)."""
    first = value[0] if type(value) is tuple and value else value
    return (
        kind != "tensor"
        and torch.is_tensor(first)
        and first.dim() >= 2
        and first.shape[0] == length
    )


def _shape(x: Any) -> str:
    if torch.is_tensor(x):
        return str(list(x.shape))
    if isinstance(x, tuple | list) and x:
        inner = _shape(x[0])
        return f"({inner}, …{len(x)})" if len(x) > 1 else f"({inner},)"
    return "-" if x is None else type(x).__name__
