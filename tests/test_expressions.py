"""Expressions (computation as data): each against plain PyTorch on the same prompts run alone,
and a suite of hostile expressions, each refused with the field and the place in its text."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import PROMPTS, by_id, make_spec, plan_problems
from reference import alone, first, on_first

PICKED = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[4]]
LAYER = {"gpt2": "transformer.h", "llama": "model.layers"}


def _close(got, want, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.fixture
def direction(tmp_path):
    d = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    np.save(tmp_path / "dir.npy", d)
    return str(tmp_path / "dir.npy"), torch.from_numpy(d)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_directional_ablation_at_every_layer(arch, direction, tiny_dirs, tiny_models, run_spec):
    """x - proj(x, d) on every layer's output (the refusal-direction ablation), then the
    cosine with d, the next-token entropy and a log-prob difference, against plain hooks."""
    path, d = direction
    model, tok = tiny_models[arch]
    let = {"d": {"file": path}}
    ops = [
        {"set": "layers.*.output", "value": {"expr": "ablate(x, d)", "let": let}},
        {"save": "layers.1.input", "reduce": {"expr": "cosine(x, d)", "let": let}, "as": "cos"},
        {"save": "logits", "reduce": {"expr": "entropy(x)"}, "as": "ent"},
        {
            "save": "logits[:, -1]",
            "reduce": {"expr": "log_softmax(x)[tok('e')] - log_softmax(x)[tok('a')]"},
            "as": "diff",
        },
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=PICKED))
    cos, ent, diff = by_id(ds, "cos"), by_id(ds, "ent"), by_id(ds, "diff")
    u = d / d.norm()

    ablate = on_first(lambda h: h - (h @ u)[..., None] * u)
    edit = {f"{LAYER[arch]}.{i}": ablate for i in range(3)}
    e, a = tok.convert_tokens_to_ids("e"), tok.convert_tokens_to_ids("a")
    for k, prompt in enumerate(PICKED):
        got, out = alone(model, tok, prompt, capture={"h0": f"{LAYER[arch]}.0"}, edit=edit)
        h0 = first(got["h0"])[0]  # layer 1's input is layer 0's (ablated) output
        _close(cos[k], F.cosine_similarity(h0, d[None], dim=-1), "cosine")
        assert cos[k].abs().max() < 1e-5  # nothing left along d
        logits = out.logits[0]
        _close(ent[k], -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1), "entropy")
        lp = logits[-1].log_softmax(-1)
        _close(diff[k], lp[e] - lp[a], "log-prob difference")


def test_expressions_with_positions_lets_and_a_sweep(direction, tiny_dirs, tiny_models, run_spec):
    """Steering by alpha * normalize(d) at the last token, alpha swept, against plain hooks."""
    path, d = direction
    model, tok = tiny_models["llama"]
    value = {"expr": "x + alpha * normalize(d)", "let": {"d": {"file": path}, "alpha": "{alpha}"}}
    ops = [
        {"set": "layers.1.output", "positions": [-1], "value": value},
        {"save": "logits[:, -1]", "as": "last"},
        {"save": "logits[:, -1]", "reduce": {"expr": "x[0] * {alpha}"}, "as": "scaled"},
    ]
    spec = make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED, sweep={"alpha": [0.5, 3.0]})
    ds = run_spec(spec)
    rows = ds.table(["example_id", "alpha"]).to_pylist()
    last, scaled = ds.to_torch("last"), ds.to_torch("scaled")
    for r, got, times in zip(rows, last, scaled):

        def steer(h, alpha=r["alpha"]):
            h = h.clone()
            h[:, -1] += alpha * d / d.norm()
            return h

        edit = {"model.layers.1": on_first(steer)}
        _, out = alone(model, tok, PICKED[r["example_id"]], edit=edit)
        _close(got, out.logits[0, -1])
        _close(times, got[0] * r["alpha"])  # a placeholder inside the text


HOSTILE = [
    ("x.__class__", "attribute access (.__class__) is not allowed", 1),
    ("x.__class__.__mro__[1].__subclasses__()", "unknown function", 1),
    ("__import__('os').system('true')", "unknown function", 1),
    ("open('/etc/passwd')", "unknown function 'open'", 1),
    ("eval('1 + 1')", "unknown function 'eval'", 1),
    ("zeros(10**12)", "unknown function 'zeros'", 1),
    ("x ** 10**12", "an exponent must be a number", 6),
    ("x ** 1000", "exponent 1000 is larger than 16", 6),
    ("x[10**12]", "an index is an integer", 3),
    ("x[1000000000000]", "integer 1000000000000 is larger than", 3),
    ("(lambda: 1)()", "unknown function", 1),
    ("[v for v in x]", "ListComp is not allowed", 1),
    ("x if x else x", "IfExp is not allowed", 1),
    ("(y := x)", "NamedExpr is not allowed", 2),
    ("f'{x}'", "JoinedStr is not allowed", 1),
    ("y + 1", "unknown name 'y' (names here: d, x)", 1),
    ("sum(x, dim=x)", "dim is an integer", 12),
    ("sum(x, axis=0)", "sum() takes no keyword 'axis'", 1),
    ("cosine(x)", "cosine() takes 2 to 3 arguments, got 1", 1),
    ("'text'", "constant 'text' is not allowed", 1),
    ("tok(x)", "tok() takes a text", 1),
    ("x < x < x", "compare two values at a time", 1),
    ("x; x", "not an expression", 2),
    ("-" * 100 + "x", "nests deeper than 32 levels", None),
    ("-" * 900 + "x", "the expression has 1803 parts; at most 400", None),
    ("abs(" * 40 + "x" + ")" * 40, "nests deeper than 32 levels", None),
    ("x" + " + x" * 300, "the expression is 1201 characters; at most 1000", None),
]


@pytest.mark.parametrize(("text", "says", "column"), HOSTILE, ids=[h[0][:24] for h in HOSTILE])
def test_hostile_expressions_are_refused_with_field_and_place(text, says, column, tiny_dirs):
    value = {"expr": text, "let": {"d": 1.0}}
    started = time.perf_counter()
    msg = plan_problems(
        make_spec(tiny_dirs["gpt2"], None, [{"set": "layers.0.output", "value": value}])
    )
    assert time.perf_counter() - started < 5  # refused at once: nothing ran
    assert "ops.0.value.expr:" in msg and says in msg, msg
    if column:
        assert f"(at column {column})" in msg, msg


def test_expressions_too_big_or_ill_fitting_fail_at_plan_time(tiny_dirs):
    """Shapes are checked on the meta model before any weight is read: an intermediate too big
    to allocate, a result that does not fit its target, a k past the dimension."""
    # [tokens, 32, 32, 32, 32, 32]: 268M elements for the probe's 8 tokens, before any allocation
    big = " * ".join(
        "x[..., " + ", ".join(":" if i == j else "None" for j in range(5)) + "]" for i in range(5)
    )
    cases = [
        (
            {"set": "layers.0.output", "value": {"expr": big}},
            "elements per row); at most 67,108,864",
        ),
        (
            {"set": "layers.0.output", "value": {"expr": "x[..., :5]"}, "positions": [-1]},
            "the expression's value has shape",
        ),
        ({"save": "logits", "reduce": {"expr": "topk(x, 100000)"}}, "more than the last"),
        ({"save": "logits", "reduce": {"expr": "x[..., tok('Paris')]"}}, "a target must be one"),
        ({"save": "logits", "reduce": {"expr": "x @ x"}}, "expr 'x @ x'"),
    ]
    for op, says in cases:
        msg = plan_problems(make_spec(tiny_dirs["gpt2"], None, [op]))
        assert "ops.0" in msg and says in msg, (op, msg)


def test_a_skip_takes_no_expression(tiny_dirs):
    from raysight.spec import SpecError, parse_spec

    spec = make_spec(tiny_dirs["gpt2"], "o", [{"skip": "layers.0", "with": {"expr": "x"}}])
    with pytest.raises(SpecError, match="an expression needs a value x to compute from"):
        parse_spec(spec)


def test_at_reads_another_site_of_the_same_forward(tiny_dirs, tiny_models, run_spec):
    """The cosine between two layers per token, and a set that adds an earlier layer's output
    at the last position, against plain hooks."""
    model, tok = tiny_models["llama"]
    ops = [
        {
            "set": "layers.2.output",
            "positions": [-1],
            "value": {"expr": "x + at('layers.0.output')"},
        },
        {
            "save": "layers.1.output",
            "reduce": {"expr": "cosine(x, at('layers.0.output'))"},
            "as": "cos",
        },
        {"save": "logits[:, -1]", "as": "last"},
    ]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=PICKED))
    cos, last = by_id(ds, "cos"), by_id(ds, "last")
    for k, prompt in enumerate(PICKED):
        got, _ = alone(model, tok, prompt, capture={"h0": "model.layers.0", "h1": "model.layers.1"})
        h0, h1 = first(got["h0"])[0], first(got["h1"])[0]
        _close(cos[k], F.cosine_similarity(h1, h0, dim=-1), "cosine of two layers")

        def add(h, h0=h0):
            h = h.clone()
            h[0, -1] += h0[-1]
            return h

        _, out = alone(model, tok, prompt, edit={"model.layers.2": on_first(add)})
        _close(last[k], out.logits[0, -1], "after adding layer 0's output")


def test_at_must_name_an_earlier_site(tiny_dirs):
    ops = [{"save": "layers.0.output", "reduce": {"expr": "cosine(x, at('layers.2.output'))"}}]
    msg = plan_problems(make_spec(tiny_dirs["llama"], None, ops))
    assert "ops.0.reduce.expr: 'layers.2.output' is computed after the target" in msg


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_row_numbers_from_data_fields(arch, direction, tiny_dirs, tiny_models, run_spec):
    """Each prompt's own steering coefficient from its data row, and a KL reduce."""
    path, d = direction
    model, tok = tiny_models[arch]
    alphas = [0.5, -2.0, 4.0, 0.0]
    prompts = [{"text": p, "alpha": a} for p, a in zip(PICKED, alphas)]
    value = {"expr": "x + a * normalize(d)", "let": {"d": {"file": path}, "a": {"field": "alpha"}}}
    ops = [
        {"set": "layers.1.output", "value": value},
        {"save": "logits[:, -1]", "as": "last"},
        {"save": "logits[:, -1]", "reduce": {"expr": "kl(x, x * 0.5)"}, "as": "kl"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=prompts))
    last, kl = by_id(ds, "last"), by_id(ds, "kl")
    for k, (prompt, alpha) in enumerate(zip(PICKED, alphas)):
        steer = on_first(lambda h, alpha=alpha: h + alpha * d / d.norm())
        _, out = alone(model, tok, prompt, edit={f"{LAYER[arch]}.1": steer})
        logits = out.logits[0, -1]
        _close(last[k], logits)
        p, q = logits.log_softmax(-1), (logits * 0.5).log_softmax(-1)
        _close(kl[k], (p.exp() * (p - q)).sum(), "kl")


