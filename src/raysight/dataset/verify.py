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
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..spec.load import spec_data_hash
from ..spec.sweep import axis_values
from ..writers.shard import part_name
from .manifest import (
    ERRORS_FILE,
    FORMAT,
    ManifestError,
    covered_rows,
    expected_shards,
    header_sha256,
    read_manifest,
    read_schema_ipc,
    same_schema,
)
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
# what a manifest must hold, and of which type, for verify to read it
_REQUIRED = {
    "format": str,
    "spec_hash": str,
    "spec": dict,
    "layout": str,
    "columns": list,
    "schema": str,
    "schema_ipc": str,
    "input_rows": int,
    "shards": dict,
}


def _structure_problems(m: dict[str, Any]) -> list[str]:
    """What keeps ``m`` from being read as a manifest at all: a key missing or of the wrong
    type, a shard entry without a status."""
    problems = [
        f"_manifest.json: '{key}' is missing or not a {kind.__name__}"
        for key, kind in _REQUIRED.items()
        if not isinstance(m.get(key), kind)
    ]
    if problems:
        return problems
    return [
        f"_manifest.json: shard {k!r} has no status"
        for k, entry in m["shards"].items()
        if not isinstance(entry, dict) or not isinstance(entry.get("status"), str)
    ]


def _manifest_problems(m: dict[str, Any]) -> list[str]:
    """What keeps ``m`` from being a whole, unedited raysight manifest."""
    problems = _structure_problems(m)
    if problems:
        return problems
    if m["format"] != FORMAT:
        return [f"_manifest.json: format {m['format']!r} is not {FORMAT!r}: not raysight's"]
    if "header_sha256" not in m:
        return ["_manifest.json: no header checksum (an older raysight wrote it): rerun"]
    if m["header_sha256"] != header_sha256(m):
        return [
            "_manifest.json: its header (spec, columns, schema, layout or input rows) was "
            "changed after the run wrote it"
        ]
    if spec_data_hash(m["spec"]) != m["spec_hash"]:
        return ["_manifest.json: spec_hash does not match the spec it records"]
    return [
        f"_manifest.json: shard {k} lacks its file, rows, size or checksum"
        for k, entry in m["shards"].items()
        if entry["status"] == "done"
        and not all(
            isinstance(entry.get(f), t)
            for f, t in (("file", str), ("rows", int), ("bytes", int), ("sha256", str))
        )
    ]


def _shard_problems(k: int, entry: dict, out: Store, m: dict) -> list[str]:
    """The file of a finished shard against its manifest entry: name, size, checksum, rows."""
    name = entry["file"]
    expected = part_name(k, m.get("format_files", "parquet"))
    if name != expected:
        return [f"shard {k}: the manifest names {name!r}, not its own file {expected!r}"]
    size = out.size(name)
    if size is None:
        return [f"shard {k}: file {name} is missing"]
    if size != entry["bytes"]:
        return [f"shard {k}: {name} has {size} bytes, the manifest says {entry['bytes']}"]
    if out.sha256(name) != entry["sha256"]:
        return [f"shard {k}: {name} changed after it was written (its SHA-256 differs)"]
    return []


def verify(directory: str | Path) -> list[str]:
    """Every mismatch between a dataset and its manifest; empty when it is whole. Never raises
    for a damaged dataset: each damage is a finding."""
    try:
        out = Store(directory)
    except OSError as e:
        return [str(e)]
    if not out.is_dir():
        return [f"{out} is not a directory"]
    try:
        m = read_manifest(out)
    except ManifestError as e:
        return [str(e)]
    if m is None:
        return [f"{out} has no _manifest.json: not a raysight dataset"]
    problems = _manifest_problems(m)
    if problems:
        return problems
    expected = expected_shards(m)
    per_token = m["layout"] == "per_token"
    try:
        planned = read_schema_ipc(m["schema_ipc"])
    except _UNREADABLE as e:
        return [f"_manifest.json: schema_ipc is not a schema ({e})"]
    listed = set()
    seen: Counter = Counter()
    for k in range(expected):
        entry = m["shards"].get(str(k))
        if entry is None:
            problems.append(f"shard {k}: not run yet")
            continue
        if entry["status"] != "done":
            problems.append(f"shard {k}: {entry['status']} ({entry.get('error', '')})")
            continue
        listed.add(entry["file"])
        found = _shard_problems(k, entry, out, m)
        if not found:
            try:
                n, keys, file_schema = shard_keys(out, entry["file"], per_token)
            except _UNREADABLE as e:
                found = [f"shard {k}: {entry['file']} cannot be read ({type(e).__name__}: {e})"]
            else:
                if n != entry["rows"]:
                    found.append(
                        f"shard {k}: {entry['file']} has {n} rows, the manifest says "
                        f"{entry['rows']}"
                    )
                if not same_schema(file_schema, planned):
                    found.append(f"shard {k}: {entry['file']} has a schema other than the plan's")
                seen.update(keys)
        problems += found
    for name in out.top_names():
        if name.startswith("part-") and name not in listed:
            problems.append(f"orphan file {name}: no finished shard in the manifest owns it")
            # Readers of the directory see its rows too; an unreadable one is reported above.
            with contextlib.suppress(*_UNREADABLE):
                seen.update(shard_keys(out, name, per_token)[1])
        elif name.startswith(".part-"):
            problems.append(f"unfinished file {name} (a run was interrupted; rerun it)")
    dup = [key for key, c in seen.items() if c > 1]
    if dup:
        problems.append(f"{len(dup)} duplicated row(s), e.g. {dup[0]!r}")
    try:
        whole, one = _errors(out)
    except _UNREADABLE as e:
        return [*problems, f"{ERRORS_FILE}: not a readable error report ({e})"]
    # Every input row appears once per sweep variant: written, or in the error report (for one
    # variant, or for all of them).
    units = {(key[0], key[1]) for key in seen}
    n_var = _n_variants(m["spec"])
    both = {u for u in units if u[0] in whole or u in one}
    if both:
        problems.append(f"{len(both)} row(s) both written and in the error report")
    whole_files = not any(p.startswith(("shard ", "orphan")) for p in problems)
    accounted = len(units) + n_var * len(whole) + len(one)
    rows = covered_rows(m)
    if whole_files and accounted != rows * n_var:
        problems.append(
            f"{len(units)} row-variants written + {len(whole)} rows and {len(one)} row-variants "
            f"reported != {rows} input rows x {n_var} variant(s)"
        )
    problems += _budget_problems(m)
    return problems


