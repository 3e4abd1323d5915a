"""Expand a spec's sweep into variants: each sweep point's edits and ops with the placeholders
filled in and validated again, every problem reported once with its field and sweep point."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from ._base import tag_by_key
from .sweep import (
    Variant,
    axis_values,
    fill,
    placeholder_names,
    point_label,
    points,
)

__all__ = [
    "RESERVED",
    "expand",
    "number_columns",
    "position_columns",
    "row_fields",
    "site_key",
    "token_fields",
]

#: identity columns of a dataset: saves and sweep axes may not take their names
RESERVED = (
    "example_id",
    "offset",
    "variant",
    "row",
    "n_tokens",
    "input_ids",
    "input_tokens",
    "text",
    "position",
    "token_id",
    "token",
    "n_generated",
    "generated_ids",
    "generated_tokens",
    "generated_text",
)
site_key = tag_by_key(("save", "cache", "grad"))  # the key of an op that names a saved site


def expand(spec: Any) -> tuple[list[Variant], list[str]]:
    """The spec's variants (one, unchanged, without a sweep) and the problems found."""
    from .load import _format_errors
    from .models import Edit, Op

    raw = {
        "edits": [e.model_dump(mode="json", by_alias=True, exclude_unset=True) for e in spec.edits],
        "ops": [o.model_dump(mode="json", by_alias=True, exclude_unset=True) for o in spec.ops],
    }
    axes = spec.sweep or {}
    problems = _placeholder_problems(raw, axes)
    if not axes:
        return [Variant(0, {}, tuple(spec.edits), tuple(spec.ops))], problems
    for name, axis in axes.items():
        try:
            axis_values(axis)
        except ValueError as e:
            problems.append(f"sweep.{name}: {e}")
        if not name.isidentifier():
            problems.append(f"sweep.{name}: an axis name is an identifier (letters, digits, _)")
        elif name in RESERVED:
            problems.append(f"sweep.{name}: '{name}' is an identity column; rename the axis")
    if problems:
        return [], problems
    try:
        grid = points(axes)
    except ValueError as e:  # too many points: counted before any was built
        return [], [f"sweep: {e}"]
    adapters = {"edits": TypeAdapter(list[Edit]), "ops": TypeAdapter(list[Op])}
    seen: dict[str, list[dict]] = {}  # problem -> the sweep points that have it
    variants = []
    for k, point in enumerate(grid):
        filled: dict[str, Any] = {}
        for section, items in raw.items():
            try:
                filled[section] = tuple(adapters[section].validate_python(fill(items, point)))
            except ValidationError as e:
                for p in _format_errors(e):
                    seen.setdefault(f"{section}.{p}", []).append(point)
            except ValueError as e:  # an offset on a non-integer axis
                seen.setdefault(f"{section}: {e}", []).append(point)
        if len(filled) == 2:
            variants.append(Variant(k, point, filled["edits"], filled["ops"], _columns(raw)))
    for p, where in seen.items():
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        problems.append(f"{p} (sweep point {point_label(where[0])}{more})")
    return variants, problems


def _placeholder_problems(raw: dict[str, list[dict]], axes: dict) -> list[str]:
    out = []
    used: set[str] = set()
    for section, items in raw.items():
        for i, item in enumerate(items):
            names = placeholder_names(item)
            used |= names
            unknown = sorted(names - set(axes))
            if unknown and not axes:
                out.append(
                    f"{section}.{i}: placeholder {{{unknown[0]}}} needs a sweep: section that "
                    "names its values"
                )
            elif unknown:
                out.append(
                    f"{section}.{i}: {{{unknown[0]}}} is not a sweep axis (axes: {', '.join(axes)})"
                )
            key = site_key(item)
            site = item.get(key, "") if key else ""
            if names and key and placeholder_names(site) and _is_pattern(site):
                out.append(
                    f"{section}.{i}.{key}: a site cannot hold both a placeholder and a "
                    "wildcard or range; sweep over the parts instead"
                )
    for name in axes:
        if name not in used:
            out.append(f"sweep.{name}: no op uses {{{name}}}")
    return out


def _is_pattern(site: str) -> bool:
    module = site.split("[")[0]
    return any(p == "*" or ":" in p for p in module.split("."))


def _columns(raw: dict[str, list[dict]]) -> dict[int, str]:
    """The column a templated save writes in every variant: its `as`, or the site as written
    (`layers.{layer}.output`), so variants share one schema."""
    out = {}
    for i, item in enumerate(raw["ops"]):
        key = site_key(item)
        if key is None or not placeholder_names(item[key]) or item.get("as"):
            continue
        suffix = ""
        if key == "grad":
            suffix = ".attribution" if item.get("attribution") else ".grad"
        out[i] = item[key] + suffix
    return out


def token_fields(spec: Any) -> list[tuple[str, str]]:
    """(data column, field path) for every token read per row from the data: the loss's targets
    and the metric reduces' tokens, over every variant."""
    from .backward import FieldRef, loss_fields
    from .reduce import metric_refs

    out = list(loss_fields(spec.backward))
    for variant in spec.variants:
        for i, op in enumerate(variant.ops):
            for name, ref in metric_refs(getattr(op, "reduce", None)).items():
                item = (ref.field, f"ops.{i}.reduce.{name}") if isinstance(ref, FieldRef) else None
                if item and item not in out:
                    out.append(item)
    return out


def number_columns(spec: Any) -> list[str]:
    """The data columns whose per-row numbers the ops read: {field: name} in a let of an op or
    of an expression loss, and positions: {field: name}."""
    from .values import NumberField, number_fields

    cols = {col for v in spec.variants for col, _ in number_fields(list(v.ops))}
    loss = spec.backward.loss if spec.backward else None
    cols |= {b.field for b in getattr(loss, "let", {}).values() if isinstance(b, NumberField)}
    return sorted(cols | set(position_columns(spec)))


def position_columns(spec: Any) -> list[str]:
    """The data columns that give an op (or the loss) one position per row."""
    from ._base import PositionField

    loss = spec.backward.loss if spec.backward else None
    ops = [*(op for v in spec.variants for op in (*v.edits, *v.ops)), loss]
    return sorted(
        {
            op.positions.field
            for op in ops
            if isinstance(getattr(op, "positions", None), PositionField)
        }
    )


def row_fields(spec: Any) -> list[tuple[str, str]]:
    """(data column, where it is asked for) for every column read per row besides the text:
    the tokens of :func:`token_fields`, the numbers expressions read, then ``data.keep``."""
    out = token_fields(spec)
    out += [(c, "ops (an expression's let)") for c in number_columns(spec) if c not in dict(out)]
    return out + [(name, "data.keep") for name in spec.data.keep if (name, "data.keep") not in out]
