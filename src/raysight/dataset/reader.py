"""``raysight.open(path)``: a dataset as torch tensors, a pyarrow table, or a polars/pandas frame.

The files are plain Parquet / Arrow IPC, so pyarrow, polars, duckdb and Ray Data read them too;
this reader adds what they cannot know: tensors stored as bytes (always for bfloat16) back to
torch tensors, and per-row token dimensions back to a list of tensors.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch

from ..errors import RaysightError
from ..writers.encode import _TORCH
from .decode import decode, fixed_view
from .manifest import Manifest, ShardEntry, same_schema
from .records import adopt_records, read_errors
from .store import Store

__all__ = ["DamagedDataset", "Dataset", "UnknownColumn", "open_dataset"]


class DamagedDataset(RaysightError, RuntimeError):
    """A shard file that is not the one its run wrote (missing, resized, unreadable, or with a
    page whose checksum fails); the message names it. ``raysight verify`` lists every problem."""


class Dataset:
    """The finished shards of a dataset, in shard order: those its manifest lists, and those
    with a completion record that a run still writing has not listed yet (never a glob: a
    stray or copied ``part-*`` file is not read). Shards not finished yet are in ``missing``."""

    def __init__(self, path: str | Path):
        self.store = Store(path)
        self.path: Path | str = self.store.dir if self.store.local else self.store.uri
        manifest = Manifest.read(self.store)  # ManifestError where it is not one
        if manifest is None:
            raise FileNotFoundError(f"{self.path} is not a raysight dataset (no _manifest.json)")
        if len(manifest.done()) < manifest.expected_shards:  # a run is writing, or was killed
            adopt_records(self.store, manifest)
        self.manifest: Manifest = manifest
        self._shards = manifest.done()
        self.missing = [k for k in range(manifest.expected_shards) if k not in self._shards]
        planned = manifest.planned_schema()
        for k, entry in self._shards.items():  # cheap checks now; page checksums on read
            self._check(k, entry, planned)
        self._schema: pa.Schema = planned
        self._info = {c["name"]: c for c in manifest.columns}
        if self.missing:
            warnings.warn(
                f"{self.path} is incomplete: shard(s) {self.missing} are not finished (rerun the "
                "same command to finish them); reading the finished ones",
                stacklevel=3,
            )

    def _check(self, k: int, entry: ShardEntry, planned: pa.Schema) -> None:
        """The shard's file exists with the size the run recorded and the plan's schema (read
        from its footer), so each file decodes with the dtype and shape of the manifest."""
        name = entry.file
        size = self.store.size(name)
        if size is None:
            raise DamagedDataset(f"shard {k}: its file {name} is missing")
        if size != entry.bytes:
            raise DamagedDataset(
                f"shard {k}: {name} has {size} bytes, the manifest says {entry.bytes} "
                "(run raysight verify)"
            )
        try:
            schema = self._file_schema(name)
        except (OSError, pa.ArrowException) as e:
            raise DamagedDataset(f"shard {k}: {name} cannot be read ({e})") from None
        if not same_schema(schema, planned):
            raise DamagedDataset(f"shard {k}: {name} has a schema other than the plan's")

    def _file_schema(self, name: str) -> pa.Schema:
        with self.store.open_input(name) as src:
            if name.endswith(".parquet"):
                return pq.read_schema(src)
            return ipc.open_file(src).schema

    @property
    def files(self) -> list[Path] | list[str]:
        """The finished shards' files: paths, or URLs on an object store."""
        if self.store.local:
            return [self.store.dir / s.file for s in self._shards.values()]
        return [self.store.url(s.file) for s in self._shards.values()]

    @property
    def columns(self) -> list[str]:
        """The saved values' columns (``schema.names`` has the identity columns too)."""
        return list(self._info)

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self._shards.values())

    # -------------------------------------------------------------- streaming
    def iter_batches(
        self,
        columns: list[str] | None = None,
        rows: range | slice | None = None,
        batch_rows: int = 65_536,
        filter: Any = None,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns`` (default: all), in shard order, at most ``batch_rows``
        rows each; memory is bounded by the batch, not the dataset. ``filter`` is a pyarrow
        compute expression (``pc.field("example_id") == 3``) pushed down to the files;
        ``rows`` selects a range of the rows (after ``filter``) and skips whole shards."""
        cols = self._checked(columns)
        start, stop = _bounds(rows)
        pos = 0  # rows (after the filter) before the current shard
        for k, entry in self._shards.items():
            if filter is None and stop is not None and pos >= stop:
                return
            if filter is None and pos + entry.rows <= start:
                pos += entry.rows
                continue
            for batch in self._scan(k, entry, cols, filter, batch_rows):
                lo, hi = max(start - pos, 0), batch.num_rows
                if stop is not None:
                    hi = min(hi, stop - pos)
                pos += batch.num_rows
                if lo < hi:
                    yield batch.slice(lo, hi - lo)
                if stop is not None and pos >= stop:
                    return

    def iter_torch(
        self,
        columns: list[str] | None = None,
        rows: range | slice | None = None,
        batch_rows: int = 4096,
        filter: Any = None,
    ) -> Iterator[dict[str, Any]]:
        """Dicts of column -> torch tensor [batch, ...] (a list of tensors where rows differ in
        length; a list of str for text and string ids), one per batch of ``batch_rows`` rows."""
        for batch in self.iter_batches(columns, rows, batch_rows, filter):
            yield {name: self._to_torch(name, batch.column(name)) for name in batch.schema.names}

    def table(
        self,
        columns: list[str] | None = None,
        filter: Any = None,
        rows: range | slice | None = None,
    ) -> pa.Table:
        """The dataset (or ``columns``, or the rows passing ``filter``, or a ``rows`` range of
        them) as one pyarrow table; a range reads only the shards it covers."""
        if not self._shards:
            raise FileNotFoundError(f"{self.path} has no finished data files yet")
        cols = self._checked(columns)
        batches = list(self.iter_batches(cols, rows=rows, filter=filter))
        return pa.Table.from_batches(batches, schema=self.schema_of(cols))

    def to_torch(
        self,
        column: str,
        rows: range | slice | None = None,
        filter: Any = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """A column as one tensor [rows, ...], or a list when rows differ in length. A
        fixed-shape column is decoded batch by batch into one tensor allocated up front, so
        the peak is the result and one batch."""
        (name,) = self._checked([column])
        info = self._info.get(name)
        if info is None or None in info["shape"]:
            parts = [
                self._to_torch(name, b.column(name))
                for b in self.iter_batches([name], rows, filter=filter)
            ]
            if parts and isinstance(parts[0], torch.Tensor):
                return torch.cat(parts)
            return [x for p in parts for x in p]
        n = self._count(rows, filter)
        out = torch.empty((n, *info["shape"]), dtype=_TORCH[info["dtype"]])
        # batches of ~1/40 of the result (1-64 MiB): the peak stays near 1.1-1.2x the result
        row_bytes = max(1, out[:1].nbytes)
        target = min(64 * 2**20, max(2**20, n * row_bytes // 40))
        # copied once, straight from the Arrow buffers into the result
        flat = (out.view(torch.int16) if out.dtype == torch.bfloat16 else out).numpy().reshape(-1)
        width, at = flat.size // max(n, 1), 0
        for batch in self.iter_batches([name], rows, max(1, target // row_bytes), filter):
            values = fixed_view(batch.column(name), info["dtype"], list(info["shape"]))
            flat[at * width : (at + batch.num_rows) * width] = values.view(flat.dtype)
            at += batch.num_rows
            pa.default_memory_pool().release_unused()  # keep freed batches off the RSS
        return out

    # -------------------------------------------------------------- helpers
    def _checked(self, columns: list[str] | None) -> list[str]:
        if columns is None:
            return list(self._schema.names)
        if isinstance(columns, str):
            columns = [columns]
        unknown = [c for c in columns if c not in self._schema.names]
        if unknown:
            raise UnknownColumn(
                f"{self.path}: no column {', '.join(map(repr, unknown))}; the columns are "
                + ", ".join(self._schema.names)
            )
        return list(columns)

    def schema_of(self, columns: list[str]) -> pa.Schema:
        """The schema of ``columns`` (what iter_batches yields for them)."""
        return pa.schema([self._schema.field(c) for c in columns])

    def _scan(
        self,
        k: int,
        entry: ShardEntry,
        cols: list[str],
        filter: Any,
        batch_rows: int,
    ) -> Iterator[pa.RecordBatch]:
        name = entry.file
        try:
            # little read-ahead: pyarrow's default (16 batches) would hold ~16 batches at once;
            # one thread: each scan thread's allocator keeps what it freed
            scanner = self._file(entry).scanner(
                columns=cols,
                filter=filter,
                batch_size=batch_rows,
                batch_readahead=1,
                fragment_readahead=1,
                use_threads=False,
            )
            yield from scanner.to_batches()
        except (OSError, pa.ArrowException) as e:
            raise DamagedDataset(
                f"shard {k}: {name} cannot be read ({e}); run raysight verify"
            ) from None

    def _file(self, entry: ShardEntry) -> pads.Dataset:
        """One shard's file as a pyarrow dataset (projection and filters pushed down; Parquet
        page checksums verified)."""
        fmt = _PARQUET if entry.file.endswith(".parquet") else "ipc"
        path = self.store.path(entry.file)
        return pads.dataset(path, format=fmt, schema=self._schema, filesystem=self.store.fs)

    def _count(self, rows: range | slice | None, filter: Any) -> int:
        if filter is None:
            n = self.num_rows
        else:
            try:
                n = sum(self._file(e).count_rows(filter=filter) for e in self._shards.values())
            except (OSError, pa.ArrowException) as e:
                raise DamagedDataset(f"{self.path}: cannot count rows ({e})") from None
        start, stop = _bounds(rows)
        return max(0, min(n, n if stop is None else stop) - start)

    def _to_torch(self, name: str, col: pa.ChunkedArray | pa.Array) -> Any:
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        info = self._info.get(name)
        if info is not None:
            return decode(arr, info["dtype"], list(info["shape"]))
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            return torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy())
        return arr.to_pylist()

    def polars(self):
        import polars as pl

        return pl.from_arrow(self.table())

    def pandas(self):
        return self.table().to_pandas()

    def hf(self):
        """An HF ``datasets.Dataset``: a fixed-shape tensor column is nested lists of fixed
        size (``with_format("torch")`` gives [rows, *shape]), a per-token value a list per token.
        (Datasets written before raysight stored fixed shapes as nested lists used Arrow's
        fixed_shape_tensor, which datasets has no type for: those arrive flattened, one list
        per row, to be reshaped with ``self.manifest.columns``.)"""
        import datasets

        table = self.table()
        cols = [
            c.combine_chunks().storage if isinstance(c.type, pa.BaseExtensionType) else c
            for c in table.columns
        ]
        return datasets.Dataset(pa.table(cols, names=table.column_names))

    def ray(self):
        """A Ray Dataset over the shard files, one block per file (Parquet or Arrow IPC), whose
        fixed-shape tensor columns come out as ndarrays ([rows, *shape] in a numpy batch)."""
        import ray.data

        from ._ray_arrow import ArrowIPCDatasource, as_tensors

        files = [str(f) for f in self.files]
        if (self.manifest.format_files or "parquet") == "parquet":
            rd = ray.data.read_parquet(files)
        else:
            rd = ray.data.read_datasource(ArrowIPCDatasource(files))
        names = [
            c["name"]
            for c in self.manifest.columns
            if c["shape"]
            and c["shape"][0] is not None
            and c.get("storage") == "typed"
            and c["dtype"] != "bfloat16"
        ]
        if not names:
            return rd
        return rd.map_batches(
            as_tensors, batch_format="pyarrow", zero_copy_batch=True, fn_kwargs={"names": names}
        )

    def __repr__(self) -> str:
        done, n = len(self._shards), self.manifest.expected_shards
        return f"raysight.Dataset({str(self.path)!r}: {done}/{n} shards, columns {self.columns})"

    def _repr_html_(self) -> str:  # a notebook shows what `raysight inspect` prints
        import html

        from .verify import inspect

        return f"<pre>{html.escape(inspect(self.path))}</pre>"

    def plot(self, out: str | Path | None = None, kind: str = "auto", **kw: Any):
        """The dataset's first plot (dataset/plot.py: grid, lens, top, norms or text, chosen
        from the manifest); written to ``out`` (.png, .svg, .pdf, .html) when given. Returns the
        Chart, which a notebook shows."""
        from .plot import plot

        chart = plot(self, kind, **kw)
        if out is not None:
            chart.save(out)
        return chart

    def errors(self) -> list[dict[str, Any]]:
        """The finished shards' row errors (from their completion records, which are also
        current while a run is still writing ``_errors.jsonl``)."""
        return list(read_errors(self.store, self.manifest))


class UnknownColumn(RaysightError, KeyError):
    """A column the dataset does not have; the message lists the ones it has."""

    def __str__(self) -> str:
        return str(self.args[0])


def _use_jemalloc() -> None:
    """Make jemalloc pyarrow's allocator, unless ARROW_DEFAULT_MEMORY_POOL chose one. Measured
    (benchmarks/reader_memory.py): over a 384 MiB column, a pass of iter_torch peaked at 0.25x
    of it with jemalloc and 0.7-1.07x with the default mimalloc, which keeps freed batches, and
    to_torch at 1.14x against 1.45-1.6x. A scanner's own memory_pool does not cover the Parquet
    decoder's allocations, so the default is what must change."""
    if (
        os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
        or pa.default_memory_pool().backend_name != "mimalloc"
    ):
        return
    with contextlib.suppress(NotImplementedError):  # a pyarrow build without jemalloc
        pa.set_memory_pool(pa.jemalloc_memory_pool())


# Page checksums verified on every read. No pre-buffering: it caches whole row groups, which
# helps on high-latency object stores and only costs memory on a local disk.
_PARQUET = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(
        page_checksum_verification=True, pre_buffer=False
    )
)


def _bounds(rows: range | slice | None) -> tuple[int, int | None]:
    """[start, stop) of a contiguous row selection (stop None: to the end)."""
    if rows is None:
        return 0, None
    step = rows.step if rows.step is not None else 1
    if step != 1 or (rows.start or 0) < 0 or (rows.stop is not None and rows.stop < 0):
        raise ValueError(f"rows={rows!r}: give a contiguous, non-negative range")
    return rows.start or 0, rows.stop


def open_dataset(path: str | Path) -> Dataset:
    """Open a raysight output directory (pyarrow's allocator becomes jemalloc, see
    _use_jemalloc)."""
    _use_jemalloc()
    return Dataset(path)
