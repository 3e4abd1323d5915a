"""output.shuffle: per-token rows in a seeded random order within each shard (a buffer at a
time), every row still the plain hook's value, the same order on a re-run, none moved across
shards."""

from __future__ import annotations

from itertools import pairwise

import pyarrow.parquet as pq
import pytest
import torch

from conftest import PROMPTS, make_spec
from raysight.spec import SpecError, parse_spec

OPS = [{"save": "layers.1.output", "as": "h"}]


def _run(tiny_dirs, run_spec, shuffle=None):
    out = {"layout": "per_token"} | ({"shuffle": shuffle} if shuffle else {})
    spec = make_spec(tiny_dirs["llama"], None, OPS, output=out, execution={"shard_rows": 4})
    ds = run_spec(spec)
    shards = [
        [(r["example_id"], r["position"]) for r in pq.read_table(f).to_pylist()] for f in ds.files
    ]
    return ds, shards


def test_rows_are_shuffled_within_each_shard_and_keep_their_values(
    tiny_dirs, tiny_models, run_spec
):
    from reference import alone, first

    model, tok = tiny_models["llama"]
    _, plain = _run(tiny_dirs, run_spec)
    ds, mixed = _run(tiny_dirs, run_spec, {"seed": 7, "buffer_rows": 16})
    assert [sorted(s) for s in mixed] == [sorted(s) for s in plain]  # no row crosses a shard
    assert mixed != plain
    keys = [k for s in mixed for k in s]
    # a buffer mixes prompts: neighbours are no longer mostly the same prompt's next token
    runs = sum(a[0] == b[0] and b[1] == a[1] + 1 for a, b in pairwise(keys))
    assert runs < len(keys) // 4
    ref = {}
    for i, prompt in enumerate(PROMPTS):
        cap, _ = alone(model, tok, prompt, capture={"h": "model.layers.1"})
        ref[i] = first(cap["h"])[0]
    h = ds.to_torch("h")
    for k, (eid, pos) in enumerate(keys):
        torch.testing.assert_close(h[k], ref[eid][pos], atol=1e-5, rtol=1e-4)
    t = ds.table(["token_id"]).column(0).to_pylist()
    assert t == [tok(PROMPTS[e])["input_ids"][p] for e, p in keys]  # identity columns moved too

    _, again = _run(tiny_dirs, run_spec, {"seed": 7, "buffer_rows": 16})
    assert again == mixed  # the order depends on (seed, shard) only
    _, other = _run(tiny_dirs, run_spec, {"seed": 8, "buffer_rows": 16})
    assert other != mixed


def test_shuffle_fields_are_checked(tiny_dirs):
    spec = make_spec(tiny_dirs["llama"], "x", OPS, output={"shuffle": {"buffer_rows": 1}})
    with pytest.raises(SpecError, match=r"output\.shuffle\.buffer_rows"):
        parse_spec(spec)
    spec = make_spec(tiny_dirs["llama"], "x", OPS, output={"shuffle": {"sed": 1}})
    with pytest.raises(SpecError, match=r"output\.shuffle\.sed: unknown key"):
        parse_spec(spec)
