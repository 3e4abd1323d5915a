"""``raysight export saelens OUT DEST``: a saved activation column in SAELens' cached-activations
layout, so an SAE trains from it with ``use_cached_activations=True, cached_activations_path=DEST``.

SAELens' cache (its CacheActivationsRunner) is an HF dataset saved with ``save_to_disk``: one row
per context of ``context_size`` tokens, a column named by the hook holding an Array2D
[context_size, d_in], and ``token_ids`` [context_size] (int32), which its store uses to leave
special tokens out. Tokens are packed in dataset order, across rows, as SAELens' own store packs
sequences; the last tokens that do not fill a context are left out and counted. It streams: the
peak memory is one input batch and one output file's batch, whatever the dataset's size.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..errors import RaysightError
from .reader import open_dataset

__all__ = ["ExportError", "ExportSummary", "export_saelens"]


class ExportError(RaysightError):
    """A column or dataset that cannot be exported as asked; the message says why and what to
    pass instead."""


@dataclass
class ExportSummary:
    dest: str
    hook_name: str
    contexts: int
    context_size: int
    d_in: int
    dtype: str
    files: int
    token_ids: bool
    dropped_tokens: int

    def __str__(self) -> str:
        ids = "with token_ids" if self.token_ids else "without token_ids"
        left = f"; {self.dropped_tokens:,} last token(s) left out (less than one context)"
        return (
            f"{self.dest}: {self.contexts:,} contexts of {self.context_size} tokens x "
            f"{self.d_in} ({self.dtype}, {ids}) as {self.hook_name!r} in {self.files} file(s)"
            f"{left if self.dropped_tokens else ''}\n"
            f"SAELens: LanguageModelSAERunnerConfig(hook_name={self.hook_name!r}, "
            f"d_in={self.d_in}, context_size={self.context_size}, use_cached_activations=True, "
            f"cached_activations_path={self.dest!r}, ...)"
        )


def export_saelens(
    src: str | Path,
    dest: str | Path,
    column: str,
    hook_name: str | None = None,
    context_size: int | None = None,
    token_ids: bool = True,
    file_bytes: int = 512 * 2**20,
) -> ExportSummary:
    """Write ``column`` of the dataset at ``src`` to ``dest`` in SAELens' cached-activations
    layout (see the module docstring). ``context_size`` defaults to a per-sequence column's
    fixed length, or to the window size of ``data.chunk`` with ``last: drop``; per-token and
    other variable-length columns need it.
    bfloat16 values are written as float32 (HF datasets has no bfloat16 type)."""
    try:
        import datasets
    except ImportError:
        raise ExportError(
            "raysight export saelens needs HF datasets (SAELens reads its cache with it): "
            "pip install 'raysight[saelens]'"
        ) from None
    ds = open_dataset(src)
    if ds.missing:
        raise ExportError(
            f"{ds.path}: shard(s) {ds.missing} are not finished; finish the run first (rerun "
            "its command) so the export has every row"
        )
    info = _column(ds, column)
    _one_variant(ds)
    per_token = ds.manifest.layout == "per_token"
    d_in = info["shape"][-1]
    context_size = context_size or _default_context(ds, column, info)
    if context_size < 1:
        raise ExportError(f"--context-size must be at least 1, not {context_size}")
    ids_column = ("token_id" if per_token else "input_ids") if token_ids else None
    dtype = "float32" if info["dtype"] == "bfloat16" else info["dtype"]
    if dtype not in ("float32", "float16", "float64"):
        raise ExportError(f"column {column!r} is {info['dtype']}; SAELens trains on floats")
    hook = hook_name or column
    features = {hook: datasets.Array2D(shape=(context_size, d_in), dtype=dtype)}
    if ids_column:
        features["token_ids"] = datasets.Sequence(datasets.Value("int32"), length=context_size)
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory; choose a new DEST")
    out.mkdir(parents=True, exist_ok=True)
    packer = _Packer(context_size, d_in, dtype, ids_column is not None)
    per_file = max(1, file_bytes // (context_size * d_in * np.dtype(dtype).itemsize))
    parts = _write_parts(
        out, datasets.Features(features), hook, packer, _tokens(ds, column, ids_column), per_file
    )
    if not parts:
        raise ExportError(
            f"{ds.path}: {packer.dropped} token(s) in all, fewer than one context of "
            f"{context_size}; pass a smaller --context-size"
        )
    names = [f"data-{i:05d}-of-{len(parts):05d}.arrow" for i in range(len(parts))]
    for p, name in zip(parts, names):
        p.rename(out / name)
    # last, so that DEST is a dataset only once every file is there
    _write_state(out, names, datasets.DatasetInfo(features=datasets.Features(features)))
    return ExportSummary(
        str(out),
        hook,
        packer.contexts,
        context_size,
        d_in,
        dtype,
        len(names),
        ids_column is not None,
        packer.dropped,
    )


def _column(ds: Any, column: str) -> dict[str, Any]:
    """The manifest's entry for ``column``, which must hold one vector per token."""
    info = {c["name"]: c for c in ds.manifest.columns}.get(column)
    saved = f"the saved columns are {', '.join(ds.columns) or '(none)'}"
    if info is None and column in ds.schema.names:
        raise ExportError(f"{column!r} is an identity column, not saved values; {saved}")
    if info is None:
        raise ExportError(f"no column {column!r}; {saved}")
    per_token = ds.manifest.layout == "per_token"
    shape = list(info["shape"])
    if len(shape) != (1 if per_token else 2) or shape[-1] is None:
        want = "[hidden]" if per_token else "[tokens, hidden]"
        raise ExportError(
            f"column {column!r} has shape {shape} per row; SAELens needs one vector per token "
            f"({want} in a {ds.manifest.layout} dataset): save a module's output without a "
            "reduce"
        )
    return info


