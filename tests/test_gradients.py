"""Gradients of a declared loss: raysight's batched, padded run against plain autograd on each
prompt alone (the model's own parameters require grad there, so no raysight trick is shared),
and against nnsight 0.8's ``with loss.backward(): x.grad``."""

from __future__ import annotations

import pytest
import torch

from conftest import PROMPTS, by_id, make_spec, plan_problems
from reference import grads_alone

LAYERS = {"gpt2": "transformer.h", "llama": "model.layers"}
MLP = {"gpt2": "mlp", "llama": "mlp"}

# Batches as wide as possible (no length bucketing): padding and neighbours differ per row.
WIDE = {"max_padding": 1, "batch_tokens": 4096}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-4)


def _tid(tok, text: str) -> int:
    (tid,) = tok(text, add_special_tokens=False)["input_ids"]
    return tid


LOSSES = {
    "logprob": (
        {"logprob": {"target": "e"}},
        lambda tok: lambda lg, a: lg[-1].log_softmax(-1)[_tid(tok, "e")],
    ),
    "logit_diff": (
        {"logit_diff": {"a": "e", "b": "t", "position": -2}},
        lambda tok: lambda lg, a: lg[-2, _tid(tok, "e")] - lg[-2, _tid(tok, "t")],
    ),
    "cross_entropy": (
        {"cross_entropy": {}},
        lambda tok: (
            lambda lg, a: torch.nn.functional.cross_entropy(
                lg[:-1], torch.tensor(tok(a["_prompt"])["input_ids"][1:])
            )
        ),
    ),
}


@pytest.mark.parametrize("arch", list(LAYERS))
@pytest.mark.parametrize("loss", list(LOSSES))
def test_grads_match_plain_autograd(arch, loss, tiny_dirs, tiny_models, run_spec):
    layers = LAYERS[arch]
    prompts = [p for p in PROMPTS if len(p) >= 2]  # logit_diff reads position -2
    spec_loss, ref_loss = LOSSES[loss]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"grad": "layers.1.output", "as": "g1"},
                {"grad": "layers.0.output", "positions": [0, -1], "as": "g0"},
                {"grad": "layers.0.mlp.output", "attribution": True, "as": "attr"},
            ],
            prompts,
            backward={"loss": spec_loss},
            execution=WIDE,
        )
    )
    model, tok = tiny_models[arch]
    g1, g0, attr = by_id(ds, "g1"), by_id(ds, "g0"), by_id(ds, "attr")
    for k, prompt in enumerate(prompts):
        fn = ref_loss(tok)
        acts, grads = grads_alone(
            model,
            tok,
            prompt,
            lambda lg, a, fn=fn, prompt=prompt: fn(lg, {**a, "_prompt": prompt}),
            {"h1": f"{layers}.1", "h0": f"{layers}.0", "mlp": f"{layers}.0.{MLP[arch]}"},
        )
        _close(g1[k], grads["h1"])
        _close(g0[k], grads["h0"][[0, -1]])
        _close(attr[k], (acts["mlp"] * grads["mlp"]).sum(-1))


@pytest.mark.parametrize("arch", list(LAYERS))
def test_set_grad_matches_a_tensor_hook(arch, tiny_dirs, tiny_models, run_spec):
    """Setting a gradient changes what flows further back, in list order on one site, and a
    site-sum loss with positions is masked to the row's real tokens."""
    layers = LAYERS[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"grad": "layers.1.output", "value": 0.5, "mode": "scale"},
                {"grad": "layers.1.output", "as": "g1"},
                {"grad": "layers.0.mlp.output", "value": {"zeros": True}},
                {"grad": "layers.0.output", "as": "g0"},
                {"grad": "embed.output", "as": "ge"},
            ],
            backward={"loss": {"sum": "layers.2.output", "positions": [-1]}},
            execution=WIDE,
        )
    )
    model, tok = tiny_models[arch]
    embed = "transformer.wte" if arch == "gpt2" else "model.embed_tokens"
    for k, prompt in enumerate(PROMPTS):
        _, grads = grads_alone(
            model,
            tok,
            prompt,
            lambda lg, a: a["h2"][0, -1].sum(),
            {"h2": f"{layers}.2", "h1": f"{layers}.1", "h0": f"{layers}.0", "e": embed},
            {f"{layers}.1": lambda g: g * 0.5, f"{layers}.0.mlp": torch.zeros_like},
        )
        _close(by_id(ds, "g1")[k], grads["h1"])
        _close(by_id(ds, "g0")[k], grads["h0"])
        _close(by_id(ds, "ge")[k], grads["e"])


