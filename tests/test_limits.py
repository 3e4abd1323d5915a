"""``raysight inspect`` names what limits a run, from its shards' stage times."""

from __future__ import annotations

import pytest

from raysight.dataset.limits import limit_lines
from raysight.dataset.manifest import ShardEntry


def _shard(**stages: float) -> ShardEntry:
    return ShardEntry("done", file="part-00000.parquet", bytes=50_000_000, stages=stages)


@pytest.mark.parametrize(
    "stages, bound, advice",
    [
        ({"forward": 9.0, "write": 0.5, "encode": 0.5}, "forward-bound", "a GPU"),
        ({"forward": 2.0, "write": 7.0, "encode": 1.0}, "write-bound", "output.format: arrow"),
        ({"forward": 3.0, "encode": 6.0, "write": 4.0}, "write-bound", "more output.encoders"),
        ({"forward": 1.0, "self_check": 3.0}, "self_check-bound", "execution.self_check: 0"),
        ({"forward": 2.0, "tokenize": 5.0}, "tokenize-bound", "more actors"),
    ],
)
def test_the_largest_stage_is_the_limit_with_what_to_change(stages, bound, advice):
    lines = limit_lines([_shard(**stages), _shard(**stages)])  # summed over shards
    assert lines[0].startswith(f"limit     {bound}: ")
    # encoding runs on the writer's threads, beside the worker's stages: not a share of them
    sequential = {k: v for k, v in stages.items() if k != "encode"}
    share = round(100 * max(sequential.values()) / sum(sequential.values()))
    forward = round(100 * stages["forward"] / sum(sequential.values()))
    assert f"took {share}% of the shards' time" in lines[0]
    assert f"they ran at {forward}% of their forward's own speed" in lines[0]
    assert advice in lines[1]


def test_other_large_stages_and_the_writer_wait_are_named():
    lines = limit_lines([_shard(forward=5.0, self_check=3.0, write=2.0, encode=4.0)])
    text = "\n".join(lines)
    assert "also the self-check (rows rerun alone) (30%)" in text
    assert "also writing (20%)" in text
    assert (
        "waited 2.0 s on the writer, which wrote 50.0 MB beside the forward; "
        "its encoders were busy 4.0 s" in text
    )


def test_no_stage_times_no_limit():
    assert limit_lines([]) == [] and limit_lines([_shard()]) == []
