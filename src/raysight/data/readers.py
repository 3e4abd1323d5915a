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
    try:
        if suffix == ".txt":
            with path.open("rb") as f:
                return [_decoded(line.rstrip(b"\r\n"), n) for n, line in enumerate(f, 1)]
        if suffix in (".jsonl", ".ndjson"):
            with path.open("rb") as f:
                return [_json_line(line, n) for n, line in enumerate(f, 1) if line.strip()]
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except (pa.ArrowException, ValueError) as e:
                raise DataError(
                    f"data.source {spec.source!r}: not a readable Parquet file ({e})"
                ) from None
    except OSError as e:
        raise DataError(f"data.source {spec.source!r}: cannot read it ({e})") from None
    raise DataError(f"data.source {spec.source!r}: unknown format {suffix!r} (jsonl, parquet, txt)")


def _decoded(raw: bytes, n: int) -> str | _Unreadable:
    """One line as text; a line that is not UTF-8 is a row error, not the end of the run."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _Unreadable(f"line {n} is not valid UTF-8 (byte {raw[e.start]:#04x} at {e.start})")


def _json_line(raw: bytes, n: int) -> Any:
    text = _decoded(raw, n)
    if isinstance(text, _Unreadable):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _Unreadable(f"line {n} is not valid JSON: {e.msg}")
    except RecursionError:
        return _Unreadable(f"line {n} nests too deeply")


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
        if isinstance(rec, _Unreadable):  # no id can be read from it: named by its row
            errors.append(RowError(i, i if spec.id_field is None else f"<row {i}>", rec.reason))
            continue
        if spec.id_field is not None:
            has, eid = _field(rec, spec.id_field)
            bad = _bad_id(has, eid, spec.id_field)
            if bad:
                errors.append(RowError(i, f"<row {i}>", bad))
                continue
            if eid in seen:
                raise DataError(f"rows {seen[eid]} and {i} share the id {eid!r} (data.id_field)")
            seen[eid] = i
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


def _bad_id(has: bool, eid: Any, field: str) -> str | None:
    """Why a row's id cannot be used (ids are int64 or strings), or None."""
    if not has:
        return f"no field {field!r} (data.id_field)"
    if isinstance(eid, bool) or not isinstance(eid, (int, str)):
        return f"id {eid!r} is not an int or a string (data.id_field)"
    if isinstance(eid, int) and not -(2**63) <= eid < 2**63:
        return f"id {eid} does not fit in int64 (data.id_field)"
    return None


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
