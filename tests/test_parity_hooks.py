"""Every op against an independent reference: each prompt alone through the plain HF model with
plain PyTorch hooks (and HF's output_hidden_states)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ARCHS, PROMPTS, by_id, make_spec
from reference import alone, first

LAYER = {"gpt2": "transformer.h", "llama": "model.layers", "bert": "encoder.layer"}
EMBED = {"gpt2": "transformer.wte", "llama": "model.embed_tokens", "bert": "embeddings"}
CAUSAL = ["gpt2", "llama"]
NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm"}
ATOL = 1e-5


def close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_every_layer_matches_hooks_and_hidden_states(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"save": "layers.*.output", "as": "h"},
                {"save": "embed.output", "as": "emb"},
            ],
        )
    )
    cols = {i: by_id(ds, f"h.{i}") for i in range(3)}
    emb = by_id(ds, "emb")
    for k, prompt in enumerate(PROMPTS):
        got, _ = alone(
            model,
            tok,
            prompt,
            capture={f"h{i}": f"{LAYER[arch]}.{i}" for i in range(3)} | {"emb": EMBED[arch]},
        )
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            hs = model(**ids, output_hidden_states=True).hidden_states
        for i in range(3):
            close(cols[i][k], first(got[f"h{i}"])[0])
        for i in range(2):  # the last hidden state has the final norm applied in some models
            close(cols[i][k], hs[i + 1][0])
        close(emb[k], first(got["emb"])[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_positions_and_selectors_index_real_tokens(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"save": "layers.1.output", "positions": [-1, 0, 1], "as": "pos"},
                {"save": "layers.1.output[:, -1, :]", "as": "last"},
                {"save": "layers.1.output[:, 0, 2:5]", "as": "first_slice"},
            ],
            prompts=[p for p in PROMPTS if len(p) >= 2],
        )
    )
    pos, last, sl = by_id(ds, "pos"), by_id(ds, "last"), by_id(ds, "first_slice")
    for k, prompt in enumerate(p for p in PROMPTS if len(p) >= 2):
        h = first(alone(model, tok, prompt, capture={"h": f"{LAYER[arch]}.1"})[0]["h"])[0]
        close(pos[k], h[[-1, 0, 1]])
        close(last[k], h[-1])
        close(sl[k], h[0, 2:5])


@pytest.mark.parametrize("arch", CAUSAL)
def test_set_zero_add_scale_match_hooked_reference(
    arch, tiny_dirs, tiny_models, run_spec, tmp_path
):
    model, tok = tiny_models[arch]
    vec = np.linspace(-1, 1, 32, dtype=np.float32)
    np.save(tmp_path / "v.npy", vec)
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"set": "layers.0.mlp.output", "value": {"zeros": True}},
                {
                    "set": "layers.1.output",
                    "value": {"file": {"path": str(tmp_path / "v.npy"), "scale": 2.0}},
                    "mode": "add",
                },
                {"set": "layers.2.output", "value": 0.5, "mode": "scale", "positions": [-1]},
                {"save": "logits", "positions": [-1, 0], "as": "logits"},
            ],
        )
    )
    got = by_id(ds, "logits")
    v = torch.from_numpy(vec) * 2

    def scale_last(o):
        o = o.clone()
        o[:, -1] *= 0.5
        return o

    for k, prompt in enumerate(PROMPTS):
        _, out = alone(
            model,
            tok,
            prompt,
            edit={
                f"{LAYER[arch]}.0.mlp": lambda o: torch.zeros_like(o),
                f"{LAYER[arch]}.1": lambda o: o + v,
                f"{LAYER[arch]}.2": scale_last,
            },
        )
        close(got[k], out.logits[0, [-1, 0]], atol=1e-4)


@pytest.mark.parametrize("arch", CAUSAL)
def test_set_from_earlier_site_and_input_sites(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"set": "layers.2.output", "value": {"from": "layers.0.output"}},
                {"save": "layers.2.output", "positions": [-1], "as": "h2"},
                {"save": "layers.1.input", "as": "in1"},
                {"save": "final_norm.input", "positions": [-1], "as": "norm_in"},
            ],
        )
    )
    h2, in1, norm_in = by_id(ds, "h2"), by_id(ds, "in1"), by_id(ds, "norm_in")
    for k, prompt in enumerate(PROMPTS):
        got, _ = alone(
            model,
            tok,
            prompt,
            capture={"h0": f"{LAYER[arch]}.0"},
            pre_capture={"in1": f"{LAYER[arch]}.1"},
        )
        h0 = first(got["h0"])[0]
        close(h2[k], h0[[-1]])
        close(in1[k], got["in1"][0])
        close(norm_in[k], h0[[-1]])  # layer 2's output is layer 0's: what the norm receives


@pytest.mark.parametrize("arch", CAUSAL)
def test_skip_uses_replacement_and_never_runs_the_module(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    from raysight.models.loading import load_model
    from raysight.spec import parse_spec

    spec = make_spec(
        tiny_dirs[arch],
        None,
        [
            {"skip": "layers.1", "with": "layers.0.output"},
            {"save": "logits", "positions": [-1], "as": "logits"},
        ],
    )
    ds = run_spec(spec)
    got = by_id(ds, "logits")
    for k, prompt in enumerate(PROMPTS):
        cap, _ = alone(model, tok, prompt, capture={"h0": f"{LAYER[arch]}.0"})
        _, out = alone(model, tok, prompt, edit={f"{LAYER[arch]}.1": lambda o, h=cap["h0"]: h})
        close(got[k], out.logits[0, [-1]], atol=1e-4)

    # The skipped layer's own submodules never run (its forward is replaced, not hooked).
    from raysight.data.batching import collate, encode
    from raysight.data.readers import read_rows
    from raysight.engine.plan import make_plan
    from raysight.interleave.interleaver import Interleaver

    parsed = parse_spec(spec)
    loaded = load_model(parsed.model)
    plan = make_plan(parsed, loaded=load_model(parsed.model, meta=True))
    calls = []
    mods = dict(loaded.module.named_modules())
    hs = [mods[f"{LAYER[arch]}.1.mlp"].register_forward_hook(lambda *a: calls.append(1))]
    rows, _, _ = read_rows(parsed.data)
    batch = collate(
        encode(loaded.tokenizer, rows, 512, True), loaded.tokenizer.pad_token_id, "left", True
    )
    Interleaver(loaded, plan.hooks).run(batch)
    hs[0].remove()
    assert calls == []


@pytest.mark.parametrize("arch", CAUSAL)
def test_logit_lens_and_reductions(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {
                    "save": "layers.1.output",
                    "positions": [-1],
                    "apply": ["final_norm", "lm_head"],
                    "reduce": {"topk": 4},
                    "as": "lens",
                },
                {
                    "save": "layers.1.output",
                    "positions": [-1],
                    "apply": ["final_norm", "lm_head"],
                    "as": "lens_full",
                },
                {"save": "layers.1.output", "reduce": "norm", "as": "norm"},
                {"save": "layers.1.output", "positions": [-2, -1], "reduce": "mean", "as": "mean"},
                {"save": "logits", "positions": [-1], "reduce": "argmax", "as": "pred"},
            ],
            prompts=[p for p in PROMPTS if len(p) >= 2],
        )
    )
    mods = dict(model.named_modules())
    for k, prompt in enumerate(p for p in PROMPTS if len(p) >= 2):
        cap, out = alone(model, tok, prompt, capture={"h": f"{LAYER[arch]}.1"})
        h = first(cap["h"])[0]
        with torch.no_grad():
            lens = mods["lm_head"](mods[NORM[arch]](h[[-1]]))
        close(by_id(ds, "lens_full")[k], lens)
        vals, ids = lens.topk(4, dim=-1)
        close(by_id(ds, "lens_values")[k], vals)
        assert torch.equal(by_id(ds, "lens_ids")[k], ids)
        close(by_id(ds, "norm")[k], h.norm(dim=-1))
        close(by_id(ds, "mean")[k], h[[-2, -1]].mean(-1))
        assert torch.equal(by_id(ds, "pred")[k], out.logits[0, [-1]].argmax(-1))


def test_standardized_output_is_the_hidden_state_raw_path_is_raw(tiny_dirs, tiny_models, run_spec):
    """layers.N.attn.output means the attention output whether the module returns a tuple or
    not; the raw path gives the raw value, and [0] picks from the tuple."""
    model, tok = tiny_models["gpt2"]
    ds = run_spec(
        make_spec(
            tiny_dirs["gpt2"],
            None,
            [
                {"save": "layers.0.attn.output", "as": "std"},
                {"save": "transformer.h.0.attn.output[0]", "as": "raw"},
            ],
        )
    )
    std, raw = by_id(ds, "std"), by_id(ds, "raw")
    for k, prompt in enumerate(PROMPTS):
        cap, _ = alone(model, tok, prompt, capture={"a": "transformer.h.0.attn"})
        assert isinstance(cap["a"], tuple)
        close(std[k], cap["a"][0][0])
        close(raw[k], cap["a"][0][0])


def test_sequential_factory_model(run_spec):
    import tiny

    rng = np.random.default_rng(0)
    xs = rng.standard_normal((9, 8)).astype(np.float32)
    spec = {
        "model": {"factory": "tiny:sequential", "factory_kwargs": {"width": 8}},
        "data": {"prompts": [{"x": x.tolist()} for x in xs], "input_field": "x"},
        "ops": [
            {"save": "1.output", "as": "relu"},
            {"set": "2.output", "value": {"zeros": True}},
            {"save": "4.output", "as": "out"},
        ],
        "output": {"path": ""},
        "execution": {"runner": "local", "max_batch_rows": 4},
    }
    ds = run_spec(spec, allow_code=True)
    ref = tiny.sequential(8)
    x = torch.from_numpy(xs)
    with torch.no_grad():
        relu = ref[1](ref[0](x))
        out = ref[4](ref[3](torch.zeros(9, 16)))
    relu_got, out_got = by_id(ds, "relu"), by_id(ds, "out")
    for i in range(9):
        close(relu_got[i], relu[i])
        close(out_got[i], out[i])


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_and_edits_match_hooks(arch, tiny_dirs, tiny_models, run_spec):
    """cache = every layer's output; edits apply to every row before the ops."""
    model, tok = tiny_models[arch]
    layer = LAYER[arch]
    edit_site = "layers.0.mlp.output" if arch != "bert" else "layers.0.output"
    edit_path = f"{layer}.0.mlp" if arch != "bert" else f"{layer}.0"
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [{"cache": "layers.*", "as": "c"}],
        )
        | {"edits": [{"set": edit_site, "value": 0.25}]}
    )
    for k, prompt in enumerate(PROMPTS):
        got, _ = alone(
            model,
            tok,
            prompt,
            capture={f"h{i}": f"{layer}.{i}" for i in range(3)},
            edit={edit_path: lambda o: torch.full_like(first(o), 0.25)},
        )
        for i in range(3):
            close(by_id(ds, f"c.layers.{i}")[k], first(got[f"h{i}"])[0])


def test_saves_and_sources_survive_later_in_place_ops(run_spec):
    """A module that writes into its input (ReLU(inplace=True)) must not change what was saved
    before it, nor a `from` source kept for later."""
    import tiny

    xs = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    ds = run_spec(
        {
            "model": {"factory": "tiny:sequential_inplace"},
            "data": {"prompts": [{"x": x.tolist()} for x in xs], "input_field": "x"},
            "ops": [
                {"save": "0.output", "as": "lin0"},
                {"set": "3.output", "value": {"from": "2.output"}},
                {"save": "3.output", "as": "relu1"},
            ],
            "output": {"path": ""},
            "execution": {"runner": "local"},
        },
        allow_code=True,
    )
    ref = tiny.sequential_inplace(8)
    x = torch.from_numpy(xs)
    with torch.no_grad():
        lin0 = ref[0](x)
        lin2 = ref[2](torch.relu(lin0))
    assert (lin0 < 0).any() and (lin2 < 0).any()  # the in-place ReLUs would change these
    got0, got3 = by_id(ds, "lin0"), by_id(ds, "relu1")
    for i in range(6):
        close(got0[i], lin0[i])
        close(got3[i], lin2[i])  # layer 3's output replaced by layer 2's pre-ReLU output
