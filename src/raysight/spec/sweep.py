"""Sweeps: the ``sweep:`` section and the placeholders it fills in.

A sweep names axes (a list of values, or an integer range ``"a:b[:step]"``); their product gives
the variants. Ops and edits may hold placeholders — ``{layer}``, ``{layer-1}``, ``{pos+2}`` — in
their sites, ``as``-less column names, positions, number values and file scales. Each variant is
the spec's ops with every placeholder filled in and validated again, so a variant that names a
bad value is reported with its field and its sweep point. Pure Python: no torch.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field

__all__ = [
    "MAX_VARIANTS",
    "PLACEHOLDER",
    "Axis",
    "Placeholder",
    "Variant",
    "axis_values",
    "fill",
    "has_placeholder",
    "placeholder_names",
    "point_label",
    "points",
    "syntax_text",
]

MAX_VARIANTS = 100_000
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)([+-]\d+)?\}")
_RANGE = re.compile(r"^(-?\d+):(-?\d+)(?::([1-9]\d*))?$")

Axis = Annotated[
    list[int | float | str] | str,
    Field(
        description="The axis's values: a list (ints, floats or strings), or an integer range "
        "'a:b' or 'a:b:step' (b excluded, as in Python)."
    ),
]
Placeholder = Annotated[
    str,
    Field(
        pattern=PLACEHOLDER.pattern.join("^$"),
        description="A sweep placeholder such as '{pos}' or '{layer-1}', filled in per variant.",
    ),
]


@dataclass(frozen=True)
class Variant:
    """One sweep point: its index, the axis values, and the spec's ops filled in."""

    index: int
    values: dict[str, Any]
    edits: tuple = ()
    ops: tuple = ()
    columns: dict[int, str] = field(default_factory=dict)  # ops index -> column (templated sites)

    @property
    def label(self) -> str:
        return point_label(self.values)


def point_label(point: dict[str, Any]) -> str:
    """A sweep point as messages show it: ``layer=3, pos=-1``."""
    return ", ".join(f"{k}={v!r}" for k, v in point.items())


def axis_values(axis: list | str) -> list:
    """An axis's values; raises ValueError for a bad range or an empty axis."""
    if isinstance(axis, str):
        m = _RANGE.match(axis.strip())
        if m is None:
            raise ValueError(f"{axis!r} is not a range 'a:b' or 'a:b:step'; use a list for text")
        start, stop, step = int(m[1]), int(m[2]), int(m[3] or 1)
        count = max(0, -((start - stop) // step))  # len(range(...)) without building it
        if count > MAX_VARIANTS:
            raise ValueError(f"{axis!r} has {count:,} values; a sweep has at most {MAX_VARIANTS:,}")
        values = list(range(start, stop, step))
    else:
        values = list(axis)
    if not values:
        raise ValueError("the axis has no values")
    if len(set(map(repr, values))) != len(values):
        raise ValueError("the axis repeats a value")
    return values


def points(axes: dict[str, list | str]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest; raises ValueError
    (before building any) when there would be more than MAX_VARIANTS."""
    names = list(axes)
    grids = [axis_values(axes[n]) for n in names]
    count = math.prod(len(g) for g in grids)
    if count > MAX_VARIANTS:
        sizes = " x ".join(f"{n} {len(g)}" for n, g in zip(names, grids))
        raise ValueError(f"{sizes} = {count:,} variants; at most {MAX_VARIANTS:,}")
    return [dict(zip(names, combo)) for combo in itertools.product(*grids)]


def has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return PLACEHOLDER.search(value) is not None
    if isinstance(value, dict):
        return any(has_placeholder(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_placeholder(v) for v in value)
    return False


def placeholder_names(value: Any) -> set[str]:
    if isinstance(value, str):
        return {m[1] for m in PLACEHOLDER.finditer(value)}
    if isinstance(value, dict):
        return set().union(*map(placeholder_names, value.values()))
    if isinstance(value, (list, tuple)):
        return set().union(*map(placeholder_names, value))
    return set()


def syntax_text(text: str) -> str:
    """``text`` with each placeholder replaced by 0, for checking a templated site's grammar;
    a stray brace is an error."""
    plain = PLACEHOLDER.sub("0", text)
    if "{" in plain or "}" in plain:
        raise ValueError(
            f"{text!r}: a placeholder is {{name}}, {{name+k}} or {{name-k}} (name: a sweep axis)"
        )
    return plain


def _value(name: str, offset: str | None, point: dict[str, Any]) -> Any:
    v = point[name]
    if offset is None:
        return v
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{{{name}{offset}}}: only integer axes take an offset; {name}={v!r}")
    return v + int(offset)


def fill(value: Any, point: dict[str, Any]) -> Any:
    """``value`` (JSON-like) with every placeholder filled from ``point``. A string that is one
    placeholder takes the axis value's own type (``"{pos}"`` -> -1); inside a longer string the
    value is written as text (``"layers.{layer}"`` -> ``"layers.3"``)."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return _value(whole[1], whole[2], point)
        return PLACEHOLDER.sub(lambda m: str(_value(m[1], m[2], point)), value)
    if isinstance(value, dict):
        return {k: fill(v, point) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, point) for v in value]
    return value
