"""The output directory of a run: what a run may find there before it starts (a dataset to
resume, another spec's dataset to replace, a foreign directory to refuse), and the manifest
kept current while the shards finish.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from ..dataset.manifest import MANIFEST_FILE, SPEC_FILE, Manifest, ManifestError
from ..dataset.records import ERRORS_FILE, RECORDS_DIR, write_error_report
from ..dataset.store import Store
from ..errors import RaysightError
from ..writers.shard import OWN_FILE
from .ids import IDS_DIR
from .lock import LOCK_FILE

__all__ = ["OWN_RECORD", "ManifestSaver", "OutputError", "prepare_output"]

#: names under _ids/ and _shards/ that raysight writes (and --overwrite may delete)
OWN_RECORD = re.compile(r"^part-\d{5,}\.(npy|json)$")


class OutputError(RaysightError, RuntimeError):
    """The output path cannot be used (a file, a foreign directory, another spec's dataset)."""


def prepare_output(out: Store, digest: str, overwrite: bool) -> Manifest | None:
    """The existing manifest to resume from, or None for a fresh start."""
    try:
        manifest = Manifest.read(out)
    except ManifestError as e:
        raise OutputError(
            f"output.path {out.uri!r}: {e}; choose another path (nothing was deleted)"
        ) from None
    if manifest is not None and out.local:  # a killed run may have left unfinished shard files
        for stale in out.dir.glob(".part-*.tmp"):
            if OWN_FILE.match(stale.name):
                stale.unlink()
    if manifest is None:
        if any(n for n in out.top_names() if n not in (SPEC_FILE, LOCK_FILE)):
            raise OutputError(
                f"output.path {out.uri!r} exists, is not empty and holds no "
                "raysight dataset; choose another path (nothing was deleted)"
            )
        return None
    if manifest.spec_hash == digest:
        return manifest
    if not overwrite:
        raise OutputError(
            f"output.path {out.uri!r} holds a dataset of a different spec (hash "
            f"{manifest.spec_hash} vs {digest}); use another path or --overwrite"
        )
    # Only what raysight writes is deleted: its shard files and records by their exact names,
    # never a directory or another tool's part-* file.
    for name in out.names():
        top, _, rest = name.partition("/")
        own = (not rest and (OWN_FILE.match(top) or top in (MANIFEST_FILE, ERRORS_FILE))) or (
            top in (IDS_DIR, RECORDS_DIR) and OWN_RECORD.match(rest)
        )
        if own:
            out.delete(name)
    return None


class ManifestSaver:
    """Writes the manifest, at most about once per ``EVERY`` seconds (and never spending more
    than a tenth of the run on it) unless forced: every finished shard has its completion
    record already, which a resume adopts, so a manifest that lags loses nothing, and a run of
    100,000 shards does not rewrite a growing file 100,000 times. A full or read-only disk
    becomes an OutputError; the files already committed stay."""

    EVERY = 2.0

    def __init__(self, out: Store, manifest: Manifest):
        self.out, self.manifest = out, manifest
        self.last, self.cost = float("-inf"), 0.0

    def __call__(self, write: Callable[[], None] | None = None, force: bool = True) -> None:
        try:
            if write is not None:
                write()
            now = time.perf_counter()
            if force or self.due(now):
                self.manifest.save(self.out)
                self.last, self.cost = time.perf_counter(), time.perf_counter() - now
        except OSError as e:
            raise OutputError(
                f"output.path {self.out.uri!r}: cannot write the manifest ({e}); the shards "
                "it already lists are kept, rerun the same command to resume"
            ) from None

    def due(self, now: float) -> bool:
        return now - self.last >= max(self.EVERY, 10 * self.cost)

    def report(self) -> None:
        """The manifest and the error report as the run ends."""
        self(lambda: write_error_report(self.out, self.manifest))
