"""Bad input gets a clear message (exit 2, no traceback) and loses nothing already written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml

from conftest import make_spec
from raysight.cli import main


def write(tmp_path, spec, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return str(p)


def cli(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.out, out.err


def digest(directory):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_malformed_yaml_and_unknown_keys(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {path: m\ndata: [")
    rc, _, err = cli(capsys, "validate", str(p), "--no-model")
    assert rc == 2 and "invalid YAML at line" in err
    spec = make_spec("m", tmp_path / "o", [{"save": "layers.0.output", "positionz": [1]}])
    rc, _, err = cli(capsys, "validate", write(tmp_path, spec), "--no-model")
    assert rc == 2 and "ops.0.positionz: unknown key" in err


def test_unknown_module_suggests_what_exists(tiny_dirs, tmp_path, capsys):
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [
            {"save": "layers.50.output"},
            {"save": "layers.1.mpl.output"},
            {"save": "transformer.hh.0.output"},
            {"skip": "layers.9"},
        ],
    )
    rc, _, err = cli(capsys, "validate", write(tmp_path, spec))
    assert rc == 2
    assert "ops.0.save: no module 'transformer.h.50' (model has transformer.h.0–2)" in err
    assert "ops.1.save: no module 'layers.1.mpl'; did you mean 'layers.1.mlp'?" in err
    assert "did you mean 'h'?" in err
    assert "ops.3.skip: no module 'transformer.h.9'" in err
    assert "4 problems" in err


def test_out_of_range_index_and_missing_standard_name(tiny_dirs, tmp_path, capsys):
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output[:, :, 99]"}])
    rc, _, err = cli(capsys, "validate", write(tmp_path, spec))
    assert rc == 2 and "ops.0" in err and "99" in err
    spec = make_spec(tiny_dirs["bert"], tmp_path / "o", [{"save": "layers.0.mlp.output"}])
    rc, _, err = cli(capsys, "validate", write(tmp_path, spec, "b.yaml"))
    assert rc == 2 and "has no standard 'mlp' module (in 'layers.0.mlp'); use a raw" in err


def test_pickled_tensor_file_is_refused(tiny_dirs, tmp_path, capsys):
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [
            {"set": "layers.0.output", "value": {"file": {"path": str(tmp_path / "evil.npy")}}},
            {"save": "layers.1.output"},
        ],
    )
    rc, _, err = cli(capsys, "run", write(tmp_path, spec))
    assert rc == 2 and "pickled Python objects" in err and "never unpickles" in err


def test_wrong_value_shape_says_expected_and_given(tiny_dirs, tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.ones((3, 5), dtype=np.float32))
    spec = make_spec(
        tiny_dirs["llama"],
        tmp_path / "o",
        [
            {
                "set": "layers.0.output",
                "value": {"file": {"path": str(tmp_path / "v.npy")}},
                "mode": "add",
            },
            {"save": "layers.1.output"},
        ],
    )
    rc, _, err = cli(capsys, "validate", write(tmp_path, spec))
    assert rc == 2 and "shape [3, 5]" in err and "32]" in err


def test_existing_output_of_another_spec_is_refused_and_kept(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "o"
    first = make_spec(tiny_dirs["gpt2"], out, [{"save": "layers.0.output"}], prompts=["a b", "c"])
    assert cli(capsys, "run", write(tmp_path, first))[0] == 0
    before = digest(out)
    second = make_spec(tiny_dirs["gpt2"], out, [{"save": "layers.1.output"}], prompts=["a b"])
    rc, _, err = cli(capsys, "run", write(tmp_path, second, "t.yaml"))
    assert rc == 2 and "different spec" in err and "--overwrite" in err
    assert digest(out) == before  # nothing lost or touched
    rc, _, _ = cli(capsys, "run", write(tmp_path, second, "t.yaml"), "--overwrite")
    assert rc == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["spec"]["ops"][0]["save"] == "layers.1.output"


def test_output_path_that_is_a_file_or_foreign_dir(tiny_dirs, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("precious")
    spec = make_spec(tiny_dirs["gpt2"], f, [{"save": "layers.0.output"}])
    rc, _, err = cli(capsys, "run", write(tmp_path, spec))
    assert rc == 2 and "is a file" in err and f.read_text() == "precious"
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    spec = make_spec(tiny_dirs["gpt2"], d, [{"save": "layers.0.output"}])
    rc, _, err = cli(capsys, "run", write(tmp_path, spec, "f.yaml"), "--overwrite")
    assert rc == 2 and "holds no raysight dataset" in err and (d / "notes.txt").exists()


def test_bad_rows_go_to_the_error_report_and_the_rest_finish(tiny_dirs, tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text(
        "\n".join(
            [
                json.dumps({"text": "good one"}),
                json.dumps({"text": ""}),
                json.dumps({"text": 42}),
                "{not json",
                json.dumps({"txt": "wrong field"}),
                json.dumps({"text": "  "}),
                json.dumps({"text": "x"}),
                json.dumps({"text": "good two"}),
            ]
        )
    )
    spec = make_spec(
        tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output", "positions": [-2, -1]}]
    )
    spec["data"] = {"source": str(src)}
    rc, _, _ = cli(capsys, "run", write(tmp_path, spec))
    assert rc == 0
    import raysight

    ds = raysight.open(tmp_path / "o")
    assert sorted(ds.table(["example_id"]).column(0).to_pylist()) == [0, 7]
    reasons = {e["example_id"]: e["reason"] for e in ds.errors()}
    assert reasons == {
        1: "text is empty",
        2: "text is int, not a string",
        3: reasons[3],
        4: "no field 'text' (data.text_field)",
        5: "text is empty",
        6: "1 tokens, but the ops' positions need at least 2",
    }
    assert "not valid JSON" in reasons[3]
    m = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert m["shards"]["0"]["examples"] == 2 and m["shards"]["0"]["errors"] == 6


def test_missing_data_file_and_missing_model(tmp_path, capsys, tiny_dirs):
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output"}])
    spec["data"] = {"source": str(tmp_path / "nope.jsonl")}
    rc, _, err = cli(capsys, "run", write(tmp_path, spec))
    assert rc == 2 and "file not found" in err
    spec = make_spec(tmp_path / "no_model", tmp_path / "o2", [{"save": "layers.0.output"}])
    rc, _, err = cli(capsys, "validate", write(tmp_path, spec, "m.yaml"))
    assert rc == 2 and "model.path" in err


@pytest.mark.parametrize(
    "ops", [[{"save": "layers.0.output"}, {"skip": "layers.0"}, {"skip": "layers.0"}]]
)
def test_double_skip_is_refused(ops, tiny_dirs, tmp_path, capsys):
    rc, _, err = cli(capsys, "validate", write(tmp_path, make_spec(tiny_dirs["gpt2"], "o", ops)))
    assert rc == 2 and "already skipped by ops.1" in err