def _budget_problems(m: dict[str, Any]) -> list[str]:
    """A dataset cut at data.max_tokens: its last shard is the first whose tokens reach it."""
    budget = m.get("budget")
    if budget is None:
        return []
    limit = (m["spec"].get("data") or {}).get("max_tokens")
    last = budget.get("last_shard") if isinstance(budget, dict) else None
    if not isinstance(last, int) or limit is None:
        return ["_manifest.json: 'budget' is not one that data.max_tokens set"]
    tokens = [m["shards"].get(str(k), {}).get("tokens", 0) for k in range(last + 1)]
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


def _errors(out: Store) -> tuple[set, set]:
    """Error report: example ids reported as a whole, and (example_id, variant) reported. An
    error of one data.chunk window (its document has other windows) accounts for no row."""
    try:
        text = out.read_bytes(ERRORS_FILE).decode("utf-8")
    except FileNotFoundError:
        return set(), set()
    recs = [json.loads(line) for line in text.splitlines() if line]
    recs = [r for r in recs if "offset" not in r]
    whole = {r["example_id"] for r in recs if "variant" not in r}
    return whole, {(r["example_id"], r["variant"]) for r in recs if "variant" in r}


def stage_seconds(shards: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Seconds per stage (tokenize, forward, ...), summed over finished shards' manifest entries."""
    total: dict[str, float] = {}
    for shard in shards:
        for stage, secs in shard.get("stages", {}).items():
            total[stage] = total.get(stage, 0.0) + secs
    return total


def inspect(directory: str | Path) -> str:
    """A human summary of a dataset: spec, model, columns, shards, rows, size, errors."""
    out = Store(directory)
    m = read_manifest(out)  # raises ManifestError for one that is not readable
    if m is None:
        raise FileNotFoundError(f"{out} is not a raysight dataset (no _manifest.json)")
    broken = _structure_problems(m)
    if broken:
        raise ManifestError("; ".join(broken) + " (raysight verify lists every problem)")
    shards = m["shards"].values()
    done = [s for s in shards if s["status"] == "done"]
    size = sum(out.size(s["file"]) or 0 for s in done)
    tokens, padded = sum(s["tokens"] for s in done), sum(s["padded_tokens"] for s in done)
    model = m["spec"]["model"].get("path") or m["spec"]["model"].get("factory")
    lines = [
        f"dataset   {out}  (spec {m['spec_hash']}, {m['layout']}, {m['format_files']})",
        f"model     {model} ({m['model']['architecture'] or m['model']['kind']})",
        f"shards    {len(done)} done, {len(shards) - len(done)} not done (of {expected_shards(m)})",
        f"rows      {sum(s['rows'] for s in done)} rows from {sum(s['examples'] for s in done)} "
        f"of {m['input_rows']} input rows; {sum(s['errors'] for s in done)} row error(s)",
        f"tokens    {tokens} real, {padded} padded "
        f"({(1 - tokens / padded) * 100 if padded else 0:.1f}% padding)",
        f"size      {size / 2**20:.1f} MiB on disk",
    ]
    checked = [s["self_check"] for s in done if s.get("self_check", {}).get("samples")]
    if checked:
        lines.append(
            f"self-check {sum(c['samples'] for c in checked)} sample(s) in {len(checked)} "
            f"shard(s) rerun alone and unpadded ({sum(c['rows'] for c in checked)} output rows "
            f"compared); max |batched - alone| {max(c['max_abs_diff'] for c in checked):.3g}"
        )
    elif m["spec"].get("execution", {}).get("self_check") == 0:
        lines.append("self-check off (execution.self_check: 0)")
    else:
        lines.append("self-check none recorded (no finished shard, or an older raysight)")
    stages = stage_seconds(done)
    if stages:  # summed over shards, so actors working in parallel add up
        total = sum(stages.values()) or 1.0
        lines.append(
            "time      " + ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in stages.items())
        )
    lines.append("columns")
    for c in m["columns"]:
        shape = ["tokens" if d is None else d for d in c["shape"]]
        stored = " as bytes" if c.get("storage") == "bytes" or c["dtype"] == "bfloat16" else ""
        lines.append(f"  {c['name']:<28} {c['dtype']:<9} {shape}{stored}  <- {c['site']}")
    lines.append("versions  " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    return "\n".join(lines)
