"""From a hooked value to one row's value, and back.

A hooked value holds the whole batch. The *row view* of row b is what nnsight would show for that
prompt run alone: the batch dimension kept (size 1) and the padding cut off the sequence dimension
(dim 1 of a tensor whose dim 1 is the padded length). Index selectors apply to the row view, so
``[:, -1]`` is the row's last real token whatever the padding side; a selector that picks along
the batch dimension is refused, because rows are batched arbitrarily.
"""

from __future__ import annotations

from typing import Any

import torch

from ..spec.sites import IndexItem, Key, Slice

__all__ = [
    "SelectError",
    "abs_positions",
    "container_get",
    "container_set",
    "split_index",
    "to_torch_index",
]


class SelectError(ValueError):
    """A selector does not fit the value it is applied to."""


def split_index(
    index: tuple[tuple[IndexItem, ...], ...], value: Any, primary: bool
) -> tuple[tuple[int | str, ...], tuple[tuple[IndexItem, ...], ...]]:
    """Split index groups into a container path (ints into tuples/lists, names into keyword
    arguments) and tensor selectors.

    ``primary`` (standardized names) first picks element 0 of a tuple output, so the meaning of
    ``layers.N.output`` does not change with the transformers version; unless the index picks
    an element itself (``layers.N.attn.output[1]``: the attention weights), as on a raw path.
    """
    path: list[int | str] = []
    node = _items(value)
    picks = bool(index) and len(index[0]) == 1 and isinstance(index[0][0], int)
    if primary and isinstance(node, (tuple, list)) and not picks:
        path.append(0)
        node = _items(node[0])
    groups = list(index)
    while groups and isinstance(node, (tuple, list, dict)):
        group = groups.pop(0)
        if isinstance(node, dict):  # the kwargs half of .inputs, by name
            name = group[0].name if isinstance(group[0], Key) else None
            if name not in node:
                got = ", ".join(node) or "none"
                want = f"no keyword argument '{name}'" if name else "pick a keyword argument"
                raise SelectError(f"{want} with ['name'] (the module got: {got})")
            path.append(name)
            node = _items(node[name])
            continue
        if len(group) != 1 or not isinstance(group[0], int):
            raise SelectError(f"the value is a {type(node).__name__}; pick an element with [k]")
        k = group[0]
        if not -len(node) <= k < len(node):
            raise SelectError(f"index [{k}] is out of range for a {len(node)}-element tuple")
        path.append(k % len(node))
        node = _items(node[k])
    if isinstance(node, dict):
        got = ", ".join(node) or "none"
        raise SelectError(f"the value is a dict of keyword arguments ({got}); pick one: ['name']")
    if node is None:
        raise SelectError(
            "the value is None (an attention module returns its weights only under "
            "model.attn_implementation: eager)"
        )
    if not torch.is_tensor(node):
        raise SelectError(f"the value is {type(node).__name__}, not a tensor")
    return tuple(path), tuple(groups)


def _items(value: Any) -> Any:
    """An HF ModelOutput (what a model returns: logits, past key values...) as the tuple of its
    set fields, as HF indexes it (``output[0]`` is the logits)."""
    return value.to_tuple() if _is_model_output(value) else value


def _is_model_output(value: Any) -> bool:
    return isinstance(value, dict) and hasattr(value, "to_tuple")


def container_get(value: Any, path: tuple[int | str, ...]) -> Any:
    for k in path:
        value = _items(value)[k]
    return value


def container_set(value: Any, path: tuple[int | str, ...], new: Any) -> Any:
    """A copy of the container with the element at ``path`` replaced (tuples are immutable)."""
    if not path:
        return new
    k, rest = path[0], path[1:]
    if isinstance(value, dict) and isinstance(k, str):  # a keyword argument
        return {**value, k: container_set(value[k], rest, new)}
    if _is_model_output(value):  # the same class, one field replaced
        key = list(value.keys())[k]
        return type(value)(**{**value, key: container_set(value[key], rest, new)})
    items = list(value)
    items[k] = container_set(items[k], rest, new)
    return tuple(items) if isinstance(value, tuple) else items


def to_torch_index(group: tuple[IndexItem, ...], rank: int, where: str) -> tuple[Any, ...]:
    """Convert a selector group, checking it keeps the batch dimension (dim 0) whole."""
    items: list[Any] = []
    for it in group:
        if isinstance(it, Key):
            raise SelectError(
                f"{where}: [{it}] picks a keyword argument, but the value is a tensor"
            )
        items.append(slice(it.start, it.stop, it.step) if isinstance(it, Slice) else it)
    first = items[0] if items else slice(None)
    if first is not ... and first != slice(None):
        raise SelectError(
            f"{where}: the first index item selects along the batch dimension; rows are "
            "batched, so write ':' there (e.g. [:, -1] for the last token). "
            "On transformers 5.x a layer's output is a tensor: output[0] picks batch row 0"
        )
    n_real = sum(1 for i in items if i is not None and i is not ...)
    if n_real > rank:
        raise SelectError(f"{where}: {n_real} indices for a value with {rank} dimensions")
    return tuple(items)


def abs_positions(
    positions: list[int] | list[list[int]],
    starts: list[int],
    lengths: list[int],
    device: torch.device,
) -> torch.Tensor:
    """[rows, len(positions)] indices into the padded sequence for positions among real tokens
    (the same for every row, or one list per row).

    Callers check lengths first; out-of-range positions are row errors, reported before the
    forward pass.
    """
    pos = torch.tensor(positions, dtype=torch.long)
    n = torch.tensor(lengths, dtype=torch.long)[:, None]
    s = torch.tensor(starts, dtype=torch.long)[:, None]
    return (s + torch.where(pos < 0, pos + n, pos)).to(device)
