"""One bad byte or id costs its row only: invalid UTF-8, unparsable lines, bad and oversized ids
are row errors; only an input that cannot be read at all stops the run, with a message. A row
longer than the model's positions is cut to fit, and asking for more is an error."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

import raysight
from conftest import make_spec
from raysight.cli import main
from raysight.dataset.verify import verify

OPS = [{"save": "layers.0.output", "positions": [-1], "as": "h"}]


def spec_for(tiny_dirs, tmp_path, source, **data):
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS)
    spec["data"] = {"source": str(source), **data}
    return spec


def test_bad_bytes_and_lines_in_txt_and_jsonl_are_row_errors(tiny_dirs, tmp_path):
    txt = tmp_path / "in.txt"
    txt.write_bytes(b"good one\nbad \xff byte\nalso good\n")
    raysight.run(spec_for(tiny_dirs, tmp_path, txt), log=lambda _: None)
    ds = raysight.open(tmp_path / "o")
    assert sorted(ds.table(["example_id"]).column(0).to_pylist()) == [0, 2]
    (err,) = ds.errors()
    assert err["example_id"] == 1 and "line 2 is not valid UTF-8 (byte 0xff at 4)" in err["reason"]
    assert verify(tmp_path / "o") == []

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(
        b'{"id": 1, "text": "fine"}\n{"id": 2, "text": "bad \xc3"}\n{not json\n'
        b'{"id": 99999999999999999999, "text": "huge id"}\n{"id": [1], "text": "list id"}\n'
        b'{"text": "no id"}\n{"id": 7, "text": "fine too"}\n'
    )
    spec = spec_for(tiny_dirs, tmp_path, jsonl, id_field="id")
    spec["output"]["path"] = str(tmp_path / "j")
    raysight.run(spec, log=lambda _: None)
    ds = raysight.open(tmp_path / "j")
    assert sorted(ds.table(["example_id"]).column(0).to_pylist()) == [1, 7]
    reasons = {e["example_id"]: e["reason"] for e in ds.errors()}
    assert "line 2 is not valid UTF-8" in reasons["<row 1>"]
    assert "line 3 is not valid JSON" in reasons["<row 2>"]
    assert "does not fit in int64" in reasons["<row 3>"]
    assert "id [1] is not an int or a string" in reasons["<row 4>"]
    assert "no field 'id' (data.id_field)" in reasons["<row 5>"]
    assert verify(tmp_path / "j") == []


def test_an_unreadable_parquet_source_stops_the_run_with_a_message(tiny_dirs, tmp_path):
    bad = tmp_path / "in.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec_for(tiny_dirs, tmp_path, bad)))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert main(["run", str(p)]) == 2
    assert "not a readable Parquet file" in err.getvalue() and "Traceback" not in err.getvalue()


def test_rows_longer_than_the_models_positions(tiny_dirs, tmp_path, capsys):
    long_text = "word " * 80  # 400 characters: tokens of the tiny char-level model > 256
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS, prompts=[long_text, "short"])
    raysight.run(spec, log=lambda _: None)  # the default max_length (512) is cut to 256
    ds = raysight.open(tmp_path / "o")
    assert sorted(ds.table(["n_tokens"]).column(0).to_pylist()) == [5, 256]
    shards = json.loads((tmp_path / "o" / "_manifest.json").read_text())["shards"]
    assert shards["0"]["truncated"] == 1
    spec["data"]["max_length"] = 1000
    p = tmp_path / "s.json"
    p.write_text(json.dumps(spec))
    assert main(["validate", str(p)]) == 2
    assert (
        "data.max_length: 1000 tokens, but the model has 256 positions" in capsys.readouterr().err
    )


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_directory_without_input_files_is_refused(tiny_dirs, tmp_path, suffix):
    src = tmp_path / f"dir{suffix}"
    src.mkdir()
    (src / "notes.md").write_text("not an input file")
    (src / "_hidden.jsonl").write_text('{"text": "skipped: its name starts with _"}\n')
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec_for(tiny_dirs, tmp_path, src)))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert main(["validate", str(p)]) == 2
    assert "the directory holds no input files (.parquet, .jsonl, .txt, .arrow" in err.getvalue()


def test_validate_tokenizes_a_sample_and_says_so(tiny_dirs, tmp_path, capsys):
    from raysight import cli

    src = tmp_path / "in.txt"
    src.write_text("".join(f"prompt {i}\n" for i in range(50)))
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec_for(tiny_dirs, tmp_path, src)))
    seen = []
    real = cli._plan

    def spy(spec, sample_rows=None):
        info = real(spec, sample_rows)
        seen.append(info.tokenized_rows)
        return info

    cli.VALIDATE_SAMPLE = 20
    try:
        cli._plan = spy
        assert main(["validate", str(p)]) == 0
        assert main(["plan", str(p)]) == 0
    finally:
        cli.VALIDATE_SAMPLE, cli._plan = 1000, real
    assert seen == [20, 50]  # validate samples, plan counts every row
    assert "read the first 20 of 50 rows (the run checks every row)" in capsys.readouterr().out


def test_positions_beyond_the_models_positions_name_the_ops(tiny_dirs, tmp_path, capsys):
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "logits", "positions": [300]}])
    p = tmp_path / "s.json"
    p.write_text(json.dumps(spec))
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "ops: the positions need rows of at least 301 tokens, but rows are cut to 256" in err
