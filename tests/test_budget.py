"""data.max_tokens: the run covers the fewest leading shards whose tokens reach the budget, the
same shards whatever the runner or the number of actors; verify checks the claim."""

from __future__ import annotations

import json

import pytest

import raysight
from conftest import make_spec
from raysight.dataset.verify import verify

OPS = [{"save": "layers.0.output", "positions": [-1], "as": "h"}]
PROMPTS = [f"prompt {i} " + "x" * (i % 5) for i in range(20)]  # 10-15 tokens each


def _spec(tiny_dirs, out, budget, **execution):
    spec = make_spec(
        tiny_dirs["gpt2"], out, OPS, prompts=PROMPTS, execution={"shard_rows": 4, **execution}
    )
    spec["data"]["max_tokens"] = budget
    return spec


def _expected(tiny_models, budget):
    """The shard count by hand: token counts of the rows, in shards of 4, until the budget."""
    _, tok = tiny_models["gpt2"]
    lengths = [len(tok(p)["input_ids"]) for p in PROMPTS]
    total = 0
    for k in range(0, len(PROMPTS), 4):
        total += sum(lengths[k : k + 4])
        if total >= budget:
            return k // 4 + 1, total
    return len(PROMPTS) // 4, total


def test_the_run_stops_at_the_shard_that_reaches_the_budget(tiny_dirs, tiny_models, tmp_path):
    shards, tokens = _expected(tiny_models, 100)
    assert 1 < shards < 5
    out = tmp_path / "o"
    summary = raysight.run(_spec(tiny_dirs, out, 100), log=lambda _: None)
    assert summary.shards == shards and summary.tokens == tokens
    assert verify(out) == []
    ids = sorted(raysight.open(out).table(["example_id"]).column(0).to_pylist())
    assert ids == list(range(4 * shards))
    assert raysight.run(_spec(tiny_dirs, out, 100), log=lambda _: None).shards_run == 0
    m = json.loads((out / "_manifest.json").read_text())
    m["budget"]["last_shard"] += 1  # claim one shard too many
    (out / "_manifest.json").write_text(json.dumps(m))
    assert any("do not first reach data.max_tokens" in p for p in verify(out))


@pytest.mark.slow
def test_two_actors_give_the_same_shards(ray_local, tiny_dirs, tiny_models, tmp_path):
    shards, _ = _expected(tiny_models, 60)
    out = tmp_path / "o"
    raysight.run(_spec(tiny_dirs, out, 60, runner="ray", actors=2), log=lambda _: None)
    assert verify(out) == []
    m = json.loads((out / "_manifest.json").read_text())
    assert sorted(map(int, m["shards"])) == list(range(shards))
    assert sorted(p.name for p in out.glob("part-*")) == [
        f"part-{k:05d}.parquet" for k in range(shards)
    ]
