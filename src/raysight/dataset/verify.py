"""``raysight verify`` and ``raysight inspect``: check a dataset against its manifest, and
summarise it.

verify checks that the manifest is whole and unedited (its header checksum), that every shard is
done and its file is the one it wrote (name, size, SHA-256, Parquet page checksums) with the rows
and the schema of the plan, that no file is an orphan or left unfinished, and that every input
row is written or reported exactly once. A damaged dataset is a list of findings, never a
traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..spec.load import spec_data_hash
from ..spec.sweep import axis_values
from ..writers.shard import part_name
from .keys import confirmed, repeated_keys, sorted_keys
from .limits import limit_lines, stage_seconds
from .manifest import Manifest, ManifestError, ShardEntry, same_schema
from .records import ERRORS_FILE, adopt_records, read_errors, shard_errors
from .store import Store

__all__ = ["inspect", "shard_keys", "stage_seconds", "verify"]


def shard_keys(out: Store, name: str, per_token: bool) -> tuple[int, list, pa.Schema]:
    """Row count, each row's key (example_id, variant, pair row, window offset[, position]) and
    the schema."""
    with out.open_input(name) as src:
        if name.endswith(".parquet"):
            f = pq.ParquetFile(src, page_checksum_verification=True)
            n, schema = f.metadata.num_rows, f.schema_arrow
            t = f.read(columns=[c for c in _KEY if c in schema.names])
        else:
            t = ipc.open_file(src).read_all()
            n, schema = t.num_rows, t.schema
    cols = [
        t.column(c).to_pylist() if c in schema.names else [0 if c == "variant" else None] * n
        for c in (_KEY if per_token else _KEY[:-1])
    ]
    return n, list(zip(*cols)), schema


_KEY = ("example_id", "variant", "row", "offset", "position")
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, pa.ArrowException)


def _header_problems(m: Manifest) -> list[str]:
    """What keeps ``m`` from being a whole, unedited raysight manifest."""
    if m.header_sha256 is None:
        return ["_manifest.json: no header checksum (an older raysight wrote it): rerun"]
    if not m.header_intact:
        return [
            "_manifest.json: its header (spec, columns, schema, layout or input rows) was "
            "changed after the run wrote it"
        ]
    if spec_data_hash(m.spec) != m.spec_hash:
        return ["_manifest.json: spec_hash does not match the spec it records"]
    return []


def _file_problems(k: int, entry: ShardEntry, out: Store, m: Manifest) -> list[str]:
    """The file of a finished shard against its manifest entry: name, size, checksum."""
    name = entry.file
    expected = part_name(k, m.format_files or "parquet")
    if name != expected:
        return [f"shard {k}: the manifest names {name!r}, not its own file {expected!r}"]
    size = out.size(name)
    if size is None:
        return [f"shard {k}: file {name} is missing"]
    if size != entry.bytes:
        return [f"shard {k}: {name} has {size} bytes, the manifest says {entry.bytes}"]
    if out.sha256(name) != entry.sha256:
        return [f"shard {k}: {name} changed after it was written (its SHA-256 differs)"]
    return []


def verify(directory: str | Path) -> list[str]:
    """Every mismatch between a dataset and its manifest; empty when it is whole. Never raises
    for a damaged dataset: each damage is a finding.

    Memory is bounded by one shard, not the dataset: rows are accounted for shard by shard
    (its input rows against its written rows and its completion record's row errors), and a
    row written by two shard files is found by merging each file's sorted row keys, spilled to
    a temporary directory, in bounded passes (dataset/keys.py)."""
    try:
        out = Store(directory)
    except OSError as e:
        return [str(e)]
    if not out.is_dir():
        return [f"{out} is not a directory"]
    try:
        m = Manifest.read(out)
    except ManifestError as e:
        return e.problems
    if m is None:
        return [f"{out} has no _manifest.json: not a raysight dataset"]
    problems = _header_problems(m)
    if problems:
        return problems
    try:
        planned = m.planned_schema()
    except _UNREADABLE as e:
        return [f"_manifest.json: schema_ipc is not a schema ({e})"]
    try:  # finished shards that the manifest does not list yet (dataset/records.py)
        adopt_records(out, m)
    except (ManifestError, *_UNREADABLE) as e:
        problems.append(str(e))
    with tempfile.TemporaryDirectory(prefix="raysight-verify-") as spill:
        rows = _Rows(out, m, planned, Path(spill))
        for k in range(m.expected_shards):
            problems += rows.shard(k)
        listed = {e.file for e in m.done().values()}
        for name in out.top_names():
            if name.startswith("part-") and name not in listed:
                problems.append(f"orphan file {name}: no finished shard in the manifest owns it")
                rows.orphan(name)  # readers of the directory see its rows too
            elif name.startswith(".part-"):
                problems.append(f"unfinished file {name} (a run was interrupted; rerun it)")
        problems += rows.across()
    problems += _report_problems(out, m)
    problems += _budget_problems(m)
    return problems


class _Rows:
    """Accounts for every input row, one shard at a time, and finds rows that more than one
    shard file wrote."""

    def __init__(self, out: Store, m: Manifest, planned: pa.Schema, spill: Path):
        self.out, self.m, self.planned, self.spill = out, m, planned, spill
        self.per_token = m.layout == "per_token"
        self.n_var = _n_variants(m.spec)
        self.files: dict[int, str] = {}  # group -> file whose row keys were spilled
        self.sizes: dict[int, int] = {}

    def _spill(self, name: str, units: set) -> None:
        g = len(self.files)
        keys = sorted_keys(units)
        np.save(self.spill / f"{g}.npy", keys, allow_pickle=False)
        self.files[g], self.sizes[g] = name, len(keys)

    def _units(self, name: str) -> set:
        return _units(shard_keys(self.out, name, self.per_token)[1])

    def shard(self, k: int) -> list[str]:
        entry = self.m.shards.get(k)
        if entry is None:
            return [f"shard {k}: not run yet"]
        if not entry.done:
            return [f"shard {k}: {entry.status} ({entry.error})"]
        found = _file_problems(k, entry, self.out, self.m)
        if found:
            return found
        try:
            n, keys, file_schema = shard_keys(self.out, entry.file, self.per_token)
        except _UNREADABLE as e:
            return [f"shard {k}: {entry.file} cannot be read ({type(e).__name__}: {e})"]
        if n != entry.rows:
            found.append(f"shard {k}: {entry.file} has {n} rows, the manifest says {entry.rows}")
        if not same_schema(file_schema, self.planned):
            found.append(f"shard {k}: {entry.file} has a schema other than the plan's")
        dup = [key for key, c in Counter(keys).items() if c > 1]
        if dup:
            found.append(f"shard {k}: {len(dup)} duplicated row(s), e.g. {dup[0]!r}")
        units = _units(keys)
        self._spill(entry.file, units)
        return found + self._accounted(k, entry, units)

    def _accounted(self, k: int, entry: ShardEntry, units: set) -> list[str]:
        """The shard's input rows, once per sweep variant: each written, or in its error
        report (for one variant, or for all of them). An error of one data.chunk window (its
        document has other windows) accounts for no row."""
        try:
            errors = shard_errors(self.out, self.m, k)
        except (ManifestError, *_UNREADABLE) as e:
            return [str(e)]
        if len(errors) != entry.errors:
            return [
                f"shard {k}: its completion record lists {len(errors)} row error(s), the "
                f"manifest says {entry.errors}"
            ]
        try:
            errors = [e for e in errors if "offset" not in e]
            whole = {e["example_id"] for e in errors if "variant" not in e}
            one = {(e["example_id"], e["variant"]) for e in errors if "variant" in e}
        except (KeyError, TypeError) as e:
            return [f"shard {k}: its completion record's row errors are not readable ({e!r})"]
        found = []
        both = {u for u in units if u[0] in whole or u in one}
        if both:
            found.append(f"shard {k}: {len(both)} row(s) both written and in the error report")
        n_in = len(self.m.input_range(k))
        if len(units) + self.n_var * len(whole) + len(one) != n_in * self.n_var:
            found.append(
                f"shard {k}: {len(units)} row-variants written + {len(whole)} rows and "
                f"{len(one)} row-variants reported != its {n_in} input rows x {self.n_var} "
                "variant(s)"
            )
        return found

    def orphan(self, name: str) -> None:
        with contextlib.suppress(*_UNREADABLE):  # an unreadable one is reported already
            self._spill(name, self._units(name))

    def across(self) -> list[str]:
        """Rows (example id and variant) that more than one file wrote."""
        groups = sorted(self.files)

        def load(g: int) -> np.ndarray:
            return np.load(self.spill / f"{g}.npy", mmap_mode="r", allow_pickle=False)

        candidates = repeated_keys(groups, load, self.sizes)
        if not candidates:
            return []

        n, some = confirmed(candidates, lambda g: self._units(self.files[g]), limit=1)
        if not n:
            return []
        unit, groups = some[0]
        names = ", ".join(self.files[g] for g in groups)
        return [f"{n} duplicated row(s) in more than one file, e.g. {unit!r} in {names}"]


def _units(keys: list) -> set:
    """The (example_id, variant) units of a file's row keys: what one input row gives per sweep
    variant, whatever its pair rows, windows and positions."""
    return {(key[0], key[1]) for key in keys}


def _report_problems(out: Store, m: Manifest) -> list[str]:
    """``_errors.jsonl`` against the completion records it is written from, line by line."""
    try:
        lines = out.read_lines(ERRORS_FILE)
        expected = read_errors(out, m)
        for i, (line, want) in enumerate(itertools.zip_longest(lines, expected), 1):
            if line is None:
                return [f"{ERRORS_FILE}: ends at line {i - 1}; the shards' records list more"]
            got = json.loads(line)
            if want is None or got != json.loads(json.dumps(want, default=str)):
                return [
                    f"{ERRORS_FILE}: line {i} is not the shards' completion records' (rerun "
                    "the same command to rewrite it)"
                ]
    except FileNotFoundError:
        if m.totals()["errors"]:
            return [f"{ERRORS_FILE}: missing, though shards have row errors (rerun to write it)"]
    except (ManifestError, *_UNREADABLE) as e:
        return [f"{ERRORS_FILE}: not a readable error report ({e})"]
    return []


def _budget_problems(m: Manifest) -> list[str]:
    """A dataset cut at data.max_tokens: its last shard is the first whose tokens reach it."""
    budget = m.budget
    if budget is None:
        return []
    limit = (m.spec.get("data") or {}).get("max_tokens")
    last = budget.get("last_shard") if isinstance(budget, dict) else None
    if not isinstance(last, int) or limit is None:
        return ["_manifest.json: 'budget' is not one that data.max_tokens set"]
    tokens = [getattr(m.shards.get(k), "tokens", 0) for k in range(last + 1)]
    if sum(tokens) < limit or sum(tokens[:-1]) >= limit:
        return [
            f"_manifest.json: the run stopped after shard {last}, but its shards' tokens "
            f"({sum(tokens)}) do not first reach data.max_tokens ({limit}) there"
        ]
    return []


def _n_variants(spec: dict[str, Any]) -> int:
    n = 1
    for axis in (spec.get("sweep") or {}).values():
        n *= len(axis_values(axis))
    return n


def inspect(directory: str | Path) -> str:
    """A human summary of a dataset: spec, model, columns, shards, rows, size, errors."""
    out = Store(directory)
    m = Manifest.read(out)  # ManifestError (listing every problem) for one that is not one
    if m is None:
        raise FileNotFoundError(f"{out} is not a raysight dataset (no _manifest.json)")
    adopt_records(out, m)
    done = list(m.done().values())
    size = sum(out.size(s.file) or 0 for s in done)
    t = m.totals()
    tokens, padded = t["tokens"], t["padded_tokens"]
    model = m.spec["model"].get("path") or m.spec["model"].get("factory")
    kind = (m.model or {}).get("architecture") or (m.model or {}).get("kind")
    lines = [
        f"dataset   {out}  (spec {m.spec_hash}, {m.layout}, {m.format_files})",
        f"model     {model} ({kind})",
        f"shards    {len(done)} done, {m.expected_shards - len(done)} not done "
        f"(of {m.expected_shards})",
        f"rows      {t['rows']} rows from {t['examples']} of {m.input_rows} input rows; "
        f"{t['errors']} row error(s)",
        f"tokens    {tokens} real, {padded} padded "
        f"({(1 - tokens / padded) * 100 if padded else 0:.1f}% padding)",
        f"size      {size / 2**20:.1f} MiB on disk",
    ]
    checked = [s.self_check for s in done if s.self_check.get("samples")]
    if checked:
        lines.append(
            f"self-check {sum(c['samples'] for c in checked)} sample(s) in {len(checked)} "
            f"shard(s) rerun alone and unpadded ({sum(c['rows'] for c in checked)} output rows "
            f"compared); max |batched - alone| {max(c['max_abs_diff'] for c in checked):.3g}"
        )
    elif m.spec.get("execution", {}).get("self_check") == 0:
        lines.append("self-check off (execution.self_check: 0)")
    else:
        lines.append("self-check none recorded (no finished shard, or an older raysight)")
    stages = stage_seconds(done)
    if stages:  # summed over shards, so actors working in parallel add up
        total = sum(stages.values()) or 1.0
        lines.append(
            "time      " + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in stages.items())
        )
        lines += limit_lines(done)
    lines.append("columns")
    for c in m.columns:
        shape = ["tokens" if d is None else d for d in c["shape"]]
        stored = " as bytes" if c.get("storage") == "bytes" or c["dtype"] == "bfloat16" else ""
        lines.append(f"  {c['name']:<28} {c['dtype']:<9} {shape}{stored}  <- {c['site']}")
    lines.append("versions  " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    return "\n".join(lines)
