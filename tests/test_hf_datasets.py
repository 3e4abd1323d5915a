"""A raysight dataset loads with plain ``datasets.load_dataset("parquet", data_files=...)``, no
``features=``, and the values HF gives back are the ones saved (compared with a forward pass of
the HF model with plain PyTorch hooks, not with raysight's own reader)."""

from __future__ import annotations

import datasets
import torch

from conftest import PROMPTS, make_spec


def _load(ds) -> datasets.Dataset:
    files = [str(f) for f in ds.files]
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _layer0(model, tok, prompt: str) -> torch.Tensor:
    got = {}

    def keep(module, args, out):
        got["x"] = out[0] if isinstance(out, tuple) else out

    h = model.transformer.h[0].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(**tok(prompt, return_tensors="pt"))
    finally:
        h.remove()
    return got["x"][0]  # [tokens, hidden]


def test_per_token(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["gpt2"]
    ops = [{"save": "transformer.h.0.output", "as": "h0"}]
    spec = make_spec(tiny_dirs["gpt2"], None, ops, output={"layout": "per_token"})
    hf = _load(run_spec(spec)).with_format("torch")
    assert len(hf) == sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert hf.features["h0"] == datasets.List(datasets.Value("float32"), length=32)
    assert hf.features["token"] == datasets.Value("large_string")
    rows = hf[:]
    for i, prompt in enumerate(PROMPTS):
        mine = rows["example_id"] == i
        ref = _layer0(model, tok, prompt)
        got = rows["h0"][mine][rows["position"][mine].argsort()]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_per_sequence_fixed_shapes(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["gpt2"]
    ops = [
        {"save": "transformer.h.0.output", "positions": [0, -1], "as": "ends"},
        {"save": "logits", "positions": [-1], "reduce": {"topk": 3}, "as": "top"},
    ]
    hf = _load(run_spec(make_spec(tiny_dirs["gpt2"], None, ops)))
    assert hf.features["ends"] == datasets.List(
        datasets.List(datasets.Value("float32"), length=32), length=2
    )
    t = hf.with_format("torch")[:]
    assert t["ends"].shape == (len(PROMPTS), 2, 32) and t["top_ids"].shape == (len(PROMPTS), 1, 3)
    for k, i in enumerate(t["example_id"].tolist()):
        ref = _layer0(model, tok, PROMPTS[i])
        torch.testing.assert_close(t["ends"][k], ref[[0, -1]], rtol=1e-4, atol=1e-5)
    strings = hf["top_tokens"]
    assert len(strings[0]) == 1 and len(strings[0][0]) == 3