def test_a_row_without_a_number_is_a_row_error(tiny_dirs, run_spec):
    prompts = [{"text": "Hi", "alpha": 1.0}, {"text": "a b", "alpha": "lots"}]
    value = {"expr": "x * a", "let": {"a": {"field": "alpha"}}}
    ops = [{"set": "layers.1.output", "value": value}, {"save": "logits[:, -1]", "as": "last"}]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, prompts=prompts))
    errors = ds.errors()
    assert len(errors) == 1 and errors[0]["example_id"] == 1
    assert "field 'alpha' is 'lots'; an expression's let needs a number" in errors[0]["reason"]
    assert by_id(ds, "last").keys() == {0}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_row_positions_from_data_fields(arch, direction, tiny_dirs, tiny_models, run_spec):
    """Each prompt's own position (e.g. its subject's last token) from its data row: a save of
    that token, and steering only there with put(x, p, ...), against plain hooks."""
    path, d = direction
    model, tok = tiny_models[arch]
    positions = [3, 1, -2, 0]
    prompts = [{"text": p, "pos": q} for p, q in zip(PICKED, positions)]
    let = {"p": {"field": "pos"}, "d": {"file": path}}
    ops = [
        {"save": "layers.0.output", "reduce": {"expr": "x[p]", "let": let}, "as": "at_p"},
        {"set": "layers.1.output", "value": {"expr": "put(x, p, x[p] + 3 * d)", "let": let}},
        {"save": "logits[:, -1]", "as": "last"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=prompts))
    at_p, last = by_id(ds, "at_p"), by_id(ds, "last")
    for k, (prompt, q) in enumerate(zip(PICKED, positions)):

        def steer(h, q=q):
            h = h.clone()
            h[0, q] += 3 * d
            return h

        got, _ = alone(model, tok, prompt, capture={"h0": f"{LAYER[arch]}.0"})
        _close(at_p[k], first(got["h0"])[0, q], "the row's own position")
        _, out = alone(model, tok, prompt, edit={f"{LAYER[arch]}.1": on_first(steer)})
        _close(last[k], out.logits[0, -1], "steered at the row's own position")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_positions_from_a_data_column(arch, tiny_dirs, tiny_models, run_spec):
    """positions: {field: pos} on a save and a set (each row's own token), against plain hooks;
    a row whose position lies past its tokens is a row error."""
    model, tok = tiny_models[arch]
    positions = [3, 1, -2, 0]
    prompts = [{"text": p, "pos": q} for p, q in zip(PICKED, positions)]
    prompts.append({"text": "ab", "pos": 9})  # past its 2 or 3 tokens (3 with a BOS)
    ops = [
        {"save": "layers.0.output", "positions": {"field": "pos"}, "as": "at_p"},
        {"set": "layers.1.output", "positions": {"field": "pos"}, "value": 2.0, "mode": "scale"},
        {"save": "logits[:, -1]", "as": "last"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=prompts))
    at_p, last = by_id(ds, "at_p"), by_id(ds, "last")
    errors = ds.errors()
    assert [e["example_id"] for e in errors] == [4]
    n = len(tok("ab")["input_ids"])
    assert f"position 9 is past the row's {n} tokens" in errors[0]["reason"]
    for k, (prompt, q) in enumerate(zip(PICKED, positions)):

        def scale(h, q=q):
            h = h.clone()
            h[0, q] *= 2.0
            return h

        got, _ = alone(model, tok, prompt, capture={"h0": f"{LAYER[arch]}.0"})
        _close(at_p[k], first(got["h0"])[0, [q]], "the row's own position")
        _, out = alone(model, tok, prompt, edit={f"{LAYER[arch]}.1": on_first(scale)})
        _close(last[k], out.logits[0, -1], "scaled at the row's own position")
