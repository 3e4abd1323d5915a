"""The default runner: a Ray actor on a local Ray instance that raysight starts itself."""

from __future__ import annotations

import pytest
import torch

import raysight
from conftest import PROMPTS, by_id, make_spec

pytestmark = pytest.mark.slow


def test_ray_actor_run_equals_in_process_run(ray_local, tiny_dirs, tmp_path):
    ops = [
        {"save": "layers.1.output", "as": "h"},
        {"set": "layers.0.mlp.output", "value": {"noise": {"std": 0.2, "seed": 1}}, "mode": "add"},
        {"save": "logits", "positions": [-1], "as": "logits"},
    ]
    a = make_spec(
        tiny_dirs["llama"], tmp_path / "ray", ops, execution={"runner": "ray", "shard_rows": 4}
    )
    b = make_spec(tiny_dirs["llama"], tmp_path / "local", ops)
    raysight.run(a, log=lambda _: None)
    raysight.run(b, log=lambda _: None)
    ra, rb = raysight.open(tmp_path / "ray"), raysight.open(tmp_path / "local")
    assert len(ra.files) == 3
    for col in ("h", "logits"):
        x, y = by_id(ra, col), by_id(rb, col)
        assert x.keys() == y.keys() == set(range(len(PROMPTS)))
        for i in x:
            torch.testing.assert_close(x[i], y[i], atol=1e-5, rtol=0)


def test_gpus_that_do_not_exist_fail_at_once(ray_local, tiny_dirs, tmp_path):
    from raysight.engine.ray_runner import ClusterError

    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "g",
        [{"save": "layers.0.output"}],
        execution={"runner": "ray", "gpus_per_actor": 1},
    )
    with pytest.raises(ClusterError, match=r"1 GPU\(s\), but the Ray cluster has 0"):
        raysight.run(spec, log=lambda _: None)
