"""Parity with nnsight 0.8 itself: the same model weights, each prompt traced alone by nnsight,
against raysight's batched (padded) run of all prompts."""

from __future__ import annotations

import pytest
import torch

from conftest import PROMPTS, by_id, make_spec

nnsight = pytest.importorskip("nnsight")

LAYERS = {"gpt2": "transformer.h", "llama": "model.layers"}
NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm"}


def envoy(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


@pytest.fixture(scope="module")
def nn_models():
    import tiny

    out = {}
    for arch in LAYERS:
        model, tok = tiny.build(arch)  # same seed, same weights as the saved tiny model
        out[arch] = nnsight.LanguageModel(model, tokenizer=tok)
    return out


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b.detach(), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("arch", list(LAYERS))
def test_save_matches_nnsight(arch, nn_models, tiny_dirs, run_spec):
    lm, layers = nn_models[arch], LAYERS[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"save": "layers.2.output", "as": "h2"},
                {"save": "layers.0.mlp.output", "positions": [-1], "as": "mlp0"},
            ],
        )
    )
    h2, mlp0 = by_id(ds, "h2"), by_id(ds, "mlp0")
    for k, prompt in enumerate(PROMPTS):
        with lm.trace(prompt):
            ref_mlp = envoy(lm, f"{layers}.0.mlp").output.save()
            ref_h2 = envoy(lm, f"{layers}.2").output.save()
        close(h2[k], ref_h2[0])
        close(mlp0[k], ref_mlp[0, [-1]])


@pytest.mark.parametrize("arch", list(LAYERS))
def test_set_and_skip_match_nnsight(arch, nn_models, tiny_dirs, run_spec):
    lm, layers = nn_models[arch], LAYERS[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"set": "layers.0.mlp.output", "value": {"zeros": True}},
                {"set": "layers.1.output[:, -1, :]", "value": 3.0},
                {"skip": "layers.2", "with": "layers.1.output"},
                {"save": "logits", "positions": [-1], "as": "logits"},
            ],
        )
    )
    got = by_id(ds, "logits")
    for k, prompt in enumerate(PROMPTS):
        with lm.trace(prompt):
            envoy(lm, f"{layers}.0.mlp").output[:] = 0
            envoy(lm, f"{layers}.1").output[:, -1, :] = 3.0
            envoy(lm, f"{layers}.2").skip(envoy(lm, f"{layers}.1").output)
            ref = lm.lm_head.output.save()
        close(got[k], ref[0, [-1]], atol=1e-4)


@pytest.mark.parametrize("arch", list(LAYERS))
def test_logit_lens_matches_nnsight(arch, nn_models, tiny_dirs, run_spec):
    lm, layers = nn_models[arch], LAYERS[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {
                    "save": "layers.*.output",
                    "positions": [-1],
                    "apply": ["final_norm", "lm_head"],
                    "as": "lens",
                },
            ],
        )
    )
    for k, prompt in enumerate(PROMPTS):
        refs = []
        with lm.trace(prompt):
            for i in range(3):
                h = envoy(lm, f"{layers}.{i}").output
                refs.append(lm.lm_head(envoy(lm, NORM[arch])(h)).save())
        for i in range(3):
            close(by_id(ds, f"lens.{i}")[k], refs[i][0, [-1]], atol=1e-4)


def test_sequential_matches_nnsight(run_spec):
    import numpy as np

    import tiny

    xs = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    ds = run_spec(
        {
            "model": {"factory": "tiny:sequential"},
            "data": {"prompts": [{"x": x.tolist()} for x in xs], "input_field": "x"},
            "ops": [{"set": "1.output", "value": 2.0, "mode": "scale"}, {"save": "3.output"}],
            "output": {"path": ""},
            "execution": {"runner": "local"},
        },
        allow_code=True,
    )
    model = nnsight.NNsight(tiny.sequential())
    with model.trace(torch.from_numpy(xs)):
        model[1].output = model[1].output * 2.0
        ref = model[3].output.save()
    got = by_id(ds, "3.output")
    for i in range(5):
        close(got[i], ref[i])


