"""Completion records and the row-error report.

Every finished shard has a completion record, ``_shards/part-NNNNN.json``: its manifest entry
and its row errors, written before the manifest lists it. A resumed run adopts the records of
shards its manifest does not list as done, so a driver that died between the two writes, or a
second driver on the same object-store prefix whose manifest write won, loses no finished shard:
nothing depends on one read-modify-write of a shared file being atomic.

The records are the truth about row errors. ``_errors.jsonl`` (one line per row error, in shard
order) is the report to read with a shell; a run writes it from the records once, as it ends
(finished, failed or interrupted), rather than rewriting a growing file after every shard: that
cost grew with the square of the shard count, and two drivers could race on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .manifest import Manifest, ManifestError, ShardEntry, write_json
from .store import Store

__all__ = [
    "ERRORS_FILE",
    "RECORDS_DIR",
    "adopt_records",
    "error_records",
    "read_errors",
    "read_record",
    "record_name",
    "shard_errors",
    "write_error_report",
    "write_record",
]

ERRORS_FILE = "_errors.jsonl"
RECORDS_DIR = "_shards"


def record_name(shard: int) -> str:
    return f"{RECORDS_DIR}/part-{shard:05d}.json"


def error_records(shard: int, errors: list[tuple]) -> list[dict[str, Any]]:
    """An error is (example_id, reason), or (example_id, reason, {variant, offset}) for one
    sweep variant or one data.chunk window."""
    out = []
    for eid, why, *extra in errors:
        rec = {"shard": shard, "example_id": eid, "reason": why}
        out.append({**rec, **(extra[0] if extra else {})})
    return out


def write_record(store: Store, shard: int, entry: ShardEntry, errors: list[tuple]) -> None:
    """The shard's completion record: its manifest entry and its row errors."""
    write_json(
        store,
        record_name(shard),
        {"shard": shard, **entry.to_json(), "row_errors": error_records(shard, errors)},
    )


def read_record(store: Store, shard: int) -> dict[str, Any]:
    """A shard's completion record; FileNotFoundError where it has none, ManifestError where
    it is not one."""
    name = record_name(shard)
    raw = store.read_bytes(name)
    try:
        rec = json.loads(raw)
        if int(rec["shard"]) != shard:
            raise ValueError(f"it says shard {rec['shard']}")
        if not isinstance(rec.get("row_errors", []), list):
            raise ValueError("its row_errors are not a list")
    except (ValueError, KeyError, TypeError) as e:
        where = store.url(name)
        raise ManifestError(f"{where} is not a readable completion record ({e})") from None
    return rec


def _recorded_shards(store: Store) -> list[int]:
    shards = []
    for name in store.names(RECORDS_DIR):
        stem = name.rsplit("/", 1)[-1]
        number = stem.removeprefix("part-").removesuffix(".json")
        if stem.startswith("part-") and stem.endswith(".json") and number.isdigit():
            shards.append(int(number))
    return sorted(shards)


def adopt_records(store: Store, manifest: Manifest) -> list[int]:
    """List as done, in ``manifest``, every shard with a completion record that the manifest
    does not list as done (its file must be there); returns those shards. Records of shards
    listed done are not read: a resume of 100,000 finished shards reads none."""
    adopted = []
    for k in _recorded_shards(store):
        if manifest.is_done(k):
            continue
        rec = read_record(store, k)
        entry = ShardEntry.from_json(str(k), {f: v for f, v in rec.items() if f != "row_errors"})
        if not entry.done or not store.is_file(str(entry.file)):
            continue
        manifest.shards[k] = entry
        adopted.append(k)
    return adopted


def shard_errors(store: Store, manifest: Manifest, k: int) -> list[dict[str, Any]]:
    """Shard ``k``'s row errors, from its completion record (none read where it has none)."""
    entry = manifest.shards.get(k)
    if entry is None or not entry.done or not entry.errors:
        return []
    try:
        return read_record(store, k).get("row_errors", [])
    except FileNotFoundError:
        raise ManifestError(
            f"shard {k}: its completion record {store.url(record_name(k))} is missing"
        ) from None


def read_errors(store: Store, manifest: Manifest) -> Iterator[dict[str, Any]]:
    """Every row error of the finished shards, in shard order, from their records."""
    for k in manifest.done():
        yield from shard_errors(store, manifest, k)


def write_error_report(store: Store, manifest: Manifest) -> int:
    """Write ``_errors.jsonl`` from the records of the finished shards, streamed (none where no
    shard had an error and there was no report); returns its line count."""
    if not manifest.totals()["errors"] and not store.exists(ERRORS_FILE):
        return 0
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for e in read_errors(store, manifest):
            count += 1
            yield (json.dumps(e, default=str) + "\n").encode()

    store.write_chunks(ERRORS_FILE, lines())
    return count
