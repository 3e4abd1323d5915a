"""Read input rows (jsonl, parquet, txt or inline prompts) and check each one.

A bad row never stops the run: it becomes a :class:`RowError` naming the row and the reason,
written to the dataset's error report, and every other row goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec.models import DataSpec

__all__ = ["DataError", "PairTexts", "Row", "RowError", "id_type", "read_rows", "tensor_sample"]


class DataError(ValueError):
    """The input as a whole cannot be read (missing file, unknown format, duplicate ids)."""


@dataclass(frozen=True)
class Row:
    index: int  # position in the input; shards are ranges of it
    example_id: Any  # the index, or the id column's value
    payload: Any  # text, PairTexts (data.pair), or a numeric list for tensor models
    fields: dict[str, Any] | None = None  # other columns the spec reads (loss targets)


@dataclass(frozen=True)
class PairTexts:
    """A pair row's payload: one text per data.pair field, and its position map if any."""

    texts: list[str]
    position_map: list[list[int]] | None = None


@dataclass(frozen=True)
class RowError:
    index: int
    example_id: Any
    reason: str


def _records(spec: DataSpec, base: Path) -> list[Any]:
    if spec.prompts is not None:
        return list(spec.prompts)
    path = Path(spec.source)  # type: ignore[arg-type]
    if not path.is_absolute() and not path.exists():
        path = base / path
    if not path.exists():
        raise DataError(f"data.source {spec.source!r}: file not found")
    if not path.is_file():  # a FIFO blocks forever, /dev/zero never ends
        raise DataError(f"data.source {spec.source!r}: not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix in (".jsonl", ".ndjson"):
        out = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    out.append(_Unreadable(f"line {n} is not valid JSON: {e.msg}"))
        return out
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"data.source {spec.source!r}: unknown format {suffix!r} (jsonl, parquet, txt)")


@dataclass(frozen=True)
class _Unreadable:
    reason: str


def _field(rec: Any, name: str) -> tuple[bool, Any]:
    if isinstance(rec, dict):
        return name in rec, rec.get(name)
    return False, None


def read_rows(
    spec: DataSpec, base: str | Path = ".", keep: list[tuple[str, str]] = ()
) -> tuple[list[Row], list[RowError], int]:
    """Usable rows and unusable rows (with reasons), in input order, and the input row count.

    ``keep`` lists (column, spec field that needs it): each row carries those columns along.
    """
    records = _records(spec, Path(base))
    if spec.limit is not None:
        records = records[: spec.limit]
    rows: list[Row] = []
    errors: list[RowError] = []
    seen: dict[Any, int] = {}
    for i, rec in enumerate(records):
        eid: Any = i
        if spec.id_field is not None:
            has, eid = _field(rec, spec.id_field)
            if not has or not isinstance(eid, (int, str)) or isinstance(eid, bool):
                raise DataError(
                    f"row {i}: data.id_field {spec.id_field!r} is missing or not an int/string"
                )
            if eid in seen:
                raise DataError(f"rows {seen[eid]} and {i} share the id {eid!r} (data.id_field)")
            seen[eid] = i
        if isinstance(rec, _Unreadable):
            errors.append(RowError(i, eid, rec.reason))
            continue
        problem, payload = _payload(spec, rec)
        fields = {}
        for name, where in keep:
            has, fields[name] = _field(rec, name)
            if not has and not problem:
                problem = f"no field {name!r} ({where}.field)"
        if problem:
            errors.append(RowError(i, eid, problem))
        else:
            rows.append(Row(i, eid, payload, fields or None))
    if spec.id_field is not None and len({type(r.example_id) for r in rows}) > 1:
        raise DataError(f"data.id_field {spec.id_field!r} mixes ints and strings")
    return rows, errors, len(records)


def _payload(spec: DataSpec, rec: Any) -> tuple[str | None, Any]:
    if spec.input_field is not None:
        has, val = _field(rec, spec.input_field)
        if not has:
            return f"no field {spec.input_field!r} (data.input_field)", None
        if not isinstance(val, list) or not val:
            return f"field {spec.input_field!r} must be a non-empty list of numbers", None
        return None, val
    if spec.pair is not None:
        return _pair_payload(spec, rec)
    text = rec
    if isinstance(rec, dict) or (spec.prompts is None and not isinstance(rec, str)):
        has, text = _field(rec, spec.text_field)
        if not has:
            return f"no field {spec.text_field!r} (data.text_field)", None
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string", None
    if not text.strip():
        return "text is empty", None
    return None, text


def _pair_payload(spec: DataSpec, rec: Any) -> tuple[str | None, Any]:
    pair = spec.pair
    if not isinstance(rec, dict):
        return f"a pair row is a record with fields {pair.fields} (data.pair.fields)", None
    texts, pmap = [], None
    for name in pair.fields:
        has, text = _field(rec, name)
        if not has:
            return f"no field {name!r} (data.pair.fields)", None
        if not isinstance(text, str) or not text.strip():
            return f"field {name!r} (data.pair.fields) must be a non-empty string", None
        texts.append(text)
    if pair.position_map is not None:
        has, pmap = _field(rec, pair.position_map)
        ok = isinstance(pmap, list) and all(
            isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p) for p in pmap
        )
        if not has:
            return f"no field {pair.position_map!r} (data.pair.position_map)", None
        if not ok:
            return (
                f"field {pair.position_map!r} (data.pair.position_map) must be a list of "
                "[position, position] integer pairs",
                None,
            )
    return None, PairTexts(texts, pmap)


def tensor_sample(spec: DataSpec, rows: list[Row]) -> Any:
    """The first row's numeric input, which a factory model's meta-device trace needs."""
    return rows[0].payload if rows and spec.input_field else None


def id_type(rows: list[Row]) -> str:
    """The Arrow type alias of the example_id column (read_rows checks ids are uniform)."""
    return "string" if rows and isinstance(rows[0].example_id, str) else "int64"
