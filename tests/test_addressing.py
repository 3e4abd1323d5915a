"""Addressing beyond module outputs, each against plain PyTorch: the model itself (`root.input`,
`root.output`), negative layer indices, values a module lays out flat as [batch × tokens, ...]
(OPT's MLP), Gemma 2's capped logits, and `model.attn_implementation`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import families
from conftest import PROMPTS, by_id, make_spec, plan_problems
from reference import alone, first

PICKED = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[4]]  # mixed lengths: padding in a batch
LAYER = {"gpt2": "transformer.h", "llama": "model.layers"}


def _close(got, want, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("addressing")
    return {f: families.save(f, root) for f in ("opt", "gemma2")}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_root_output_input_and_the_last_layer(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    ops = [
        {"save": "root.output", "as": "out"},  # what the model returns: its logits lead
        {"save": "root.input", "as": "ids"},  # the token ids it was called with
        {"save": "layers.-1.output", "as": "last"},
        {"save": "layers.-2.output[:, -1]", "as": "second_last"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=PICKED))
    out, ids, last, second = (by_id(ds, c) for c in ("out", "ids", "last", "second_last"))
    for k, prompt in enumerate(PICKED):
        got, hf = alone(
            model, tok, prompt, capture={"l2": f"{LAYER[arch]}.2", "l1": f"{LAYER[arch]}.1"}
        )
        _close(out[k], hf.logits[0], "root.output")
        assert ids[k].tolist() == tok(prompt)["input_ids"]
        _close(last[k], first(got["l2"])[0], "layers.-1")
        _close(second[k], first(got["l1"])[0, -1], "layers.-2[:, -1]")


def test_root_of_a_plain_module(run_spec):
    import tiny

    xs = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    spec = {
        "model": {"factory": "tiny:sequential"},
        "data": {"prompts": [{"x": x.tolist()} for x in xs], "input_field": "x"},
        "ops": [{"save": "root.output", "as": "y"}, {"save": "root.input", "as": "x"}],
        "output": {"path": ""},
        "execution": {"runner": "local"},
    }
    ds = run_spec(spec, allow_code=True)
    model = tiny.sequential()
    for i, x in enumerate(xs):
        with torch.no_grad():
            _close(by_id(ds, "y")[i], model(torch.from_numpy(x)[None])[0])
        _close(by_id(ds, "x")[i], torch.from_numpy(x))


def test_flat_token_values_save_and_set_per_row(family_dirs, run_spec):
    """OPT runs its MLP on [batch × tokens, hidden]: each row's part is saved as the prompt run
    alone gives it, and a set on it changes that row's tokens only."""
    model, _ = families.build("opt")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_dirs["opt"])
    ops = [
        {"save": "model.decoder.layers.0.fc1.output", "as": "fc1"},  # a raw path, flat too
        {"set": "layers.1.mlp_norm.output[:, -1]", "value": 0.5},
        {"save": "logits[:, -1]", "as": "last"},
    ]
    spec = make_spec(family_dirs["opt"], None, ops, prompts=PICKED, execution={"max_padding": 1})
    ds = run_spec(spec)
    fc1, last = by_id(ds, "fc1"), by_id(ds, "last")
    mods = dict(model.named_modules())
    got = {}

    def keep(m, a, o):
        got["fc1"] = o

    def edit(m, a, o):
        o = o.clone()
        o[-1] = 0.5  # one prompt: the flat layout's last row is its last token
        return o

    for k, prompt in enumerate(PICKED):
        h1 = mods["model.decoder.layers.0.fc1"].register_forward_hook(keep)
        h2 = mods["model.decoder.layers.1.final_layer_norm"].register_forward_hook(edit)
        try:
            with torch.no_grad():
                out = model(**tok(prompt, return_tensors="pt"))
        finally:
            h1.remove()
            h2.remove()
        _close(fc1[k], got["fc1"], "fc1")
        _close(last[k], out.logits[0, -1], "logits after the set")


def test_flat_values_in_cache_star(family_dirs, run_spec):
    ds = run_spec(make_spec(family_dirs["opt"], None, [{"cache": "*"}], prompts=PICKED[:2]))
    assert "model.decoder.layers.1.fc2" in ds.columns


