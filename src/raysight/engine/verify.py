"""``raysight verify`` and ``raysight inspect``: check a dataset against its manifest, and
summarise it.

verify checks that every shard is done and its file holds the rows the manifest says, that no
file is an orphan or left unfinished, that every input row is written or reported exactly once,
and that every file has the same schema.
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

from ..spec.sweep import axis_values
from ..writers.manifest import ERRORS_FILE, read_manifest

__all__ = ["inspect", "stage_seconds", "verify"]


def _read_ids(path: Path, per_token: bool) -> tuple[int, list, pa.Schema]:
    """Row count, each row's key (example_id, variant, pair row[, position]) and the schema."""
    if path.suffix == ".parquet":
        f = pq.ParquetFile(path)
        n, schema = f.metadata.num_rows, f.schema_arrow
        t = f.read(columns=[c for c in _KEY if c in schema.names])
    else:
        with pa.memory_map(str(path)) as src:
            t = ipc.open_file(src).read_all()
        n, schema = t.num_rows, t.schema
    cols = [
        t.column(c).to_pylist() if c in schema.names else [0 if c == "variant" else None] * n
        for c in (_KEY if per_token else _KEY[:-1])
    ]
    return n, list(zip(*cols)), schema


_KEY = ("example_id", "variant", "row", "position")


def verify(directory: str | Path) -> list[str]:
    """Every mismatch between a dataset and its manifest; empty when it is whole."""
    out = Path(directory)
    if not out.is_dir():
        return [f"{out} is not a directory"]
    m = read_manifest(out)
    if m is None:
        return [f"{out} has no _manifest.json: not a raysight dataset"]
    problems: list[str] = []
    shard_rows = m["spec"].get("execution", {}).get("shard_rows", 4096)
    expected = max(1, -(-m["input_rows"] // shard_rows))
    per_token = m["layout"] == "per_token"
    listed = set()
    seen: Counter = Counter()
    schema = None
    for k in range(expected):
        entry = m["shards"].get(str(k))
        if entry is None:
            problems.append(f"shard {k}: not run yet")
            continue
        if entry["status"] != "done":
            problems.append(f"shard {k}: {entry['status']} ({entry.get('error', '')})")
            continue
        path = out / entry["file"]
        listed.add(entry["file"])
        if not path.exists():
            problems.append(f"shard {k}: file {entry['file']} is missing")
            continue
        n, keys, file_schema = _read_ids(path, per_token)
        if n != entry["rows"]:
            problems.append(
                f"shard {k}: {entry['file']} has {n} rows, the manifest says {entry['rows']}"
            )
        schema = schema or file_schema
        if not file_schema.equals(schema):
            problems.append(f"shard {k}: {entry['file']} has a different schema")
        seen.update(keys)
    for p in sorted(out.iterdir()):
        if p.name.startswith("part-") and p.name not in listed:
            problems.append(f"orphan file {p.name}: no finished shard in the manifest owns it")
            # Readers of the directory see its rows too; an unreadable one is reported above.
            with contextlib.suppress(OSError, pa.ArrowException, KeyError):
                seen.update(_read_ids(p, per_token)[1])
        elif p.name.startswith(".part-"):
            problems.append(f"unfinished file {p.name} (a run was interrupted; rerun it)")
    dup = [key for key, c in seen.items() if c > 1]
    if dup:
        problems.append(f"{len(dup)} duplicated row(s), e.g. {dup[0]!r}")
    # Every input row appears once per sweep variant: written, or in the error report (for one
    # variant, or for all of them).
    units = {(key[0], key[1]) for key in seen}
    whole, one = _errors(out)
    n_var = _n_variants(m["spec"])
    both = {u for u in units if u[0] in whole or u in one}
    if both:
        problems.append(f"{len(both)} row(s) both written and in the error report")
    done_all = not any(p.startswith("shard ") and "not run" in p for p in problems)
    accounted = len(units) + n_var * len(whole) + len(one)
    if done_all and accounted != m["input_rows"] * n_var:
        problems.append(
            f"{len(units)} row-variants written + {len(whole)} rows and {len(one)} row-variants "
            f"reported != {m['input_rows']} input rows x {n_var} variant(s)"
        )
    return problems


def _n_variants(spec: dict[str, Any]) -> int:
    n = 1
    for axis in (spec.get("sweep") or {}).values():
        n *= len(axis_values(axis))
    return n


def _errors(out: Path) -> tuple[set, set]:
    """Error report: example ids reported as a whole, and (example_id, variant) reported."""
    path = out / ERRORS_FILE
    if not path.exists():
        return set(), set()
    recs = [json.loads(line) for line in path.read_text().splitlines() if line]
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
    out = Path(directory)
    m = read_manifest(out)
    if m is None:
        raise FileNotFoundError(f"{out} is not a raysight dataset (no _manifest.json)")
    shards = m["shards"].values()
    done = [s for s in shards if s["status"] == "done"]
    size = sum((out / s["file"]).stat().st_size for s in done if (out / s["file"]).exists())
    tokens, padded = sum(s["tokens"] for s in done), sum(s["padded_tokens"] for s in done)
    model = m["spec"]["model"].get("path") or m["spec"]["model"].get("factory")
    lines = [
        f"dataset   {out}  (spec {m['spec_hash']}, {m['layout']}, {m['format_files']})",
        f"model     {model} ({m['model']['architecture'] or m['model']['kind']})",
        f"shards    {len(done)} done, {len(shards) - len(done)} not done "
        f"(of {max(1, -(-m['input_rows'] // m['spec']['execution']['shard_rows']))})",
        f"rows      {sum(s['rows'] for s in done)} rows from {sum(s['examples'] for s in done)} "
        f"of {m['input_rows']} input rows; {sum(s['errors'] for s in done)} row error(s)",
        f"tokens    {tokens} real, {padded} padded "
        f"({(1 - tokens / padded) * 100 if padded else 0:.1f}% padding)",
        f"size      {size / 2**20:.1f} MiB on disk",
    ]
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
