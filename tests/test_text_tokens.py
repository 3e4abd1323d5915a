"""A per_sequence save with `special_tokens: drop` holds each row's text tokens only (the
tokenizer's BOS left out), against plain hooks; what it cannot be combined with is named."""

from __future__ import annotations

import pytest
import torch

from conftest import PROMPTS, by_id, make_spec, plan_problems
from raysight.spec import SpecError, parse_spec


def test_the_bos_position_is_left_out_of_each_row(tiny_dirs, tiny_models, run_spec):
    from reference import alone, first

    model, tok = tiny_models["llama"]  # its tokenizer puts <s> first
    ops = [
        {"save": "layers.0.output", "special_tokens": "drop", "as": "words"},
        {"save": "layers.0.output", "special_tokens": "drop", "reduce": "norm", "as": "norms"},
        {"save": "layers.0.output", "as": "all"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops))
    assert ds.manifest.columns[0]["shape"] == [None, 32]
    words, norms, every = by_id(ds, "words"), by_id(ds, "norms"), by_id(ds, "all")
    for i, prompt in enumerate(PROMPTS):
        cap, _ = alone(model, tok, prompt, capture={"h": "model.layers.0"})
        ref = first(cap["h"])[0]  # [1 + text tokens, hidden], BOS first
        ids = tok(prompt)["input_ids"]
        assert ids[0] == tok.bos_token_id and len(every[i]) == len(ids)
        torch.testing.assert_close(words[i], ref[1:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(norms[i], ref[1:].norm(dim=-1), atol=1e-4, rtol=1e-4)


def test_the_builder_writes_it(tiny_dirs):
    from raysight import SpecBuilder

    b = SpecBuilder(str(tiny_dirs["llama"]), ["a b"], "x")
    with b.trace() as t:
        t.layers[0].output.save("w", special_tokens="drop")
    assert b.to_dict()["ops"] == [{"save": "layers.0.output", "as": "w", "special_tokens": "drop"}]


def test_what_special_tokens_drop_cannot_be_combined_with(tiny_dirs):
    base = {"save": "layers.0.output", "special_tokens": "drop"}
    for extra, says in [
        ({"positions": [-1]}, "cannot be combined with positions or an index selector"),
        ({"save": "layers.0.output[:, -2:]"}, "cannot be combined with positions"),
    ]:
        with pytest.raises(SpecError, match=says):
            parse_spec(make_spec(tiny_dirs["llama"], "x", [{**base, **extra}]))
    with pytest.raises(SpecError, match=r"use output\.special_tokens: drop"):
        parse_spec(make_spec(tiny_dirs["llama"], "x", [base], output={"layout": "per_token"}))
    with pytest.raises(SpecError, match="not with generate"):
        parse_spec(make_spec(tiny_dirs["llama"], "x", [base], generate={"max_new_tokens": 2}))
    pooled = {**base, "save": "pooler.output"}  # BERT's pooler: [batch, hidden], no tokens
    msg = plan_problems(make_spec(tiny_dirs["bert"], None, [pooled]))
    assert "ops.0" in msg and "needs a value with a sequence dimension; shape is [32]" in msg
