"""The dataset manifest (``_manifest.json``): resolved spec, its hash, versions, columns, and the
status and row counts of every shard. Names start with '_' so pyarrow/polars/duckdb readers of
the directory skip them. Every write is atomic (temp file + rename).

The manifest proves its own integrity: its header (spec, hash, columns, schema, layout, input
rows) carries a checksum, and each finished shard its file's size and SHA-256, so ``verify`` can
tell any changed byte, swapped file or edited column from a whole dataset.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "ERRORS_FILE",
    "FORMAT",
    "HEADER_KEYS",
    "MANIFEST_FILE",
    "SPEC_FILE",
    "ManifestError",
    "append_errors",
    "expected_shards",
    "file_sha256",
    "header_sha256",
    "read_manifest",
    "read_schema_ipc",
    "same_schema",
    "schema_ipc",
    "write_json_atomic",
]

MANIFEST_FILE = "_manifest.json"
SPEC_FILE = "_spec.json"
ERRORS_FILE = "_errors.jsonl"
FORMAT = "raysight-dataset/1"  # the marker by which a manifest is known to be raysight's
#: what the run fixed before its first shard; covered by the header checksum
HEADER_KEYS = (
    "format",
    "spec_hash",
    "spec",
    "model",
    "layout",
    "format_files",
    "columns",
    "schema",
    "schema_ipc",
    "input_rows",
    "fingerprint",
)


class ManifestError(ValueError):
    """A ``_manifest.json`` that cannot be read as a manifest; the message says why."""


def header_sha256(manifest: dict[str, Any]) -> str:
    """Checksum of the manifest's header (HEADER_KEYS), independent of key order."""
    header = {k: manifest.get(k) for k in HEADER_KEYS}
    blob = json.dumps(header, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def schema_ipc(schema: Any) -> str:
    """A pyarrow schema as base64 Arrow IPC: exact, unlike its text form (which Parquet's list
    field names change)."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def read_schema_ipc(text: str) -> Any:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))


def expected_shards(manifest: dict[str, Any]) -> int:
    """How many shards the run splits its input rows into (at least one)."""
    size = (manifest.get("spec", {}).get("execution") or {}).get("shard_rows", 4096)
    return max(1, -(-manifest.get("input_rows", 0) // size))


def same_schema(found: Any, planned: Any) -> bool:
    """Types (list field names aside, which Parquet renames) and field metadata (dtype, shape,
    site) equal; schema-level metadata (pandas, ARROW:schema) is the writer's business."""
    return len(found) == len(planned) and all(
        (a.name, a.nullable, a.metadata) == (b.name, b.nullable, b.metadata) and a.type == b.type
        for a, b in zip(found, planned)
    )


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp files are private; a dataset is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest, or None where there is none; ManifestError where it is not one."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} holds a {type(data).__name__}, not a manifest object")
    return data


def append_errors(directory: Path, shard: int, errors: list[tuple]) -> None:
    """Rewrite the error report with this shard's row errors replacing any earlier ones. An
    error is (example_id, reason), or (example_id, reason, {variant, offset}) for one sweep
    variant or one data.chunk window."""
    path = directory / ERRORS_FILE
    kept = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("shard") != shard:
                kept.append(rec)
    for eid, why, *extra in errors:
        rec = {"shard": shard, "example_id": eid, "reason": why}
        kept.append({**rec, **(extra[0] if extra else {})})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for rec in kept:
            f.write(json.dumps(rec, default=str) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
