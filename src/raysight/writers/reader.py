"""``raysight.open(path)``: a dataset as torch tensors, a pyarrow table, or a polars/pandas frame.

The files are plain Parquet / Arrow IPC, so pyarrow, polars, duckdb and Ray Data read them too;
this reader adds what they cannot know: tensors stored as bytes (always for bfloat16) back to
torch tensors, and per-row token dimensions back to a list of tensors.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch

from .encode import _NP, _TORCH
from .manifest import (
    ERRORS_FILE,
    ManifestError,
    expected_shards,
    read_manifest,
    read_schema_ipc,
    same_schema,
)

__all__ = ["DamagedDataset", "Dataset", "open_dataset"]


class DamagedDataset(RuntimeError):
    """A shard file that is not the one its run wrote (missing, resized, unreadable, or with a
    page whose checksum fails); the message names it. ``raysight verify`` lists every problem."""


class Dataset:
    """The finished shards a dataset's manifest lists, in shard order (never a glob: a stray
    or copied ``part-*`` file is not read). Shards not finished yet are in ``missing``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise FileNotFoundError(f"{self.path} is not a raysight dataset (no _manifest.json)")
        self.manifest: dict[str, Any] = manifest
        shards = manifest.get("shards")
        if not isinstance(shards, dict):
            raise ManifestError(f"{self.path / '_manifest.json'} lists no shards")
        done = {int(k): s for k, s in shards.items() if s.get("status") == "done"}
        self._shards = {k: done[k] for k in sorted(done)}
        self.missing = [k for k in range(expected_shards(manifest)) if k not in done]
        planned = read_schema_ipc(manifest["schema_ipc"]) if "schema_ipc" in manifest else None
        for k, entry in self._shards.items():  # cheap checks now; page checksums on read
            self._check(k, entry, planned)
        if self.missing:
            warnings.warn(
                f"{self.path} is incomplete: shard(s) {self.missing} are not finished (rerun the "
                "same command to finish them); reading the finished ones",
                stacklevel=3,
            )

    def _check(self, k: int, entry: dict[str, Any], planned: pa.Schema | None) -> None:
        """The shard's file exists with the size the run recorded and the plan's schema (read
        from its footer), so each file decodes with the dtype and shape of the manifest."""
        f = self.path / entry["file"]
        if not f.is_file():
            raise DamagedDataset(f"shard {k}: its file {entry['file']} is missing")
        if "bytes" in entry and f.stat().st_size != entry["bytes"]:
            raise DamagedDataset(
                f"shard {k}: {entry['file']} has {f.stat().st_size} bytes, the manifest "
                f"says {entry['bytes']} (run raysight verify)"
            )
        if planned is None:
            return
        try:
            if f.suffix == ".parquet":
                schema = pq.read_schema(f)
            else:
                with pa.memory_map(str(f)) as src:
                    schema = ipc.open_file(src).schema
        except (OSError, pa.ArrowException) as e:
            raise DamagedDataset(f"shard {k}: {f.name} cannot be read ({e})") from None
        if not same_schema(schema, planned):
            raise DamagedDataset(f"shard {k}: {f.name} has a schema other than the plan's")

    @property
    def files(self) -> list[Path]:
        return [self.path / s["file"] for s in self._shards.values()]

    def table(self, columns: list[str] | None = None) -> pa.Table:
        tables = []
        for k, f in zip(self._shards, self.files):
            try:
                if f.suffix == ".parquet":
                    tables.append(
                        pq.read_table(f, columns=columns, page_checksum_verification=True)
                    )
                else:
                    with pa.memory_map(str(f)) as src:
                        t = ipc.open_file(src).read_all()
                    tables.append(t.select(columns) if columns else t)
            except (OSError, pa.ArrowException) as e:
                raise DamagedDataset(
                    f"shard {k}: {f.name} cannot be read ({e}); run raysight verify"
                ) from None
        if not tables:
            raise FileNotFoundError(f"{self.path} has no finished data files yet")
        return pa.concat_tables(tables)

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.manifest["columns"]]

    def to_torch(self, column: str) -> torch.Tensor | list[torch.Tensor]:
        """A saved column as one tensor [rows, ...], or a list when rows differ in length."""
        info = next((c for c in self.manifest["columns"] if c["name"] == column), None)
        if info is None:
            t = self.table([column]).column(column).combine_chunks()
            return torch.as_tensor(t.to_numpy(zero_copy_only=False))
        arr = self.table([column]).column(column).combine_chunks()
        return decode(arr, info["dtype"], [d for d in info["shape"]])

    def polars(self):
        import polars as pl

        return pl.from_arrow(self.table())

    def pandas(self):
        return self.table().to_pandas()

    def hf(self):
        """An HF ``datasets.Dataset``. datasets has no type for Arrow's fixed_shape_tensor, so
        tensor columns arrive as their storage: fixed-shape values flattened to one list per row
        (reshape with ``self.manifest['columns']``), per-token values as a list per token."""
        import datasets

        table = self.table()
        cols = [
            c.combine_chunks().storage if isinstance(c.type, pa.BaseExtensionType) else c
            for c in table.columns
        ]
        return datasets.Dataset(pa.table(cols, names=table.column_names))

    def ray(self):
        import ray.data

        return ray.data.read_parquet([str(f) for f in self.files])

    def errors(self) -> list[dict[str, Any]]:
        p = self.path / ERRORS_FILE
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


def _from_numpy(flat: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "bfloat16":
        return torch.from_numpy(flat.view(np.int16).copy()).view(torch.bfloat16)
    # Arrow buffers are read-only; torch wants writable memory, so take a private copy.
    return torch.from_numpy(np.array(flat, dtype=_NP[_TORCH[dtype]], copy=True))


def decode(arr: pa.Array, dtype: str, shape: list[int | None]) -> torch.Tensor | list:
    n = len(arr)
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    variable = bool(shape) and shape[0] is None
    rest = [int(d) for d in (shape[1:] if variable else shape)]
    width = int(np.prod(rest)) if rest else 1
    if pa.types.is_fixed_size_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return _decode_bytes(arr, dtype, rest, width, variable)
    if variable:
        offsets = arr.offsets.to_numpy()
        offsets = offsets - offsets[0]  # a slice's offsets start mid-buffer; flatten() does not
        flat = arr.flatten()
        flat = flat.flatten() if rest else flat
        values = _from_numpy(flat.to_numpy(zero_copy_only=False), dtype)
        return [
            values[offsets[i] * width : offsets[i + 1] * width].reshape(-1, *rest) for i in range(n)
        ]
    if rest:
        arr = arr.flatten()
    return _from_numpy(arr.to_numpy(zero_copy_only=False), dtype).reshape(n, *rest)


def _decode_bytes(
    arr: pa.Array, dtype: str, rest: list[int], width: int, variable: bool
) -> torch.Tensor | list:
    """Tensors stored as one binary value per row: read the data buffer once, no per-row copy."""
    n = len(arr)
    item = _TORCH[dtype].itemsize
    raw = np.uint16 if dtype == "bfloat16" else _NP[_TORCH[dtype]]
    if not variable:
        start = arr.offset * width * item
        buf = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[start : start + n * width * item]
        return _from_numpy(buf.view(raw), dtype).reshape(n, *rest)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    values = _from_numpy(data.view(raw), dtype)
    ends = (offsets - offsets[0]) // item
    return [values[ends[i] : ends[i + 1]].reshape(-1, *rest) for i in range(n)]


def open_dataset(path: str | Path) -> Dataset:
    """Open a raysight output directory."""
    return Dataset(path)
