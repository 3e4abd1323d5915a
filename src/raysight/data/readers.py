"""Read a range of input rows (Parquet, Arrow, JSONL, txt, or inline prompts) and check each.

A shard's worker reads its own rows (data/sources.py says which files and rows they are),
projecting just the columns the spec needs. A bad row never stops the run: it becomes a
:class:`RowError` naming the row and the reason, written to the dataset's error report, and every
other row goes on. Every line of a line file is a row, so a blank JSONL line is a row error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..spec.models import DataSpec
from .sources import DataError, InputFile, Source, filesystem, iter_lines, open_source

__all__ = [
    "DataError",
    "PairTexts",
    "Row",
    "RowError",
    "id_type",
    "input_source",
    "read_range",
    "read_rows",
    "tensor_sample",
    "total_rows",
]


@dataclass(frozen=True)
class Row:
    index: int  # global row index in the input; shards are ranges of it
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


def input_source(spec: DataSpec, base: str | Path = ".") -> Source | None:
    """The input files and their row counts (metadata only); None for inline prompts."""
    if spec.prompts is not None:
        return None
    return open_source(spec.source, base, spec.format, spec.limit)  # type: ignore[arg-type]


def total_rows(spec: DataSpec, source: Source | None) -> int:
    if source is not None:
        return source.total
    return len(spec.prompts[: spec.limit])  # type: ignore[index]


def _columns(spec: DataSpec, keep: Iterable[tuple[str, str]]) -> list[str]:
    """The columns the spec reads: only these are read from Parquet and Arrow files."""
    if spec.input_field is not None:
        cols = [spec.input_field]
    elif spec.pair is not None:
        cols = [*spec.pair.fields, *([spec.pair.position_map] if spec.pair.position_map else [])]
    else:
        cols = [spec.text_field]
    cols += [spec.id_field] if spec.id_field else []
    return list(dict.fromkeys([*cols, *(name for name, _ in keep)]))


def _records(
    spec: DataSpec, source: Source | None, lo: int, hi: int, columns: list[str]
) -> Iterator[tuple[int, Any]]:
    """(global index, record) for rows [lo, hi); a record that cannot be read is _Unreadable."""
    if source is None:
        prompts = spec.prompts[: spec.limit]  # type: ignore[index]
        for i in range(lo, min(hi, len(prompts))):
            yield i, prompts[i]
        return
    for k, a, b in source.pieces(lo, hi):
        f = source.files[k]
        where = f" of {f.uri}" if len(source.files) > 1 else ""
        try:
            read = _table_records if f.fmt in ("parquet", "arrow") else _line_records
            yield from enumerate(read(f, a, b, columns, where), source.starts[k] + a)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"data.source {f.uri!r}: cannot read rows {a}-{b} ({e})") from None


def _table_records(f: InputFile, a: int, b: int, columns: list[str], where: str) -> Iterator:
    """Rows [a, b) of a Parquet or Arrow file as dicts of the spec's columns (the others are
    never read: a column the file lacks is missing from every record)."""
    cols = [c for c in columns if c in f.columns]
    ends = np.cumsum(f.groups)
    first = int(np.searchsorted(ends, a, side="right"))
    pos = int(ends[first - 1]) if first else 0
    fs, path = filesystem(f.uri)
    with fs.open_input_file(path) as src:
        for batch in _batches(f, src, first, cols):
            lo, hi = max(a - pos, 0), min(b - pos, batch.num_rows)
            if lo < hi:
                part = batch.slice(lo, hi - lo)
                yield from part.to_pylist() if cols else ({} for _ in range(hi - lo))
            pos += batch.num_rows
            if pos >= b:
                return
    raise _changed(f)


def _batches(f: InputFile, src: Any, first: int, cols: list[str]) -> Iterator[pa.RecordBatch]:
    """The record batches of a file from row group (or IPC batch) ``first`` on."""
    if f.fmt == "parquet":
        pf = pq.ParquetFile(src)
        groups = list(range(first, pf.metadata.num_row_groups))
        yield from pf.iter_batches(batch_size=4096, row_groups=groups, columns=cols)
        return
    if f.stream:
        for i, batch in enumerate(ipc.open_stream(src)):
            if i >= first:
                yield batch.select(cols)
        return
    reader = ipc.open_file(src)
    for i in range(first, reader.num_record_batches):
        yield reader.get_record_batch(i).select(cols)


def _line_records(f: InputFile, a: int, b: int, columns: list[str], where: str) -> Iterator:
    """Lines [a, b) of a JSONL or txt file, parsed; seeks to the nearest recorded offset."""
    fs, path = filesystem(f.uri)
    if f.offsets:
        src = fs.open_input_file(path)
        src.seek(f.offsets[a // f.stride])
        skip = a % f.stride
    else:  # compressed: read from the start
        src = fs.open_input_stream(path, compression=f.codec)
        skip = a
    with src:
        lines = iter_lines(src)
        for _ in range(skip):
            next(lines, None)
        n = a
        for n, raw in zip(range(a + 1, b + 1), lines):
            if f.fmt == "txt":
                yield _decoded(raw.rstrip(b"\r"), n, where)
            else:
                yield _json_line(raw, n, where)
    if n < b:
        raise _changed(f)


def _changed(f: InputFile) -> DataError:
    return DataError(
        f"data.source {f.uri!r} has fewer rows than when the run was planned ({f.rows}): it "
        "changed; restore it, or start over with --overwrite"
    )


def _decoded(raw: bytes, n: int, where: str = "") -> str | _Unreadable:
    """One line as text; a line that is not UTF-8 is a row error, not the end of the run."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _Unreadable(
            f"line {n}{where} is not valid UTF-8 (byte {raw[e.start]:#04x} at {e.start})"
        )