def test_targets_from_data_and_bad_targets(tiny_dirs, tiny_models, run_spec, tmp_path):
    rows = [
        {"text": "The city of", "answer": "e"},
        {"text": "Two plus two", "answer": 7},
        {"text": "bad target", "answer": "ab"},
        {"text": "no answer"},
    ]
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "out",
        [{"grad": "layers.2.output", "positions": [-1], "as": "g"}],
        rows,
        backward={"loss": {"logprob": {"target": {"field": "answer"}}}},
    )
    ds = run_spec(spec)
    model, tok = tiny_models["gpt2"]
    got = by_id(ds, "g")
    assert sorted(got) == [0, 1]
    for i, tid in [(0, _tid(tok, "e")), (1, 7)]:
        _, grads = grads_alone(
            model,
            tok,
            rows[i]["text"],
            lambda lg, a, tid=tid: lg[-1].log_softmax(-1)[tid],
            {"h": "transformer.h.2"},
        )
        _close(got[i], grads["h"][[-1]])
    errors = {e["example_id"]: e["reason"] for e in ds.errors()}
    assert "'ab' is 2 tokens" in errors[2] and "answer" in errors[2]
    assert "no field 'answer' (backward.loss.logprob.target.field)" in errors[3]


def test_parameters_get_no_gradients(tiny_dirs):
    from raysight.data.batching import collate, encode
    from raysight.data.readers import Row
    from raysight.engine.plan import make_plan
    from raysight.interleave.interleaver import Interleaver
    from raysight.models.loading import load_model
    from raysight.spec import parse_spec

    spec = parse_spec(
        make_spec(
            tiny_dirs["llama"],
            "unused",
            [{"grad": "layers.0.output"}],
            backward={"loss": {"cross_entropy": {}}},
        )
    )
    loaded = load_model(spec.model)
    plan = make_plan(spec, loaded=load_model(spec.model, meta=True))

    items = encode(loaded.tokenizer, [Row(0, 0, "Hello there")], 64, True)
    batch = collate(items, loaded.tokenizer.pad_token_id, "left", True)
    out = Interleaver(loaded, plan.hooks).run(batch)
    assert out["layers.0.output.grad"][0].abs().sum() > 0
    params = list(loaded.module.parameters())
    assert all(p.grad is None and not p.requires_grad for p in params)


def test_sequential_site_loss(run_spec):
    """A plain nn.Sequential: the gradient of the mean of a later site."""
    import numpy as np

    import tiny

    xs = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    ds = run_spec(
        {
            "model": {"factory": "tiny:sequential"},
            "data": {"prompts": [{"x": x.tolist()} for x in xs], "input_field": "x"},
            "ops": [{"grad": "1.output", "as": "g"}],
            "backward": {"loss": {"mean": "4.output"}},
            "output": {"path": ""},
            "execution": {"runner": "local"},
        },
        allow_code=True,
    )
    model = tiny.sequential()
    got = by_id(ds, "g")
    for i, x in enumerate(xs):
        h = model[1](model[0](torch.from_numpy(x)[None]))
        h.retain_grad()
        model[4](model[3](model[2](h))).mean().backward()
        _close(got[i], h.grad[0])


