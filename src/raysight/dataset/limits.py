"""What limits a run, from its shards' stage times: the stage that took most of the shards'
time, how close the run came to that stage's own speed, and what to change. ``raysight inspect``
prints it; measured runs of each kind are in docs/benchmarks.md.

A shard's stages (engine/worker.py) are sequential in the worker except encoding and writing,
which run on the writer's threads: the ``write`` stage is only the time the worker waited for
them, so a write-bound run shows a large ``write`` share, and a writer that keeps up shows almost
none. ``encode`` is the encoder threads' busy time, beside the others, so it is not in the shares.
"""

from __future__ import annotations

from collections.abc import Iterable

from .manifest import ShardEntry

__all__ = ["limit_lines", "stage_seconds"]

# stage -> (what it is, what to change when it limits the run)
_ADVICE = {
    "forward": (
        "the model's forward",
        "the limit raysight aims for; for more speed, a GPU (with a larger "
        "execution.batch_tokens) or more actors",
    ),
    "write": (
        "writing",
        "output.format: arrow, 16-bit saves (dtype:) stored as bytes (docs/benchmarks.md, "
        "writer), more output.encoders when they are busy, fewer saved values or positions, "
        "or a faster disk",
    ),
    "to_host": (
        "copying values off the device",
        "fewer saved values or positions, or a reduce (mean, norm, topk) on the device",
    ),
    "read": ("reading the input", "Parquet input, or the input on a faster disk"),
    "tokenize": ("tokenizing", "more actors (each tokenizes its own shards)"),
    "collate": ("building batches", "more actors"),
    "self_check": (
        "the self-check (rows rerun alone)",
        "a larger execution.shard_rows (it reruns a few rows per shard), or "
        "execution.self_check: 0",
    ),
}
#: a stage beside the limiting one that takes at least this share is named too
_ALSO = 0.15


def stage_seconds(shards: Iterable[ShardEntry]) -> dict[str, float]:
    """Seconds per stage (tokenize, forward, ...), summed over finished shards' entries."""
    total: dict[str, float] = {}
    for shard in shards:
        for stage, secs in shard.stages.items():
            total[stage] = total.get(stage, 0.0) + secs
    return total


def limit_lines(shards: list[ShardEntry]) -> list[str]:
    """For ``inspect``: the stage that limits the run, with its share of the shards' time, how
    close the shards came to the forward's own speed, and what to change; then any other
    stage that takes a large share."""
    stages = stage_seconds(shards)
    encoding = stages.pop("encode", 0.0)  # on the writer's threads, beside the rest
    total = sum(stages.values())
    if not total:
        return []
    ranked = sorted(stages, key=stages.__getitem__, reverse=True)
    top = ranked[0]
    what, change = _ADVICE.get(top, (top, "see docs/benchmarks.md"))
    forward = stages.get("forward", 0.0) / total
    lines = [
        f"limit     {top}-bound: {what} took {stages[top] / total:.0%} of the shards' time; "
        f"they ran at {forward:.0%} of their forward's own speed",
        f"          {change}",
    ]
    for stage in ranked[1:]:
        if stages[stage] / total >= _ALSO and stage != "forward":
            what, change = _ADVICE.get(stage, (stage, "see docs/benchmarks.md"))
            lines.append(f"          also {what} ({stages[stage] / total:.0%}): {change}")
    written = sum(entry.bytes for entry in shards)
    if stages.get("write", 0.0) >= 0.1:
        lines.append(
            f"          waited {stages['write']:.1f} s on the writer, which wrote "
            f"{written / 1e6:,.1f} MB beside the forward; its encoders were busy {encoding:.1f} s"
        )
    return lines
