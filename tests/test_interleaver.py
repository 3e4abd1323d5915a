"""Interleaver mechanics: hooks only where needed and always removed, early stop, execution
order, and refusals that prevent silently wrong results."""

from __future__ import annotations

import pytest
import torch

from conftest import make_spec
from raysight.data.batching import collate, encode
from raysight.data.readers import read_rows
from raysight.engine.plan import make_plan
from raysight.interleave.interleaver import Interleaver, OpError
from raysight.interleave.resolve import PlanError
from raysight.models.loading import load_model
from raysight.spec import parse_spec


def setup(path, ops, prompts=("hello there", "hi")):
    spec = parse_spec(make_spec(path, "unused", ops, prompts=list(prompts)))
    loaded = load_model(spec.model)
    plan = make_plan(spec, loaded=load_model(spec.model, meta=True))
    rows, _, _ = read_rows(spec.data)
    batch = collate(
        encode(loaded.tokenizer, rows, 512, True),
        loaded.tokenizer.pad_token_id,
        loaded.padding_side,
        loaded.kind == "causal",
    )
    return loaded, plan, batch


def hook_counts(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_early_stop_skips_everything_after_the_last_needed_module(tiny_dirs):
    loaded, plan, batch = setup(tiny_dirs["gpt2"], [{"save": "layers.0.output"}])
    assert plan.hooks.stop_event == ("post", "transformer.h.0")
    calls = []
    mods = dict(loaded.module.named_modules())
    h = [
        mods[n].register_forward_hook(lambda *a, n=n: calls.append(n))
        for n in ("transformer.h.1", "transformer.ln_f", "lm_head")
    ]
    Interleaver(loaded, plan.hooks).run(batch)
    for x in h:
        x.remove()
    assert calls == []


def test_logits_are_computed_only_when_asked(tiny_dirs):
    loaded, plan, batch = setup(tiny_dirs["gpt2"], [{"save": "logits", "positions": [-1]}])
    assert plan.hooks.stop_event == ("post", "lm_head")
    out = Interleaver(loaded, plan.hooks).run(batch)
    assert out["logits"].shape == (2, 1, loaded.module.config.vocab_size)


def test_hooks_installed_per_batch_and_removed_even_on_error(tiny_dirs, tmp_path):
    loaded, plan, batch = setup(tiny_dirs["gpt2"], [{"save": "layers.1.output"}])
    before = hook_counts(loaded.module)
    Interleaver(loaded, plan.hooks).run(batch)
    assert hook_counts(loaded.module) == before
    boom = {"n": 0}

    def explode(*a):
        boom["n"] += 1
        raise RuntimeError("model failure mid-forward")

    mods = dict(loaded.module.named_modules())
    h = mods["transformer.h.1.mlp"].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="mid-forward"):
        Interleaver(loaded, plan.hooks).run(batch)
    h.remove()
    assert boom["n"] == 1 and hook_counts(loaded.module) == before


def test_skip_patch_is_removed_after_the_batch(tiny_dirs):
    loaded, plan, batch = setup(
        tiny_dirs["gpt2"], [{"skip": "layers.1"}, {"save": "layers.2.output"}]
    )
    layer = dict(loaded.module.named_modules())["transformer.h.1"]
    Interleaver(loaded, plan.hooks).run(batch)
    assert "forward" not in layer.__dict__


def test_ops_run_in_execution_order_not_list_order(tiny_dirs):
    """A save listed before the set that feeds it still sees the set's effect downstream."""
    loaded, plan, batch = setup(
        tiny_dirs["gpt2"],
        [
            {"save": "layers.2.input", "as": "late"},
            {"set": "layers.1.output", "value": {"zeros": True}},
        ],
    )
    out = Interleaver(loaded, plan.hooks).run(batch)
    assert all(torch.count_nonzero(r) == 0 for r in out["late"])


def test_from_site_that_runs_later_is_a_plan_error_naming_both(tiny_dirs):
    with pytest.raises(PlanError) as e:
        setup(
            tiny_dirs["gpt2"],
            [
                {"set": "layers.0.output", "value": {"from": "layers.2.output"}},
                {"save": "layers.2.output"},
            ],
        )
    msg = str(e.value)
    assert "layers.2.output" in msg and "transformer.h.0" in msg and "ops.0" in msg


def test_batch_dimension_index_is_refused_with_a_hint(tiny_dirs):
    with pytest.raises(PlanError, match="batch dimension"):
        setup(tiny_dirs["gpt2"], [{"save": "layers.1.output[0]"}])


def test_op_error_on_real_values_names_the_op(tiny_dirs, tmp_path):
    import numpy as np

    np.save(tmp_path / "bad.npy", np.ones(7, dtype=np.float32))
    with pytest.raises(PlanError, match=r"ops.0.*\[7\].*\[.*32\]"):
        setup(
            tiny_dirs["gpt2"],
            [
                {"set": "layers.0.output", "value": {"file": {"path": str(tmp_path / "bad.npy")}}},
                {"save": "layers.1.output"},
            ],
        )
    assert issubclass(OpError, RuntimeError)


def test_set_from_with_positions_takes_the_same_positions_of_the_source(tiny_dirs):
    loaded, plan, batch = setup(
        tiny_dirs["llama"],
        [
            {"save": "layers.0.output", "as": "h0"},
            {"set": "layers.2.output", "positions": [-1], "value": {"from": "layers.0.output"}},
            {"save": "layers.2.output", "as": "h2"},
        ],
    )
    out = Interleaver(loaded, plan.hooks).run(batch)
    for h0, h2 in zip(out["h0"], out["h2"]):
        assert torch.equal(h2[-1], h0[-1])
        assert not torch.equal(h2[0], h0[0])  # other positions keep layer 2's own value


def test_skip_with_an_index_selector_is_refused(tiny_dirs):
    with pytest.raises(PlanError, match="must be a whole value"):
        setup(
            tiny_dirs["gpt2"],
            [
                {"skip": "layers.1", "with": "layers.0.output[:, -1]"},
                {"save": "layers.2.output"},
            ],
        )


def test_sources_inside_skipped_modules_and_column_clashes_are_plan_errors(tiny_dirs):
    with pytest.raises(PlanError) as e:
        setup(
            tiny_dirs["gpt2"],
            [
                {"skip": "layers.1"},
                {"set": "layers.2.output", "value": {"from": "layers.1.mlp.output"}},
                {"save": "layers.2.output", "as": "example_id"},
                {"save": "logits", "reduce": {"topk": 2}, "positions": [-1], "as": "lg"},
                {"save": "layers.0.output", "as": "lg_ids"},
            ],
        )
    msg = str(e.value)
    assert "ops.1.value.from: 'layers.1.mlp.output' is never computed" in msg
    assert "column 'example_id' is an identity column" in msg
    assert "column 'lg_ids' is also written by ops.3" in msg