@pytest.mark.parametrize("arch", list(LAYERS))
def test_gradients_match_nnsight(arch, nn_models, tiny_dirs, run_spec):
    """nnsight's `with loss.backward():` reading one gradient and scaling another on the way."""
    lm, layers = nn_models[arch], LAYERS[arch]
    (tid,) = lm.tokenizer("e", add_special_tokens=False)["input_ids"]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"grad": "layers.2.output", "as": "g2"},
                {"grad": "layers.1.output", "value": 0.5, "mode": "scale"},
                {"grad": "layers.0.output", "as": "g0"},
            ],
            backward={"loss": {"logprob": {"target": "e"}}},
            execution={"max_padding": 1},
        )
    )
    g2, g0 = by_id(ds, "g2"), by_id(ds, "g0")
    for k, prompt in enumerate(PROMPTS):
        with lm.trace(prompt):
            h0 = envoy(lm, f"{layers}.0").output
            h0.requires_grad_(True)
            h1 = envoy(lm, f"{layers}.1").output
            h2 = envoy(lm, f"{layers}.2").output
            loss = lm.lm_head.output[0, -1].log_softmax(-1)[tid]
            with loss.backward():
                ref2 = h2.grad.save()
                h1.grad = h1.grad * 0.5
                ref0 = h0.grad.save()
        close(g2[k], ref2[0])
        close(g0[k], ref0[0])


@pytest.mark.parametrize("arch", list(LAYERS))
def test_expressions_match_nnsight(arch, nn_models, tiny_dirs, tmp_path, run_spec):
    """What a researcher writes inside an nnsight trace with torch code, as expressions:
    directional ablation at every layer, an SAE latent clamped with the error term kept, and
    the cosine with the direction, against nnsight doing the same per prompt."""
    import numpy as np
    from safetensors.torch import save_file

    lm, layers = nn_models[arch], LAYERS[arch]
    g = torch.Generator().manual_seed(3)
    d = torch.randn(32, generator=g)
    np.save(tmp_path / "d.npy", d.numpy())
    w = {
        "W_enc": torch.randn(32, 48, generator=g) / 6,
        "b_enc": torch.randn(48, generator=g) * 0.1,
        "W_dec": torch.randn(48, 32, generator=g) / 7,
        "b_dec": torch.randn(32, generator=g) * 0.1,
    }
    save_file(w, str(tmp_path / "sae.safetensors"))
    let = {"d": {"file": str(tmp_path / "d.npy")}, "s": {"sae": str(tmp_path / "sae.safetensors")}}
    ops = [
        {"set": "layers.*.output", "value": {"expr": "ablate(x, d)", "let": let}},
        {
            "set": "layers.1.output",
            "value": {"expr": "decode(s, setlat(encode(s, x), 3, 4.0)) + error(s, x)", "let": let},
        },
        {"save": "layers.2.input", "reduce": {"expr": "cosine(x, d)", "let": let}, "as": "cos"},
        {"save": "logits", "positions": [-1], "as": "logits"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops))
    cos, got = by_id(ds, "cos"), by_id(ds, "logits")
    u = d / d.norm()
    for k, prompt in enumerate(PROMPTS):
        with lm.trace(prompt):
            for i in range(3):
                h = envoy(lm, f"{layers}.{i}").output
                h = h - (h @ u)[..., None] * u
                if i == 1:
                    z = torch.relu(h @ w["W_enc"] + w["b_enc"])
                    err = h - (z @ w["W_dec"] + w["b_dec"])
                    z[..., 3] = 4.0
                    h = z @ w["W_dec"] + w["b_dec"] + err
                envoy(lm, f"{layers}.{i}").output = h
                if i == 1:
                    ref_cos = torch.nn.functional.cosine_similarity(h, d, dim=-1).save()
            ref = lm.lm_head.output.save()
        close(cos[k], ref_cos[0], atol=1e-4)
        close(got[k], ref[0, [-1]], atol=1e-4)
