"""The command line: plan, schema, and a builder spec run through raysight.run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import raysight
from conftest import PROMPTS, by_id, make_spec
from raysight import SpecBuilder, zeros
from raysight.cli import main


def test_plan_prints_columns_stop_point_and_sizes(tiny_dirs, tmp_path, capsys):
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [
            {"save": "layers.0:2.output", "positions": [-1], "as": "h"},
            {"save": "embed.output", "dtype": "float16", "as": "emb"},
        ],
    )
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["plan", str(p)]) == 0
    out = capsys.readouterr().out
    assert "forward stops after: transformer.h.1" in out
    assert "h.0" in out and "h.1" in out and "float16" in out and "'tokens', 32" in out
    n_tokens = sum(len(x) for x in PROMPTS)  # the tiny tokenizer is one token per character
    assert f"tokens: {n_tokens}" in out
    per_row = (2 * 32 * 4 * len(PROMPTS) + n_tokens * 32 * 2) / len(PROMPTS)
    assert f"~{per_row / 1024:.1f} KiB per row" in out
    assert not (tmp_path / "o").exists()  # planning writes nothing


def test_schema_is_json_with_descriptions(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "ops" in schema["properties"] and schema["$defs"]["SaveOp"]["properties"]["save"]


def test_builder_spec_runs_and_equals_the_yaml_run(tiny_dirs, tmp_path):
    b = SpecBuilder(
        model=str(tiny_dirs["gpt2"]),
        data=list(PROMPTS),
        output=str(tmp_path / "b"),
        execution={"runner": "local"},
    )
    with b.trace() as t:
        t.layers[1].mlp.output = zeros()
        t.layers[2].output.save("h2", positions=[-1])
    raysight.run(b, log=lambda _: None)
    y = tmp_path / "s.yaml"
    y.write_text(b.to_yaml().replace(str(tmp_path / "b"), str(tmp_path / "y")))
    assert main(["run", str(y)]) == 0
    a, c = by_id(raysight.open(tmp_path / "b"), "h2"), by_id(raysight.open(tmp_path / "y"), "h2")
    for i in a:
        assert torch.equal(a[i], c[i])


def test_version_and_help_name_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(
        f"raysight {raysight.__version__}"
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    commands = (
        "run",
        "validate",
        "plan",
        "submit",
        "verify",
        "inspect",
        "plot",
        "export",
        "examples",
    )
    for command in (*commands, "schema"):
        assert f"    {command} " in text, command
    first = text.split("\n\n")[1]  # the description names them all too
    assert all(c in first for c in (*commands, "schema")), first
