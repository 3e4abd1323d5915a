"""The dataset manifest (``_manifest.json``) as typed nouns: a ``Manifest`` (the resolved spec,
its hash, versions, columns, schema, input rows) and one ``ShardEntry`` per shard run (done or
failed). Names start with '_' so pyarrow/polars/duckdb readers of the directory skip them. Every
write is atomic (temp file + rename, or one PUT on an object store).

The manifest proves its own integrity: its header (HEADER_KEYS) carries a checksum, and each
finished shard its file's size and SHA-256, so ``verify`` can tell any changed byte, swapped file
or edited column from a whole dataset. It is not the only record of progress: every finished
shard also has a completion record (dataset/records.py), which a resume adopts.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RaysightError
from .store import Store

__all__ = [
    "FORMAT",
    "HEADER_KEYS",
    "MANIFEST_FILE",
    "SPEC_FILE",
    "Manifest",
    "ManifestError",
    "ShardEntry",
    "read_schema_ipc",
    "same_schema",
    "schema_ipc",
    "write_json",
]

MANIFEST_FILE = "_manifest.json"
SPEC_FILE = "_spec.json"
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
# the header's keys a manifest must hold, and their types
_REQUIRED = {
    "spec_hash": str,
    "spec": dict,
    "layout": str,
    "columns": list,
    "schema": str,
    "schema_ipc": str,
    "input_rows": int,
    "shards": dict,
}


class ManifestError(RaysightError, ValueError):
    """A ``_manifest.json`` that cannot be read as a manifest; ``problems`` lists every reason."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class ShardEntry:
    """One shard in the manifest: ``done`` with its file and counts, or ``failed`` with the
    last error and how many attempts it had."""

    status: str  # "done" | "failed"
    file: str | None = None
    bytes: int = 0
    sha256: str | None = None
    rows: int = 0  # output rows written (tokens in the per_token layout)
    examples: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated: int = 0
    errors: int = 0  # row errors, listed in its completion record
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    self_check: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # failed: the last attempt's error
    attempts: int = 0

    @property
    def done(self) -> bool:
        return self.status == "done"

    @classmethod
    def failed(cls, error: str, attempts: int) -> ShardEntry:
        return cls("failed", error=error, attempts=attempts)

    def to_json(self) -> dict[str, Any]:
        if not self.done:
            return {"status": self.status, "error": self.error, "attempts": self.attempts}
        return {k: v for k, v in asdict(self).items() if k not in ("error", "attempts")}

    @classmethod
    def from_json(cls, k: str, data: Any) -> ShardEntry:
        """ManifestError naming the shard where ``data`` is not an entry."""
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ManifestError(f"_manifest.json: shard {k!r} has no status")
        if data["status"] == "done" and not all(
            isinstance(data.get(f), t)
            for f, t in (("file", str), ("rows", int), ("bytes", int), ("sha256", str))
        ):
            raise ManifestError(f"_manifest.json: shard {k} lacks its file, rows, size or checksum")
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        try:
            return cls(**known)
        except TypeError as e:
            raise ManifestError(f"_manifest.json: shard {k}: {e}") from None