def test_gemma2_logits_are_the_capped_ones_in_metrics_too(family_dirs, run_spec):
    model, _ = families.build("gemma2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_dirs["gemma2"])
    ops = [{"save": "logits", "reduce": {"logprob": "e"}, "as": "lp"}]
    ds = run_spec(make_spec(family_dirs["gemma2"], None, ops, prompts=PICKED))
    lp, e = by_id(ds, "lp"), tok.convert_tokens_to_ids("e")
    for k, prompt in enumerate(PICKED):
        with torch.no_grad():
            logits = model(**tok(prompt, return_tensors="pt")).logits[0]
        assert model.config.final_logit_softcapping  # the cap is on in this config
        _close(lp[k], logits.log_softmax(-1)[:, e], "logprob")


def test_attn_implementation_is_chosen_by_the_spec(tiny_dirs, run_spec):
    import transformers

    eager = transformers.LlamaForCausalLM.from_pretrained(
        tiny_dirs["llama"], attn_implementation="eager"
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    ops = [{"save": "layers.1.attn.output", "as": "a"}]
    spec = make_spec(
        tiny_dirs["llama"], None, ops, prompts=PICKED, model={"attn_implementation": "eager"}
    )
    got = by_id(run_spec(spec), "a")
    for k, prompt in enumerate(PICKED):
        ref, _ = alone(eager, tok, prompt, capture={"a": "model.layers.1.self_attn"})
        _close(got[k], first(ref["a"])[0])
    # under sdpa the weights are None, and the plan says which setting returns them
    weights = [{"save": "model.layers.0.self_attn.output[1]", "as": "w"}]
    msg = plan_problems(make_spec(tiny_dirs["llama"], None, weights))
    assert "model.attn_implementation: eager" in msg
    msg = plan_problems(
        make_spec(
            tiny_dirs["llama"], None, [{"save": "logits"}], model={"attn_implementation": "flash"}
        )
    )
    assert "model.attn_implementation" in msg


def _twice_spec(xs, ops):
    return {
        "model": {"factory": "tiny:twice"},
        "data": {"prompts": [{"x": x.tolist()} for x in xs], "input_field": "x"},
        "ops": ops,
        "output": {"path": ""},
        "execution": {"runner": "local"},
    }


def test_a_module_called_twice_is_addressed_by_call(run_spec):
    import tiny

    xs = np.random.default_rng(4).standard_normal((4, 8)).astype(np.float32)
    ops = [
        {"save": "lin.output", "call": 0, "as": "first"},
        {"save": "lin.output", "call": 1, "as": "second"},
        {"set": "lin.output[:, 0]", "call": 1, "value": 2.0},
        {"save": "out.output", "as": "y"},
    ]
    ds = run_spec(_twice_spec(xs, ops), allow_code=True)
    model, calls = tiny.twice(), []

    def hook(m, a, o):
        calls.append(o.clone())
        if len(calls) == 2:  # the second call, as the set above
            o = o.clone()
            o[:, 0] = 2.0
            return o

    model.lin.register_forward_hook(hook)
    for i, x in enumerate(xs):
        calls.clear()
        with torch.no_grad():
            y = model(torch.from_numpy(x)[None])
        _close(by_id(ds, "first")[i], calls[0][0])
        _close(by_id(ds, "second")[i], calls[1][0])  # saved before the set: list order
        _close(by_id(ds, "y")[i], y[0])


def test_call_is_needed_on_a_twice_called_module_and_checked(tmp_path):
    import raysight
    from raysight.interleave.resolve import PlanError

    xs = np.zeros((2, 8), dtype=np.float32)
    ops = [
        {"save": "lin.output"},
        {"save": "lin.output", "call": 2},
        {"save": "out.output", "call": 1},
        {"set": "lin.output", "value": 0},
    ]
    spec = {**_twice_spec(xs, ops), "output": {"path": str(tmp_path / "out")}}
    with pytest.raises(PlanError) as e:
        raysight.run(spec, allow_code=True, log=lambda _: None)
    msg = str(e.value)
    assert (
        "ops.0.save: module 'lin' runs 2 times per forward; choose one with `call: 0` or `1`" in msg
    )
    assert "ops.1.save: module 'lin' runs 2 times per forward; choose one" in msg
    assert "ops.2.save: module 'out' runs 1 time per forward; call 1 is out of range" in msg
    assert "ops.3.set: module 'lin' runs 2 times per forward" in msg


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("storage", ["typed", "bytes"])
def test_attention_weights_per_row(arch, storage, tiny_dirs, run_spec):
    """Attention weights hold tokens in two dimensions (queries and keys): each row comes out
    [heads, tokens, tokens], padding cut from both, as HF's output_attentions gives the prompt
    run alone."""
    import transformers

    ops = [
        {"save": "layers.1.attn.output[1]", "as": "w"},  # [1]: the module's weights, not [0]
        {"save": "blocks.1.attn.hook_pattern[:, :, -1]", "as": "last"},  # from the last token
    ]
    spec = make_spec(
        tiny_dirs[arch],
        None,
        ops,
        prompts=PICKED,
        model={"attn_implementation": "eager"},
        execution={"max_padding": 1},
        output={"tensor_storage": storage},
    )
    ds = run_spec(spec)
    w, last = by_id(ds, "w"), by_id(ds, "last")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_dirs[arch], attn_implementation="eager"
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dirs[arch])
    for k, prompt in enumerate(PICKED):
        with torch.no_grad():
            out = model(**tok(prompt, return_tensors="pt"), output_attentions=True)
        want = out.attentions[1][0]  # [heads, queries, keys]
        _close(w[k], want, "weights")
        _close(last[k], want[:, -1], "the last query's weights")


def test_attention_weights_are_refused_where_they_cannot_be_written(tiny_dirs):
    eager = {"attn_implementation": "eager"}
    w = [{"save": "layers.1.attn.output[1]", "as": "w"}]
    msg = plan_problems(
        make_spec(tiny_dirs["llama"], None, w, model=eager, generate={"max_new_tokens": 2})
    )
    assert "ops.0: 'w' holds tokens in several dimensions" in msg
    assert "not under generate:" in msg
    msg = plan_problems(
        make_spec(tiny_dirs["llama"], None, w, model=eager, output={"layout": "per_token"})
    )
    assert "cannot be used with output.layout per_token" in msg
    pos = [{"save": "layers.1.attn.output[1]", "positions": [-1], "as": "w"}]
    msg = plan_problems(make_spec(tiny_dirs["llama"], None, pos, model=eager))
    assert "positions need a sequence dimension; shape is [1, 4, " in msg


def test_values_inside_a_forward_against_a_recomputation(tiny_dirs, tiny_models, run_spec):
    """GPT-2's attention probabilities, recomputed from its fused qkv projection by hand, and
    Llama's MLP activation act(gate(x)) * up(x) and residual stream between attention and MLP."""
    ops = [
        {"save": "layers.1.attn.output[1]", "as": "probs"},
        {"save": "layers.1.attn.c_attn.output", "as": "qkv"},
    ]
    eager = {"attn_implementation": "eager"}
    gpt = by_id(
        run_spec(make_spec(tiny_dirs["gpt2"], None, ops, prompts=PICKED, model=eager)), "probs"
    )
    qkv = by_id(run_spec(make_spec(tiny_dirs["gpt2"], None, ops[1:], prompts=PICKED)), "qkv")
    heads = tiny_models["gpt2"][0].config.n_head
    for k in range(len(PICKED)):
        t, width = qkv[k].shape
        q, key, _ = qkv[k].split(width // 3, dim=-1)
        q, key = (x.view(t, heads, -1).transpose(0, 1) for x in (q, key))
        scores = q @ key.transpose(-1, -2) / q.shape[-1] ** 0.5
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        want = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        _close(gpt[k], want, "attention probabilities")

    model, _ = tiny_models["llama"]
    mlp = model.model.layers[1].mlp
    ops = [
        {"save": "layers.1.mlp.input", "as": "x"},
        {"save": "layers.1.mlp.down_proj.input", "as": "act"},
        {"save": "layers.1.resid_mid", "as": "mid"},
        {"save": "layers.1.input", "as": "pre"},
        {"save": "layers.1.attn.output", "as": "attn"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    x, act, mid, pre, attn = (by_id(ds, c) for c in ("x", "act", "mid", "pre", "attn"))
    for k in range(len(PICKED)):
        with torch.no_grad():
            want = mlp.act_fn(mlp.gate_proj(x[k])) * mlp.up_proj(x[k])
        _close(act[k], want, "the MLP's activation")
        _close(mid[k], pre[k] + attn[k], "resid_mid")


def test_keyword_arguments_by_name(tiny_dirs, tiny_models, run_spec):
    """The kwargs half of `.inputs`: a decoder layer's position ids and rotary embedding, and a
    set on the attention's hidden_states keyword, against plain hooks with kwargs."""
    model, tok = tiny_models["llama"]
    ops = [
        {"save": "layers.0.inputs[1]['position_ids']", "as": "pos"},
        {"save": "layers.0.inputs[1]['position_embeddings'][0]", "as": "cos"},
        {"set": "layers.1.attn.inputs[1]['hidden_states'][:, -1]", "value": 0.0},
        {"save": "logits[:, -1]", "as": "last"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    pos, cos, last = (by_id(ds, c) for c in ("pos", "cos", "last"))
    got = {}

    def keep(mod, args, kwargs):
        got["cos"] = kwargs["position_embeddings"][0]

    def edit(mod, args, kwargs):
        h = kwargs["hidden_states"].clone()
        h[:, -1] = 0.0
        return args, {**kwargs, "hidden_states": h}

    layers = model.model.layers
    handles = [
        layers[0].register_forward_pre_hook(keep, with_kwargs=True),
        layers[1].self_attn.register_forward_pre_hook(edit, with_kwargs=True),
    ]
    try:
        for k, prompt in enumerate(PICKED):
            ids = tok(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model(**ids)
            n = ids["input_ids"].shape[1]
            assert pos[k].tolist() == list(range(n))
            _close(cos[k], got["cos"][0], "rotary cos")
            _close(last[k], out.logits[0, -1], "logits after the keyword set")
    finally:
        for h in handles:
            h.remove()


def test_keyword_arguments_bad_names_say_what_the_module_got(tiny_dirs):
    ops = [{"save": "layers.0.inputs[1]['position_idz']"}]
    msg = plan_problems(make_spec(tiny_dirs["llama"], None, ops))
    assert "no keyword argument 'position_idz' with ['name'] (the module got: " in msg
    assert "position_ids" in msg
    msg = plan_problems(make_spec(tiny_dirs["llama"], None, [{"save": "layers.0.inputs[1]"}]))
    assert "the value is a dict of keyword arguments (" in msg
