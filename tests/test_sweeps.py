"""Sweeps: every variant of a row runs in the same batches, and each equals that variant's
intervention done alone on the prompt with plain PyTorch hooks (no raysight code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import PROMPTS, make_spec, plan_problems

LAYER = {"gpt2": "transformer.h", "llama": "model.layers"}
MLP = {"gpt2": "transformer.h.0.mlp", "llama": "model.layers.0.mlp"}


def _alone(arch, model, tok, prompt: str, layer: int, alpha: float, pos: int):
    """Skip layer `layer` (its output := layer-1's output) and scale layer 0's MLP output by
    alpha, on the prompt alone; the last position's logits and layer `layer`'s output at pos."""
    mods = dict(model.named_modules())
    layers = LAYER[arch]
    kept: dict[str, torch.Tensor] = {}

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    def with_first(o, x):
        return (x, *o[1:]) if isinstance(o, tuple) else x

    hooks = [
        mods[MLP[arch]].register_forward_hook(lambda m, a, o: o * alpha),
        mods[f"{layers}.{layer - 1}"].register_forward_hook(
            lambda m, a, o: kept.__setitem__("prev", first(o).clone())
        ),
        mods[f"{layers}.{layer}"].register_forward_hook(
            lambda m, a, o: with_first(o, kept["prev"])
        ),
        mods[f"{layers}.{layer}"].register_forward_hook(
            lambda m, a, o: kept.__setitem__("h", first(o)[0, pos].clone())
        ),
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([tok(prompt)["input_ids"]]))
    finally:
        for h in hooks:
            h.remove()
    return out.logits[0, -1], kept["h"]


@pytest.mark.parametrize("arch", list(LAYER))
def test_batched_variants_equal_each_variant_alone(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    sweep = {"layer": "1:3", "alpha": [0.5, 2.0], "pos": [-1, 0]}
    spec = make_spec(
        tiny_dirs[arch],
        None,
        [
            {"skip": "layers.{layer}", "with": "layers.{layer-1}.output"},
            {"set": "layers.0.mlp.output", "value": "{alpha}", "mode": "scale"},
            {"save": "logits", "positions": [-1], "as": "last"},
            {"save": "layers.{layer}.output", "positions": ["{pos}"]},
        ],
        execution={"max_padding": 1, "batch_tokens": 4096},  # wide, padded, mixed batches
    )
    spec["sweep"] = sweep
    ds = run_spec(spec)
    t = ds.table()
    assert t.num_rows == len(PROMPTS) * 8
    cols = ("example_id", "variant", "layer", "alpha", "pos")
    keys = list(zip(*(t.column(c).to_pylist() for c in cols)))
    assert len(set(k[:2] for k in keys)) == len(PROMPTS) * 8  # every (row, variant) once
    last, h = ds.to_torch("last"), ds.to_torch("layers.{layer}.output")
    for k, (eid, _, layer, alpha, pos) in enumerate(keys):
        ref_last, ref_h = _alone(arch, model, tok, PROMPTS[eid], layer, alpha, pos)
        torch.testing.assert_close(last[k][0], ref_last, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h[k][0], ref_h, atol=1e-5, rtol=1e-5)
    # the variants of a row really shared batches: fewer batches than rows
    assert ds.manifest.shards[0].padded_tokens > 0


def test_a_sweep_that_names_an_unknown_module_is_an_error(tiny_dirs):
    spec = make_spec(tiny_dirs["gpt2"], "", [{"skip": "layers.{layer}"}, {"save": "logits"}])
    spec["sweep"] = {"layer": "0:5"}
    msg = plan_problems(spec)
    for layer in (3, 4):
        line = f"ops.0.skip: no module 'transformer.h.{layer}' (model has transformer.h.0–2)"
        assert f"{line} (sweep point layer={layer})" in msg, msg
    assert msg.startswith("2 problems"), msg  # layers 0-2 are fine


@pytest.mark.parametrize(
    ("sweep", "ops", "expect"),
    [
        (None, [{"save": "layers.{layer}.output"}], "ops.0: placeholder {layer} needs a sweep"),
        ({"l": [0]}, [{"save": "layers.{layer}.output"}], "{layer} is not a sweep axis (axes: l)"),
        ({"l": [0], "k": [1]}, [{"save": "layers.{l}.output"}], "sweep.k: no op uses {k}"),
        ({"l": "3:1"}, [{"save": "layers.{l}.output"}], "sweep.l: the axis has no values"),
        ({"l": "0:x"}, [{"save": "layers.{l}.output"}], "sweep.l: '0:x' is not a range"),
        ({"row": [0]}, [{"save": "layers.{row}.output"}], "sweep.row: 'row' is an identity"),
        ({"l": [0]}, [{"save": "layers.{l}.*.output"}], "ops.0.save: a site cannot hold both"),
        ({"l": ["a"]}, [{"save": "layers.{l+1}.output"}], "only integer axes take an offset"),
        ({"l": [0, 1]}, [{"save": "layers.{l}.output", "as": "x{l}"}], "ops.0.as"),
        ({"l": [0, 0]}, [{"save": "layers.{l}.output"}], "sweep.l: the axis repeats a value"),
    ],
)
def test_bad_sweeps_name_the_field(sweep, ops, expect, tiny_dirs):
    spec = make_spec(tiny_dirs["gpt2"], "", ops)
    if sweep is not None:
        spec["sweep"] = sweep
    assert expect in plan_problems(spec)


def test_variants_must_write_the_same_shapes(tiny_dirs):
    spec = make_spec(tiny_dirs["gpt2"], "", [{"save": "layers.0.output[:, -1, :{n}]", "as": "c"}])
    spec["sweep"] = {"n": [4, 8]}
    msg = plan_problems(spec)
    assert "ops.0: 'c' has per-row shapes [[4], [8]] in different sweep variants" in msg, msg


def test_plan_shows_variants_and_rows(tiny_dirs, tmp_path, capsys):
    from raysight.cli import main

    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [{"skip": "layers.{layer}"}, {"save": "logits", "positions": ["{pos}"], "as": "x"}],
    )
    spec["sweep"] = {"layer": "0:3", "pos": [-1, -2]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sweep: layer 3 x pos 2 = 6 variant(s); 6 rows per input row" in out, out
    assert f"output rows: {len(PROMPTS) * 6}" in out, out


def test_a_failing_variant_loses_only_itself_and_verify_counts_it(tiny_dirs, run_spec, tmp_path):
    from raysight.dataset.verify import verify

    # position {pos} = 5 does not exist in short prompts: those rows fail for that variant only
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [{"set": "layers.0.output[:, {pos}]", "value": 0.0}, {"save": "logits", "as": "x"}],
        prompts=["Hello there", "Hi"],
    )
    spec["sweep"] = {"pos": [0, 5]}
    ds = run_spec(spec)
    written = sorted(zip(*(ds.table().column(c).to_pylist() for c in ("example_id", "variant"))))
    assert written == [(0, 0), (0, 1), (1, 0)]
    errors = [
        json.loads(x) for x in Path(tmp_path / "o" / "_errors.jsonl").read_text().splitlines()
    ]
    assert [(e["example_id"], e["variant"]) for e in errors] == [(1, 1)]
    assert errors[0]["reason"].startswith("[pos=5] ops.0")
    assert verify(tmp_path / "o") == []


def test_swept_gradients_equal_plain_autograd(tiny_dirs, tiny_models, run_spec):
    """A grad set and a grad save whose sites depend on the variant: each on its rows only."""
    from reference import grads_alone

    model, tok = tiny_models["gpt2"]
    target = tok("e", add_special_tokens=False)["input_ids"][0]
    spec = make_spec(
        tiny_dirs["gpt2"],
        None,
        [
            {"grad": "layers.{layer}.output", "value": "{scale}", "mode": "scale"},
            {"grad": "layers.{layer}.mlp.output", "positions": [-1]},
            {"grad": "embed.output", "attribution": True, "as": "attr"},
        ],
        prompts=PROMPTS[:5],
        backward={"loss": {"logprob": {"target": "e"}}},
        execution={"max_padding": 1},
    )
    spec["sweep"] = {"layer": [1, 2], "scale": [0.0, 3.0]}
    ds = run_spec(spec)
    t = ds.table()
    keys = zip(*(t.column(c).to_pylist() for c in ("example_id", "layer", "scale")))
    mlp, attr = ds.to_torch("layers.{layer}.mlp.output.grad"), ds.to_torch("attr")
    for k, (eid, layer, scale) in enumerate(keys):
        acts, grads = grads_alone(
            model,
            tok,
            PROMPTS[eid],
            lambda lg, a: lg[-1].log_softmax(-1)[target],
            {"mlp": f"transformer.h.{layer}.mlp", "e": "transformer.wte"},
            {f"transformer.h.{layer}": lambda g, s=scale: g * s},
        )
        torch.testing.assert_close(mlp[k], grads["mlp"][[-1]], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(attr[k], (acts["e"] * grads["e"]).sum(-1), atol=1e-5, rtol=1e-4)


def test_a_row_too_short_for_one_variant_is_written_in_the_others(tiny_dirs, run_spec, tmp_path):
    """A positions axis that reaches past a short row: an error for that variant only, with the
    variant and its sweep point; the row's other variants are written."""
    from raysight.dataset.verify import verify

    spec = make_spec(
        tiny_dirs["llama"],
        tmp_path / "o",
        [{"save": "layers.1.output", "positions": ["{pos}"], "as": "h"}],
        prompts=["Hello there", "Hi"],
    )
    spec["sweep"] = {"pos": [0, -1, 5]}
    ds = run_spec(spec)
    written = sorted(zip(*(ds.table().column(c).to_pylist() for c in ("example_id", "variant"))))
    assert written == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    (error,) = ds.errors()
    assert error["example_id"] == 1 and error["variant"] == 2
    assert error["reason"] == "[pos=5] 3 tokens, but the ops' positions need at least 6"  # BOS H i
    assert verify(tmp_path / "o") == []