@dataclass
class Manifest:
    """What a run fixed before its first shard (the header), and every shard it ran."""

    spec_hash: str
    spec: dict[str, Any]
    model: dict[str, Any]
    layout: str
    format_files: str
    columns: list[dict[str, Any]]
    schema: str
    schema_ipc: str
    input_rows: int
    fingerprint: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    shards: dict[int, ShardEntry] = field(default_factory=dict)
    budget: dict[str, Any] | None = None  # {max_tokens, last_shard} once data.max_tokens was hit
    header_sha256: str | None = None  # fixed by the first run; None in an older manifest
    format: str = FORMAT

    # ------------------------------------------------------------ the header
    def header(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HEADER_KEYS}

    def header_checksum(self) -> str:
        """Checksum of the header, independent of key order."""
        blob = json.dumps(self.header(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def seal(self) -> Manifest:
        """Fix the header checksum (a new run's manifest, before its first shard)."""
        if self.header_sha256 is None:
            self.header_sha256 = self.header_checksum()
        return self

    @property
    def header_intact(self) -> bool:
        return self.header_sha256 == self.header_checksum()

    def planned_schema(self) -> Any:
        return read_schema_ipc(self.schema_ipc)

    # ------------------------------------------------------------ the shards
    @property
    def shard_rows(self) -> int:
        return (self.spec.get("execution") or {}).get("shard_rows", 4096)

    @property
    def n_shards(self) -> int:
        """How many shards the input rows split into (at least one)."""
        return max(1, -(-self.input_rows // self.shard_rows))

    @property
    def expected_shards(self) -> int:
        """The shards the dataset is made of: all of them, or, once data.max_tokens was
        reached, those it needed."""
        last = (self.budget or {}).get("last_shard")
        return last + 1 if isinstance(last, int) else self.n_shards

    @property
    def covered_rows(self) -> int:
        """The input rows the dataset covers."""
        return min(self.input_rows, self.expected_shards * self.shard_rows)

    def input_range(self, k: int) -> range:
        """Shard ``k``'s input rows."""
        return range(k * self.shard_rows, min(self.input_rows, (k + 1) * self.shard_rows))

    def done(self) -> dict[int, ShardEntry]:
        """The finished shards, in shard order."""
        return {k: e for k, e in sorted(self.shards.items()) if e.done}

    def failed(self) -> dict[int, ShardEntry]:
        return {k: e for k, e in sorted(self.shards.items()) if not e.done}

    def is_done(self, k: int) -> bool:
        entry = self.shards.get(k)
        return entry is not None and entry.done

    def totals(self) -> dict[str, int]:
        """examples, rows, tokens, padded_tokens and errors, summed over finished shards."""
        keys = ("examples", "rows", "tokens", "padded_tokens", "errors")
        done = self.done().values()
        return {k: sum(getattr(e, k) for e in done) for k in keys}

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in HEADER_KEYS}
        out["versions"] = self.versions
        out["header_sha256"] = self.header_sha256
        out["shards"] = {str(k): e.to_json() for k, e in sorted(self.shards.items())}
        if self.budget is not None:
            out["budget"] = self.budget
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST_FILE) -> Manifest:
        """ManifestError listing every problem where ``data`` is not a raysight manifest."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where} holds a {type(data).__name__}, not a manifest object")
        if data.get("format") != FORMAT:
            raise ManifestError(
                f"{where}: format {data.get('format')!r} is not {FORMAT!r}: raysight did not "
                "write it"
            )
        problems = [
            f"_manifest.json: '{key}' is missing or not a {kind.__name__}"
            for key, kind in _REQUIRED.items()
            if not isinstance(data.get(key), kind)
        ]
        if problems:
            raise ManifestError(problems)
        shards = {}
        for k, entry in data["shards"].items():
            try:
                parsed = ShardEntry.from_json(k, entry)
            except ManifestError as e:
                problems += e.problems
                continue
            if not str(k).isdigit():
                problems.append(f"_manifest.json: shard {k!r} is not a shard number")
                continue
            shards[int(k)] = parsed
        if problems:
            raise ManifestError(problems)
        return cls(
            **{k: data.get(k) for k in HEADER_KEYS if k != "format"},
            versions=data.get("versions") or {},
            shards=shards,
            budget=data.get("budget"),
            header_sha256=data.get("header_sha256"),
        )

    @classmethod
    def read(cls, directory: str | Path | Store) -> Manifest | None:
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
        return cls.from_json(data, where)

    def save(self, store: Store) -> None:
        write_json(store, MANIFEST_FILE, self.to_json())


def schema_ipc(schema: Any) -> str:
    """A pyarrow schema as base64 Arrow IPC: exact, unlike its text form (which Parquet's list
    field names change)."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def read_schema_ipc(text: str) -> Any:
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))


def same_schema(found: Any, planned: Any) -> bool:
    """Types (list field names aside, which Parquet renames) and field metadata (dtype, shape,
    site) equal; schema-level metadata (pandas, ARROW:schema) is the writer's business."""
    return len(found) == len(planned) and all(
        (a.name, a.nullable, a.metadata) == (b.name, b.nullable, b.metadata) and a.type == b.type
        for a, b in zip(found, planned)
    )


def write_json(store: Store, name: str, data: Any) -> None:
    store.write_bytes(name, json.dumps(data, indent=2, default=str, allow_nan=False).encode())
