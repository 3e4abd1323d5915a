"""The spec layer: grammar, validation (every problem at once, with field paths), overrides,
builder round trip, JSON Schema, and no torch/Ray/transformers imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from raysight.spec import (
    SpecBuilder,
    SpecError,
    file,
    load_spec,
    noise,
    parse_spec,
    parse_value_site,
    topk,
    zeros,
)
from raysight.spec.models import Spec
from raysight.spec.sites import SiteError, Slice, expand_module_pattern, parse_module_site

BASE = {"model": {"path": "m"}, "data": {"prompts": ["hi"]}, "output": {"path": "o"}}


def spec_with(**over):
    return {**BASE, **over}


def test_site_grammar():
    s = parse_value_site("transformer.h.5.output[0][:, -1, :]")
    assert (s.module, s.attr) == ("transformer.h.5", "output")
    assert s.index == ((0,), (Slice(), -1, Slice()))
    assert str(s) == "transformer.h.5.output[0][:, -1, :]"
    assert parse_value_site("logits").module == "logits"
    assert parse_value_site("encoder.layer.0.output.output").module == "encoder.layer.0.output"
    assert parse_value_site("layers.*.mlp.input").is_pattern
    assert parse_value_site("layers.x.output[..., ::2, None]").index[0] == (
        ...,
        Slice(None, None, 2),
        None,
    )
    for bad in (
        "layers.3",
        "layers.3.output[",
        "layers..output",
        "layers.3.output[a]",
        "layers.3.output[::0]",
        "",
    ):
        with pytest.raises(SiteError):
            parse_value_site(bad)
    with pytest.raises(SiteError, match="names a value"):
        parse_module_site("layers.3.output")


def test_pattern_expansion_with_suggestions():
    ch = {
        "": ["model", "lm_head"],
        "model": ["layers", "norm"],
        "model.layers": [str(i) for i in range(12)],
    }
    assert expand_module_pattern("model.layers.2:5", ch) == [f"model.layers.{i}" for i in (2, 3, 4)]
    assert expand_module_pattern("model.layers.::4", ch)[-1] == "model.layers.8"
    with pytest.raises(SiteError, match=r"model has model.layers.0–11"):
        expand_module_pattern("model.layers.50", ch)
    with pytest.raises(SiteError, match="did you mean 'norm'"):
        expand_module_pattern("model.nrom", ch)


def test_every_problem_reported_at_once_with_field_paths():
    bad = spec_with(
        model={"path": "m", "gguf": 1},
        ops=[
            {"save": "layers.5.output", "positions": []},
            {"set": "layers.2.output", "value": {"noise": {"std": -1}}},
            {"sav": "layers.1.output"},
            {"set": "layers.1.output", "value": 1, "mode": "multiply"},
            {"save": "logits", "reduce": "max"},
        ],
        output={"path": "o", "layout": "per_tok"},
    )
    with pytest.raises(SpecError) as e:
        parse_spec(bad)
    probs = e.value.problems
    expected = [
        "model.gguf: unknown key",
        "ops.0.positions:",
        "ops.1.value.noise.std:",
        "ops.2: an op has exactly one of the keys",
        "ops.3.mode:",
        "ops.4.reduce:",
        "output.layout:",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in probs), (want, probs)
    assert len(probs) == len(expected)


def test_cross_field_rules_name_the_fields():
    with pytest.raises(SpecError, match=r"ops\.0\.positions: output\.layout per_token"):
        parse_spec(
            spec_with(
                ops=[{"save": "layers.1.output", "positions": [-1]}],
                output={"path": "o", "layout": "per_token"},
            )
        )
    with pytest.raises(SpecError, match=r"ops\.1\.as: name 'x' is already used by ops\.0"):
        parse_spec(
            spec_with(
                ops=[{"save": "layers.1.output", "as": "x"}, {"save": "layers.2.output", "as": "x"}]
            )
        )
    with pytest.raises(SpecError, match=r"exactly one of model\.path or model\.factory"):
        parse_spec(spec_with(model={"path": "m", "factory": "a.b:c"}), allow_code=True)
    with pytest.raises(SpecError, match=r"exactly one of data\.source or data\.prompts"):
        parse_spec(spec_with(data={}))


def test_yaml_json_and_overrides_precedence(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text(yaml.safe_dump(spec_with(ops=[{"save": "layers.1.output"}])))
    j = tmp_path / "s.json"
    j.write_text(json.dumps(spec_with(ops=[{"save": "layers.1.output"}])))
    a, b = load_spec(y), load_spec(j)
    assert a == b
    assert a.execution.batch_tokens == 16384  # default
    c = load_spec(y, ["execution.batch_tokens=99", "ops.0.positions=[-1, -2]", "output.path=x"])
    assert (c.execution.batch_tokens, c.ops[0].positions, c.output.path) == (99, [-1, -2], "x")
    with pytest.raises(SpecError, match="does not name a field"):
        load_spec(y, ["ops.7.positions=[1]"])
    with pytest.raises(SpecError, match=r"execution\.bogus: unknown key"):
        load_spec(y, ["execution.bogus=1"])


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  path: m\nops: [\n  - save: x\n")
    with pytest.raises(SpecError, match="invalid YAML at line"):
        load_spec(p)


def test_builder_records_nnsight_style_and_round_trips():
    b = SpecBuilder(model="m", data=["hi there"], output="out/x")
    with b.trace() as t:
        t.layers[5].output.save("h5", positions=[-1])
        t.layers[7].skip(t.layers[6].output)
        t.layers[3].mlp.output[:, -1, :] = 0
        t.layers[2].output += file("s.npy", scale=4.0)
        t.layers[1].output *= 0.5
        t.layers[0].output = zeros()
        t.embed.output = noise(0.1, seed=3)
        t.layers["*"].output.save("resid", positions=[-1])
        t.layers[2:4].mlp.output.save()
        t.layers[11].output.save("lens", apply=[t.final_norm, t.lm_head], reduce=topk(5))
        t.cache("layers.*", name="c")
        t.model.layers[0].input.save("inp")
    with b.edit() as e:
        e.layers[4].mlp.output = 0.0
    spec = b.spec()
    ops = spec.ops
    assert ops[2].set == "layers.3.mlp.output[:, -1, :]" and ops[2].value == 0.0
    assert ops[3].mode == "add" and ops[3].value.file.scale == 4.0
    assert ops[4].mode == "scale" and ops[1].with_ == "layers.6.output"
    assert ops[8].save == "layers.2:4.mlp.output" and ops[11].save == "model.layers.0.input"
    assert spec.edits[0].set == "layers.4.mlp.output"
    assert parse_spec(yaml.safe_load(b.to_yaml())) == spec
    with pytest.raises(TypeError, match="only set, skip"), b.edit() as e:
        e.layers[1].output.save()


def test_builder_records_gradients_as_nnsight_writes_them():
    b = SpecBuilder(model="m", data=["hi there"], output="out/x")
    with b.trace() as t:
        h = t.layers[3].output
        with t.backward({"logprob": {"target": " Paris"}}):
            t.layers[4].output.grad.save("g4", positions=[-1])
            t.layers[1].output.grad *= 0.5
            h.grad[:, -1] = 0
            t.layers[2].mlp.output.grad.attribution("a2")
    spec = b.spec()
    g4, g1, g3, a2 = spec.ops
    assert spec.backward.loss.logprob.target == " Paris"
    assert g4.grad == "layers.4.output" and g4.as_ == "g4" and not g4.is_set
    assert g1.is_set and g1.mode == "scale" and g1.value == 0.5
    assert g3.grad == "layers.3.output[:, -1]" and g3.value == 0.0 and g3.mode == "replace"
    assert a2.attribution and a2.as_ == "a2"
    assert parse_spec(yaml.safe_load(b.to_yaml())) == spec


def test_builder_records_sweeps_and_pairs():
    pair = {
        "prompts": [{"clean": "a b", "corrupt": "c d"}],
        "pair": {"fields": ["clean", "corrupt"]},
    }
    b = SpecBuilder(model="m", data=pair, output="out/x").sweep(layer=range(0, 6, 2), pos=[-1, 0])
    with b.trace() as t:
        h = t.layers["{layer}"].output
        h.set(h.of("clean"), positions=["{pos}"])
        t.layers[0].mlp.output *= "{pos}"
        t.lm_head.output.save("last", positions=[-1], reduce={"logit_diff": {"a": " x", "b": " y"}})
    spec = b.spec()
    assert spec.sweep == {"layer": "0:6:2", "pos": [-1, 0]}
    assert [v.values for v in spec.variants][:3] == [
        {"layer": 0, "pos": -1},
        {"layer": 0, "pos": 0},
        {"layer": 2, "pos": -1},
    ]
    v = spec.variants[3]
    assert v.ops[0].set == "layers.2.output" and v.ops[0].positions == [0]
    assert v.ops[0].value.from_.row == "clean" and v.ops[0].value.from_.site == "layers.2.output"
    assert v.ops[1].value == 0.0 and spec.ops[1].value == "{pos}"
    assert parse_spec(yaml.safe_load(b.to_yaml())) == spec


def test_json_schema_documents_every_field():
    schema = Spec.model_json_schema(by_alias=True)
    missing = []
    for name, d in schema["$defs"].items():
        for field, prop in d.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
    assert not missing, missing


def test_spec_layer_imports_no_torch_ray_or_transformers(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec_with(ops=[{"save": "layers.1.output"}])))
    code = (
        "import sys; from raysight.cli import main; "
        f"rc = main(['validate', {str(p)!r}, '--no-model']); "
        "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
        "print(rc, heavy); sys.exit(1 if heavy or rc else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