def _json_line(raw: bytes, n: int, where: str = "") -> Any:
    text = _decoded(raw, n, where)
    if isinstance(text, _Unreadable):
        return text
    if not text.strip():  # every line is a row, so that rows and line numbers agree
        return _Unreadable(f"line {n}{where} is blank")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _Unreadable(f"line {n}{where} is not valid JSON: {e.msg}")
    except RecursionError:
        return _Unreadable(f"line {n}{where} nests too deeply")


@dataclass(frozen=True)
class _Unreadable:
    reason: str


def _field(rec: Any, name: str) -> tuple[bool, Any]:
    if isinstance(rec, dict):
        return name in rec, rec.get(name)
    return False, None


def read_range(
    spec: DataSpec,
    source: Source | None,
    lo: int,
    hi: int,
    keep: Iterable[tuple[str, str]] = (),
    id_kind: str | None = None,
) -> tuple[list[Row], list[RowError]]:
    """Usable and unusable rows (with reasons) among input rows [lo, hi), in input order.

    ``keep`` lists (column, spec field that needs it): each row carries those columns along.
    ``id_kind`` ('int64' or 'string') is the input's id type; rows of another type are errors
    (by default the first usable row's type). An id that repeats an earlier row's in the range
    is an error too; repeats across shards are found after the run (engine/ids.py).
    """
    keep = list(keep)
    rows: list[Row] = []
    errors: list[RowError] = []
    seen: dict[Any, int] = {}
    for i, rec in _records(spec, source, lo, hi, _columns(spec, keep)):
        eid: Any = i
        if isinstance(rec, _Unreadable):  # no id can be read from it: named by its row
            errors.append(RowError(i, i if spec.id_field is None else f"<row {i}>", rec.reason))
            continue
        if spec.id_field is not None:
            has, eid = _field(rec, spec.id_field)
            bad = _bad_id(has, eid, spec.id_field)
            kind = "string" if isinstance(eid, str) else "int64"
            id_kind = id_kind or (None if bad else kind)
            if not bad and kind != id_kind:
                bad = (
                    f"id {eid!r} is {'a string' if kind == 'string' else 'an int'}, but the "
                    f"input's ids are {'strings' if id_kind == 'string' else 'ints'} "
                    "(data.id_field)"
                )
            if not bad and eid in seen:
                bad = f"id {eid!r} is also row {seen[eid]}'s (data.id_field: ids are unique)"
            if bad:
                errors.append(RowError(i, f"<row {i}>", bad))
                continue
            seen[eid] = i
        problem, payload = _payload(spec, rec)
        fields = {}
        for name, where in keep:
            has, fields[name] = _field(rec, name)
            if not has and not problem:
                problem = (
                    f"no field {name!r} ({where if where == 'data.keep' else where + '.field'})"
                )
        if problem:
            errors.append(RowError(i, eid, problem))
        else:
            rows.append(Row(i, eid, payload, fields or None))
    return rows, errors


def read_rows(
    spec: DataSpec, base: str | Path = ".", keep: Iterable[tuple[str, str]] = ()
) -> tuple[list[Row], list[RowError], int]:
    """Every input row, checked, and the input row count: for small inputs and tests (a run
    reads each shard's rows in its worker)."""
    source = input_source(spec, base)
    total = total_rows(spec, source)
    rows, errors = read_range(spec, source, 0, total, keep)
    return rows, errors, total


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
    """The Arrow type alias of the example_id column (read_range checks ids are uniform)."""
    return "string" if rows and isinstance(rows[0].example_id, str) else "int64"
