"""What a resumed run must share with the run that wrote the first shards, besides the spec
(whose hash covers inline prompts, the ops and the model's name): the input files (names, sizes
and modification times, from metadata: no input is read for it), the model's weight files, the
runner (local and Ray results can differ in the last bits), and the earlier runs' datasets that
values are read from (their spec hashes and manifest checksums).

Recorded in the manifest; a rerun whose fingerprint differs is refused, with what changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..data.sources import Source
from ..spec.models import Spec

__all__ = ["changes", "fingerprint"]


def _model(model_dir: str | None) -> dict[str, Any]:
    """Names and sizes of the model directory's files, and a hash of its config: a swapped or
    retrained checkpoint changes one of them, and no weights need reading."""
    if not model_dir or not Path(model_dir).is_dir():
        return {"dir": None}
    d = Path(model_dir)
    files = {p.name: p.stat().st_size for p in sorted(d.iterdir()) if p.is_file()}
    config = d / "config.json"
    conf = hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else None
    return {"files": files, "config_sha256": conf}


def fingerprint(
    spec: Spec,
    model_dir: str | None,
    source: Source | None,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``earlier``: the earlier runs' datasets the ops read, with their spec hashes."""
    ex = spec.execution
    prints = {
        # inline prompts are in the spec, and so in its hash
        "input": {"inline": True} if source is None else source.fingerprint(),
        "model": _model(model_dir),
        "runner": {"runner": ex.runner, "gpu": ex.gpus_per_actor > 0},
    }
    if earlier:
        prints["datasets"] = earlier
    return prints


def changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What differs, in words; empty when a resume is safe."""
    if before is None:
        return ["the dataset records no fingerprint (an older raysight wrote it)"]
    what = {
        "input": "data.source's files",
        "model": "the model's files",
        "runner": "runner",
        "datasets": "an earlier run's dataset that the ops read",
    }
    return [
        f"{label} changed since its first shards were written"
        for key, label in what.items()
        if before.get(key) != now.get(key)
    ]
