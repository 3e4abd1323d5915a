"""The builder in a notebook: generate and steps (steps= or `with t.iter[...]`), t.logits as a
value, negative layer indices, raysight.validate, and the reprs a notebook shows."""

from __future__ import annotations

import torch

import raysight
from conftest import PROMPTS
from reference import alone, first


def test_generate_steps_and_iter(tiny_dirs, tmp_path):
    b = raysight.SpecBuilder(
        str(tiny_dirs["gpt2"]), PROMPTS[:3], str(tmp_path / "o"), {"runner": "local"}
    ).generate(4)
    with b.trace() as t:
        t.logits.save("pick", positions=[-1], reduce="argmax", steps=slice(0, None))
        with t.iter[1:3]:
            t.layers[1].output.save("h1", positions=[-1])
            t.layers[0].mlp.output += 0.0  # recorded with the steps of the block
        t.layers[2].output.save("h2", positions=[-1], steps=range(0, 4, 2))
    ops = b.to_dict()["ops"]
    assert [op.get("steps") for op in ops] == ["0:", "1:3", "1:3", "0:4:2"]
    assert b.to_dict()["generate"] == {"max_new_tokens": 4}
    raysight.run(b, log=lambda _: None)
    ds = raysight.open(tmp_path / "o")
    picks = ds.to_torch("pick")
    gen = ds.table(["generated_ids"]).column(0).to_pylist()
    for p, g in zip(picks, gen):  # greedy: the argmax at step j is the j-th generated token
        assert p.reshape(-1).tolist() == g
    assert [h.shape[0] for h in ds.to_torch("h1")] == [min(2, len(g) - 1) for g in gen]


def test_negative_layer_index_is_the_last(tiny_dirs, tiny_models, tmp_path):
    model, tok = tiny_models["llama"]
    b = raysight.SpecBuilder(str(tiny_dirs["llama"]), PROMPTS[:2], str(tmp_path / "o"))
    b.execution = {"runner": "local"}
    with b.trace() as t:
        t.layers[-1].output.save("last", positions=[-1])
    raysight.run(b, log=lambda _: None)
    ds = raysight.open(tmp_path / "o")
    ids = ds.table(["example_id"]).column(0).to_pylist()
    for k, i in enumerate(ids):
        cap, _ = alone(model, tok, PROMPTS[i], capture={"h": "model.layers.2"})
        torch.testing.assert_close(ds.to_torch("last")[k, 0], first(cap["h"])[0, -1])


def test_validate_and_reprs(tiny_dirs, tmp_path):
    b = raysight.SpecBuilder(str(tiny_dirs["gpt2"]), ["hi"], str(tmp_path / "o"))
    with b.trace() as t:
        t.layers[7].output.save("x")
        t.layers[0].output.save("y", reduce="argmaxx")
    problems = raysight.validate(b)
    assert len(problems) == 1 and problems[0].startswith("ops.1.reduce")
    assert "ops.1.reduce" in b._repr_html_() and "SpecBuilder(" in repr(b)
    with b.trace() as t:  # a fresh trace replaces the ops
        t.layers[7].output.save("x")
    problems = raysight.validate(b)
    assert problems == ["ops.0.save: no module 'transformer.h.7' (model has transformer.h.0–2)"]
    assert raysight.validate(b, model=False) == []
    with b.trace() as t:
        t.layers[-1].output.save("x", positions=[-1])
    assert raysight.validate(b) == []
    assert "save: layers.-1.output" in b._repr_html_()
    b.execution = {"runner": "local"}
    raysight.run(b, log=lambda _: None)
    ds = raysight.open(tmp_path / "o")
    assert "1/1 shards" in repr(ds) and "<pre>" in ds._repr_html_()