def _default_context(ds: Any, column: str, info: dict[str, Any]) -> int:
    """A per-sequence column's fixed length, or data.chunk's window size under last: drop."""
    per_token, length = ds.manifest.layout == "per_token", info["shape"][0]
    chunk = (ds.manifest.spec.get("data") or {}).get("chunk") or {}
    if not per_token and length is None and chunk.get("last") == "drop":
        return chunk["size"]  # windows of data.chunk, none shorter than the rest
    if per_token or length is None:
        raise ExportError(
            f"--context-size is needed: {column!r} holds "
            + ("one token per row" if per_token else "rows of different lengths")
            + ", so there is no length to take (SAELens' context_size, e.g. 128)"
        )
    return length


def _write_parts(
    out: Path, features: Any, hook: str, packer: _Packer, tokens: Any, per_file: int
) -> list[Path]:
    """The contexts as Arrow files of at most ``per_file`` rows each, under temporary names; a
    failure removes them, so DEST is left empty."""
    from datasets.arrow_writer import ArrowWriter

    parts: list[Path] = []
    writer, in_file = None, 0
    try:
        for values, ids in tokens:
            for acts, tids in packer.add(values, ids):
                at = 0
                while at < len(acts):
                    if writer is None:
                        parts.append(out / f".part-{len(parts):05d}.arrow")
                        writer, in_file = ArrowWriter(features=features, path=str(parts[-1])), 0
                    cut = slice(at, at + min(per_file - in_file, len(acts) - at))
                    writer.write_table(_table(hook, acts[cut], None if tids is None else tids[cut]))
                    in_file += cut.stop - cut.start
                    at = cut.stop
                    if in_file == per_file:
                        writer.finalize()
                        writer = None
        if writer is not None:
            writer.finalize()
    except BaseException:
        for p in parts:
            p.unlink(missing_ok=True)
        raise
    return parts


def _one_variant(ds: Any) -> None:
    if "variant" not in ds.schema.names:
        return
    seen: set[int] = set()
    for b in ds.iter_batches(["variant"]):
        seen.update(pc.unique(b.column(0)).to_pylist())
    if len(seen) > 1:
        raise ExportError(
            f"{ds.path} holds {len(seen)} sweep variants; an SAE cache is one distribution of "
            "activations: export a run without a sweep"
        )


def _tokens(ds: Any, column: str, ids_column: str | None):
    """(values [tokens, d_in] as numpy, token ids [tokens] or None) per input batch."""
    names = [column, *([ids_column] if ids_column else [])]
    for b in ds.iter_torch(names, batch_rows=1024):
        vals = b[column]  # per_token [b, d]; per_sequence [b, T, d] or a list of [n, d]
        rows = list(vals) if isinstance(vals, list) or vals.dim() == 3 else [vals]
        flat = torch.cat(rows) if rows else torch.empty((0, 0))
        flat = (flat.float() if flat.dtype == torch.bfloat16 else flat).numpy()
        ids = None
        if ids_column:
            raw = b[ids_column]
            if isinstance(raw, list):  # per_sequence: each row's input_ids
                lengths = [len(r) for r in rows]
                if [len(t) for t in raw] != lengths:
                    raise ExportError(
                        f"{column!r} does not hold every token of its rows (it saved some "
                        "positions only), so its vectors cannot be matched to token ids; "
                        "save every position, or pass --no-token-ids"
                    )
                ids = np.concatenate([np.asarray(t, dtype=np.int32) for t in raw])
            else:
                ids = raw.numpy().astype(np.int32)
        yield flat, ids


class _Packer:
    """Tokens in, whole contexts out: [n, context_size, d_in] and [n, context_size]."""

    def __init__(self, context_size: int, d_in: int, dtype: str, ids: bool):
        self.size, self.d_in, self.dtype, self.ids = context_size, d_in, dtype, ids
        self.vals: list[np.ndarray] = []
        self.tids: list[np.ndarray] = []
        self.held = self.contexts = 0

    @property
    def dropped(self) -> int:
        return self.held

    def add(self, values: np.ndarray, ids: np.ndarray | None):
        self.vals.append(values.astype(self.dtype, copy=False))
        if self.ids:
            self.tids.append(ids)
        self.held += len(values)
        n = self.held // self.size
        if n == 0:
            return
        vals = np.concatenate(self.vals)
        tids = np.concatenate(self.tids) if self.ids else None
        cut = n * self.size
        self.vals = [vals[cut:]]
        self.tids = [tids[cut:]] if self.ids else []
        self.held -= cut
        self.contexts += n
        acts = vals[:cut].reshape(n, self.size, self.d_in)
        yield acts, tids[:cut].reshape(n, self.size) if self.ids else None


def _table(hook: str, acts: np.ndarray, tids: np.ndarray | None) -> pa.Table:
    _, size, d_in = acts.shape
    inner = pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), d_in)
    cols = {hook: pa.FixedSizeListArray.from_arrays(inner, size)}
    if tids is not None:
        cols["token_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(tids.reshape(-1)), size)
    return pa.table(cols)


def _write_state(out: Path, names: list[str], info: Any) -> None:
    """The two JSON files ``Dataset.save_to_disk`` writes beside its data files (its own
    asdict: it writes each feature's ``_type``)."""
    from datasets.utils.py_utils import asdict

    state = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": uuid.uuid4().hex[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (out / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    fields = asdict(info)
    (out / "dataset_info.json").write_text(
        json.dumps({k: fields[k] for k in sorted(fields)}, indent=2)
    )
