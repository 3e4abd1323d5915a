"""The dataset manifest (``_manifest.json``): resolved spec, its hash, versions, columns, and the
status and row counts of every shard. Names start with '_' so pyarrow/polars/duckdb readers of
the directory skip them. Every write is atomic (temp file + rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "ERRORS_FILE",
    "MANIFEST_FILE",
    "SPEC_FILE",
    "append_errors",
    "read_manifest",
    "write_json_atomic",
]

MANIFEST_FILE = "_manifest.json"
SPEC_FILE = "_spec.json"
ERRORS_FILE = "_errors.jsonl"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp files are private; a dataset is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def append_errors(directory: Path, shard: int, errors: list[tuple]) -> None:
    """Rewrite the error report with this shard's row errors replacing any earlier ones. An
    error is (example_id, reason), or (example_id, reason, variant) for one sweep variant."""
    path = directory / ERRORS_FILE
    kept = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("shard") != shard:
                kept.append(rec)
    for eid, why, *variant in errors:
        kept.append({"shard": shard, "example_id": eid, "reason": why})
        if variant:
            kept[-1]["variant"] = variant[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for rec in kept:
            f.write(json.dumps(rec, default=str) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
