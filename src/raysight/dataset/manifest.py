"""The dataset manifest (``_manifest.json``): resolved spec, its hash, versions, columns, and the
status and row counts of every shard. Names start with '_' so pyarrow/polars/duckdb readers of
the directory skip them. Every write is atomic (temp file + rename).

Every finished shard also has a completion record, ``_shards/part-NNNNN.json``: its manifest
entry and its row errors, written before the manifest lists it. A resumed run adopts the
records of shards its manifest does not list as done, so a driver that died between the two
writes, or a second driver on the same object-store prefix whose manifest write won, loses no
finished shard: nothing depends on one read-modify-write of a shared file being atomic.

The manifest proves its own integrity: its header (spec, hash, columns, schema, layout, input
rows) carries a checksum, and each finished shard its file's size and SHA-256, so ``verify`` can
tell any changed byte, swapped file or edited column from a whole dataset.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import RaysightError
from .store import Store

__all__ = [
    "ERRORS_FILE",
    "FORMAT",
    "HEADER_KEYS",
    "MANIFEST_FILE",
    "RECORDS_DIR",
    "SPEC_FILE",
    "ManifestError",
    "adopt_records",
    "append_errors",
    "covered_rows",
    "expected_shards",
    "header_sha256",
    "read_manifest",
    "read_schema_ipc",
    "record_name",
    "same_schema",
    "schema_ipc",
    "write_json",
    "write_record",
]

MANIFEST_FILE = "_manifest.json"
SPEC_FILE = "_spec.json"
ERRORS_FILE = "_errors.jsonl"
RECORDS_DIR = "_shards"
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


class ManifestError(RaysightError, ValueError):
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
    """How many shards the run splits its input rows into (at least one), or, once
    data.max_tokens was reached, how many it needed."""
    budget = manifest.get("budget")
    if isinstance(budget, dict) and isinstance(budget.get("last_shard"), int):
        return budget["last_shard"] + 1
    size = (manifest.get("spec", {}).get("execution") or {}).get("shard_rows", 4096)
    return max(1, -(-manifest.get("input_rows", 0) // size))


def covered_rows(manifest: dict[str, Any]) -> int:
    """The input rows the dataset covers: all of them, or those of the shards data.max_tokens
    needed."""
    size = (manifest.get("spec", {}).get("execution") or {}).get("shard_rows", 4096)
    return min(manifest.get("input_rows", 0), expected_shards(manifest) * size)


def same_schema(found: Any, planned: Any) -> bool:
    """Types (list field names aside, which Parquet renames) and field metadata (dtype, shape,
    site) equal; schema-level metadata (pandas, ARROW:schema) is the writer's business."""
    return len(found) == len(planned) and all(
        (a.name, a.nullable, a.metadata) == (b.name, b.nullable, b.metadata) and a.type == b.type
        for a, b in zip(found, planned)
    )


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, default=str, allow_nan=False).encode()


def write_json(store: Store, name: str, data: Any) -> None:
    store.write_bytes(name, _json(data))


def record_name(shard: int) -> str:
    return f"{RECORDS_DIR}/part-{shard:05d}.json"


def write_record(store: Store, shard: int, entry: dict[str, Any], errors: list[tuple]) -> None:
    """The shard's completion record: its manifest entry and its row errors."""
    write_json(
        store,
        record_name(shard),
        {"shard": shard, **entry, "row_errors": _error_records(shard, errors)},
    )


def _records(store: Store, skip: set[int] = frozenset()) -> dict[int, dict[str, Any]]:
    """The completion records, by shard, except those of the shards in ``skip`` (which are not
    read: a resume of 100,000 finished shards reads no record)."""
    out = {}
    for name in store.names(RECORDS_DIR):
        stem = name.rsplit("/", 1)[-1]
        number = stem.removeprefix("part-").removesuffix(".json")
        if not (stem.startswith("part-") and stem.endswith(".json") and number.isdigit()):
            continue
        if int(number) in skip:
            continue
        try:
            rec = json.loads(store.read_bytes(name))
            if int(rec["shard"]) != int(number):
                raise ValueError(f"it says shard {rec['shard']}")
            out[int(number)] = rec
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ManifestError(
                f"{store.url(name)} is not a readable completion record ({e})"
            ) from None
    return out


def read_manifest(directory: str | Path | Store) -> dict[str, Any] | None:
    """The manifest, or None where there is none; ManifestError where it is not one."""
    store = directory if isinstance(directory, Store) else Store(directory)
    where = store.url(MANIFEST_FILE)
    try:
        raw = store.read_bytes(MANIFEST_FILE)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestError(f"{where} is not readable ({e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{where} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where} holds a {type(data).__name__}, not a manifest object")
    return data


def adopt_records(store: Store, manifest: dict[str, Any]) -> list[int]:
    """List as done, in ``manifest``, every shard with a completion record that the manifest
    does not list as done (its file must be there), with its row errors; returns those shards."""
    adopted = []
    done = {
        int(k)
        for k, e in manifest["shards"].items()
        if isinstance(e, dict) and e.get("status") == "done" and str(k).isdigit()
    }
    for k, rec in _records(store, skip=done).items():
        if not store.is_file(str(rec.get("file"))):
            continue
        manifest["shards"][str(k)] = {f: v for f, v in rec.items() if f not in _RECORD_ONLY}
        errors = [
            (e["example_id"], e["reason"], {f: e[f] for f in ("variant", "offset") if f in e})
            for e in rec.get("row_errors", [])
        ]
        append_errors(store, k, errors)
        adopted.append(k)
    return adopted


_RECORD_ONLY = ("shard", "row_errors")


def _error_records(shard: int, errors: list[tuple]) -> list[dict[str, Any]]:
    """An error is (example_id, reason), or (example_id, reason, {variant, offset}) for one
    sweep variant or one data.chunk window."""
    out = []
    for eid, why, *extra in errors:
        rec = {"shard": shard, "example_id": eid, "reason": why}
        out.append({**rec, **(extra[0] if extra else {})})
    return out


def append_errors(directory: Path | Store, shard: int, errors: list[tuple]) -> None:
    """Rewrite the error report with this shard's row errors replacing any earlier ones (the
    completion records hold the same errors; this file is the one report to read)."""
    store = directory if isinstance(directory, Store) else Store(directory)
    kept = []
    try:
        text = store.read_bytes(ERRORS_FILE).decode("utf-8")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        rec = json.loads(line)
        if rec.get("shard") != shard:
            kept.append(rec)
    kept += _error_records(shard, errors)
    store.write_bytes(
        ERRORS_FILE, "".join(json.dumps(r, default=str) + "\n" for r in kept).encode()
    )