def test_bad_gradient_specs_name_the_field(tiny_dirs):
    gpt2 = tiny_dirs["gpt2"]
    logprob = {"loss": {"logprob": {"target": "e"}}}
    # A grad site that runs after the loss's own site.
    msg = plan_problems(
        make_spec(
            gpt2, "o", [{"grad": "layers.2.output"}], backward={"loss": {"sum": "layers.1.output"}}
        )
    )
    assert (
        "ops.0.grad: 'layers.2.output' is computed after the loss's site 'layers.1.output'" in msg
    )
    # A set in between cuts every path from the grad site to the loss.
    msg = plan_problems(
        make_spec(
            gpt2,
            "o",
            [{"set": "layers.1.output", "value": {"zeros": True}}, {"grad": "layers.0.output"}],
            backward=logprob,
        )
    )
    assert (
        "ops.1.grad: the loss (backward.loss.logprob) does not depend on 'layers.0.output'" in msg
    )
    # Targets: several tokens, an id outside the vocabulary.
    msg = plan_problems(
        make_spec(
            gpt2,
            "o",
            [{"grad": "layers.0.output"}],
            backward={"loss": {"logit_diff": {"a": "ab", "b": 10_000}}},
        )
    )
    assert "backward.loss.logit_diff.a: 'ab' is 2 tokens" in msg
    assert "backward.loss.logit_diff.b: token id 10000 is outside the vocabulary" in msg
    # An encoder has no logits.
    msg = plan_problems(
        make_spec(tiny_dirs["bert"], "o", [{"grad": "layers.0.output"}], backward=logprob)
    )
    assert "backward.loss.logprob: a logprob loss reads a language model's logits" in msg
    # Spec-level rules, all reported at once.
    msg = plan_problems(make_spec(gpt2, "o", [{"grad": "layers.0.output", "mode": "add"}]))
    assert "ops.0.grad: mode applies to a set gradient" in msg
    msg = plan_problems(make_spec(gpt2, "o", [{"grad": "layers.0.output"}]))
    assert "ops.0.grad: a grad op needs a backward section" in msg
    msg = plan_problems(make_spec(gpt2, "o", [{"save": "layers.0.output"}], backward=logprob))
    assert "backward: no grad op uses the loss" in msg
    msg = plan_problems(
        make_spec(gpt2, "o", [{"grad": "layers.0.output"}], backward={"loss": {"logprobs": {}}})
    )
    assert "backward.loss: a loss has exactly one of the keys sum, mean, logprob" in msg


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_expression_loss_and_reduced_gradients(arch, tiny_dirs, tiny_models, run_spec):
    """A loss written as an expression (a log-prob difference with a per-row weight) and a
    gradient saved through a reduce: against plain autograd on each prompt alone."""
    model, tok = tiny_models[arch]
    layers = {"gpt2": "transformer.h", "llama": "model.layers"}[arch]
    prompts = [{"text": p, "w": w} for p, w in zip(PROMPTS[:4], [1.0, 0.5, 2.0, -1.0])]
    loss = {
        "expr": "w * (log_softmax(x[-1])[tok('e')] - log_softmax(x[-1])[tok('a')])",
        "let": {"w": {"field": "w"}},
    }
    ops = [
        {"grad": "layers.1.output", "as": "g"},
        {"grad": "layers.1.output", "reduce": "norm", "as": "gnorm"},
        {"grad": "layers.0.output", "reduce": {"expr": "sum(x * x)"}, "as": "gsq"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=prompts, backward={"loss": loss}))
    e, a = tok.convert_tokens_to_ids("e"), tok.convert_tokens_to_ids("a")
    for k, row in enumerate(prompts):

        def loss_fn(logits, acts, w=row["w"]):
            lp = logits[-1].log_softmax(-1)
            return w * (lp[e] - lp[a])

        _, grads = grads_alone(
            model,
            tok,
            row["text"],
            loss_fn,
            capture={"h1": f"{layers}.1", "h0": f"{layers}.0"},
        )
        _close(by_id(ds, "g")[k], grads["h1"])
        _close(by_id(ds, "gnorm")[k], grads["h1"].norm(dim=-1))
        _close(by_id(ds, "gsq")[k], (grads["h0"] ** 2).sum(-1))
