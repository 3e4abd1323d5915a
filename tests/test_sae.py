"""SAEs in SAELens' layout as expression functions, against a plain torch SAE: latents saved
dense and as top-k ids, and the standard intervention (encode, clamp or zero a latent, decode,
add back the error term) on the residual stream. The tests write the tiny SAE files
themselves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import PROMPTS, by_id, make_spec, plan_problems
from reference import alone, first, on_first

PICKED = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[4]]
D_IN, D_SAE = 32, 64


def _close(got, want, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _write_sae(path, architecture: str, b_dec_to_input: bool = False, k: int = 8):
    g = torch.Generator().manual_seed(1)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_SAE**0.5,
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": b_dec_to_input}
    if architecture == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=g) * 0.2
        cfg["architecture"] = "jumprelu"
    elif architecture == "topk":
        cfg["architecture"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": k}
    path.mkdir()
    save_file(w, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return w


def _encode(w, x, architecture, b_dec_to_input=False, k=8):
    """The plain torch SAE the test compares with."""
    pre = (x - w["b_dec"] if b_dec_to_input else x) @ w["W_enc"] + w["b_enc"]
    z = torch.relu(pre)
    if architecture == "jumprelu":
        return z * (pre > w["threshold"]).float()
    if architecture == "topk":
        top = z.topk(k, dim=-1)
        z = torch.zeros_like(z).scatter(-1, top.indices, top.values)
    return z


@pytest.mark.parametrize(
    ("architecture", "b_dec_to_input"), [("standard", True), ("jumprelu", False), ("topk", False)]
)
def test_latents_against_a_plain_sae(
    architecture, b_dec_to_input, tiny_dirs, tiny_models, tmp_path, run_spec
):
    w = _write_sae(tmp_path / "sae", architecture, b_dec_to_input)
    s = {"s": {"sae": str(tmp_path / "sae")}}
    ops = [
        {"save": "layers.1.output", "reduce": {"expr": "encode(s, x)", "let": s}, "as": "z"},
        {
            "save": "layers.1.output",
            "reduce": {"expr": "argtopk(encode(s, x), 4)", "let": s},
            "as": "ids",
        },
        {"save": "layers.1.output", "reduce": {"expr": "norm(error(s, x))", "let": s}, "as": "err"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    z, ids, err = by_id(ds, "z"), by_id(ds, "ids"), by_id(ds, "err")
    model, tok = tiny_models["llama"]
    for k, prompt in enumerate(PICKED):
        h = first(alone(model, tok, prompt, capture={"h": "model.layers.1"})[0]["h"])[0]
        want = _encode(w, h, architecture, b_dec_to_input)
        _close(z[k], want, "latents")
        assert (want.gather(-1, ids[k]) == want.topk(4, dim=-1).values).all()
        _close(err[k], (h - (want @ w["W_dec"] + w["b_dec"])).norm(dim=-1), "error norm")


def test_clamp_a_latent_and_keep_the_error_term(tiny_dirs, tiny_models, tmp_path, run_spec):
    """Gemma Scope style steering: x -> decode(z with latent 7 clamped to 5) + (x - decode(z))."""
    w = _write_sae(tmp_path / "sae", "jumprelu")
    let = {"s": {"sae": str(tmp_path / "sae")}}
    edit = "decode(s, setlat(encode(s, x), 7, 5.0)) + error(s, x)"
    ops = [
        {"set": "layers.1.output", "value": {"expr": edit, "let": let}},
        {"save": "logits[:, -1]", "as": "last"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    last = by_id(ds, "last")
    model, tok = tiny_models["llama"]

    def clamp(h):
        zc = _encode(w, h, "jumprelu")
        recon = zc @ w["W_dec"] + w["b_dec"]
        zc = zc.clone()
        zc[..., 7] = 5.0
        return zc @ w["W_dec"] + w["b_dec"] + (h - recon)

    for k, prompt in enumerate(PICKED):
        _, out = alone(model, tok, prompt, edit={"model.layers.1": on_first(clamp)})
        _close(last[k], out.logits[0, -1], "steered logits")


def test_bad_saes_are_refused_naming_the_op(tiny_dirs, tmp_path):
    _write_sae(tmp_path / "sae", "standard")
    let = {"s": {"sae": str(tmp_path / "sae")}}
    cases = [
        ({"expr": "encode(s, x)", "let": {"s": {"sae": str(tmp_path / "none")}}}, "no sae_weights"),
        ({"expr": "encode(s, x[..., :8])", "let": let}, "the SAE reads vectors of 32"),
        ({"expr": "decode(s, x)", "let": let}, "the SAE has 64 latents"),
        ({"expr": "encode(x, x)", "let": let}, "encode() takes an SAE bound in let"),
        ({"expr": "relu(s)", "let": let}, "an SAE goes to encode, decode or error"),
    ]
    for reduce, says in cases:
        msg = plan_problems(
            make_spec(tiny_dirs["llama"], None, [{"save": "layers.1.output", "reduce": reduce}])
        )
        assert "ops.0" in msg and says in msg, (reduce, msg)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_saes_saved_by_saelens_itself(kind, tmp_path):
    """An SAE that SAELens writes (save_model) encodes and decodes as SAELens does (skipped
    where sae_lens is not installed)."""
    sae_lens = pytest.importorskip("sae_lens")
    from raysight.interleave.sae import load_sae
    from raysight.spec.values import SaeBinding

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 5}),
    }
    cls, cfg_cls, kw = classes[kind]
    torch.manual_seed(0)
    sae = cls(cfg_cls(d_in=16, d_sae=32, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    sae.save_model(str(tmp_path / "sae"))
    mine = load_sae(SaeBinding(sae=str(tmp_path / "sae")))
    x = torch.randn(7, 16)
    with torch.no_grad():
        z = sae.encode(x)
        _close(mine.encode(x), z, "encode")
        _close(mine.decode(z), sae.decode(z), "decode")


def test_an_sae_in_apply_saves_sparse_latents(tiny_dirs, tiny_models, tmp_path, run_spec):
    """apply: [{sae: DIR}] encodes before the reduce: {topk: k} keeps each token's k largest
    latents as ids and values (the sparse form SAE work stores)."""
    w = _write_sae(tmp_path / "sae", "jumprelu")
    ops = [
        {
            "save": "layers.1.output",
            "apply": [{"sae": str(tmp_path / "sae")}],
            "reduce": {"topk": 4},
            "as": "lat",
        }
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    ids, vals = by_id(ds, "lat_ids"), by_id(ds, "lat_values")
    model, tok = tiny_models["llama"]
    for k, prompt in enumerate(PICKED):
        h = first(alone(model, tok, prompt, capture={"h": "model.layers.1"})[0]["h"])[0]
        top = _encode(w, h, "jumprelu").topk(4, dim=-1)
        _close(vals[k], top.values, "top latents")
        assert torch.equal(ids[k], top.indices)


def test_a_transcoder_replaces_an_mlp(tiny_dirs, tiny_models, tmp_path, run_spec):
    """A transcoder (SAELens' layout, reading the MLP's input and predicting its output):
    the MLP's output replaced by decode(t, encode(t, at('layers.1.mlp.input')))."""
    w = _write_sae(tmp_path / "tc", "standard")
    let = {"t": {"sae": str(tmp_path / "tc")}}
    expr = "decode(t, encode(t, at('layers.1.mlp.input')))"
    ops = [
        {"set": "layers.1.mlp.output", "value": {"expr": expr, "let": let}},
        {"save": "logits[:, -1]", "as": "last"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    last = by_id(ds, "last")
    model, tok = tiny_models["llama"]
    mlp = model.model.layers[1].mlp

    def swap(m, args, out):
        return _encode(w, args[0], "standard") @ w["W_dec"] + w["b_dec"]

    handle = mlp.register_forward_hook(swap)
    try:
        for k, prompt in enumerate(PICKED):
            _close(last[k], alone(model, tok, prompt)[1].logits[0, -1], "with the transcoder")
    finally:
        handle.remove()
