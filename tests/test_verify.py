"""Failing shards, retries, the error report, `raysight verify` and `raysight inspect`."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

import raysight
from raysight.cli import main
from raysight.dataset.verify import verify
from raysight.engine.run import RunFailed


def flaky_spec(out, xs, **execution):
    return {
        "model": {"factory": "tiny:flaky"},
        "data": {"prompts": [{"x": x} for x in xs], "input_field": "x"},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": str(out)},
        "execution": {"runner": "local", "shard_rows": 3, **execution},
    }


def rows(n, poisoned=()):
    return [[100.0 if i in poisoned else float(i)] + [0.5] * 7 for i in range(n)]


def test_a_bad_row_is_reported_and_its_shard_finishes(tmp_path):
    spec = flaky_spec(tmp_path / "o", rows(7, poisoned={4}))
    raysight.run(spec, log=lambda _: None, allow_code=True)
    ds = raysight.open(tmp_path / "o")
    assert sorted(ds.table(["example_id"]).column(0).to_pylist()) == [0, 1, 2, 3, 5, 6]
    assert ds.errors() == [{"shard": 1, "example_id": 4, "reason": "RuntimeError: poisoned input"}]
    assert verify(tmp_path / "o") == []


def test_a_shard_that_keeps_failing_is_reported_and_finished_shards_are_kept(tmp_path, capsys):
    spec = flaky_spec(tmp_path / "o", rows(9, poisoned={3, 4, 5}), max_retries=1)
    with pytest.raises(RunFailed) as e:
        raysight.run(spec, log=lambda _: None, allow_code=True)
    msg = str(e.value)
    assert "1 shard(s) failed after 2 attempt(s)" in msg and "shard 1:" in msg
    assert "poisoned input" in msg and "2 finished shard(s) are kept" in msg
    manifest = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert manifest["shards"]["1"]["status"] == "failed"
    assert manifest["shards"]["1"]["attempts"] == 2
    assert {manifest["shards"][k]["status"] for k in ("0", "2")} == {"done"}
    assert sorted(p.name for p in (tmp_path / "o").glob("part-*")) == [
        "part-00000.parquet",
        "part-00002.parquet",
    ]
    assert main(["verify", str(tmp_path / "o")]) == 1
    assert "shard 1: failed" in capsys.readouterr().out


def test_verify_finds_missing_orphan_duplicated_and_unfinished_files(tmp_path, capsys):
    out = tmp_path / "o"
    raysight.run(flaky_spec(out, rows(8)), log=lambda _: None, allow_code=True)
    assert main(["verify", str(out)]) == 0
    shutil.copy(out / "part-00001.parquet", out / "part-00009.parquet")
    (out / ".part-00002.parquet.123.tmp").write_bytes(b"x")
    problems = verify(out)
    assert any("orphan file part-00009.parquet" in p for p in problems)
    assert any("duplicated row" in p for p in problems)
    assert any("unfinished file .part-00002" in p for p in problems)
    (out / "part-00009.parquet").unlink()
    (out / ".part-00002.parquet.123.tmp").unlink()
    (out / "part-00000.parquet").unlink()
    problems = verify(out)
    assert problems and "shard 0: file part-00000.parquet is missing" in problems[0]
    # a rerun repairs it
    raysight.run(flaky_spec(out, rows(8)), log=lambda _: None, allow_code=True)
    assert verify(out) == []
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 done" in text and "8 rows from 8 of 8 input rows" in text and "lin.output" in text
    assert "time      read" in text and "tokenize" in text and "forward" in text
    assert "-bound: " in text and "of their forward's own speed" in text  # the limit, named
    # 2 units rerun alone in each of the shards of 3, 3 and 2 rows
    assert "self-check 6 sample(s) in 3 shard(s) rerun alone and unpadded (6 output rows" in text
    for shard in json.loads((out / "_manifest.json").read_text())["shards"].values():
        st = shard["stages"]
        assert list(st) == [
            *("read", "tokenize", "collate", "forward", "to_host", "encode", "write", "self_check")
        ]
        assert min(st.values()) >= 0 and st["forward"] > 0
        assert sum(st.values()) <= shard["seconds"] + 0.01  # parts of the shard's own time


def test_unreachable_address_fails_fast_with_a_clear_message(tiny_dirs, tmp_path, capsys):
    from conftest import make_spec

    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output"}])
    spec["execution"]["runner"] = "ray"
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert main(["run", str(p), "--address", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Ray cluster at 127.0.0.1:9" in err and "Traceback" not in err
    assert (
        main(["submit", str(p), "--address", "http://127.0.0.1:9", "--working-dir", str(tmp_path)])
        == 2
    )
    assert "cannot reach a Ray cluster at http://127.0.0.1:9" in capsys.readouterr().err


def test_the_manifest_and_error_report_are_not_rewritten_per_shard(tmp_path, monkeypatch):
    """20 shards, poisoned rows in three: with the manifest's interval longer than the run, the
    manifest is written when the run starts and once as it ends, the error report once, and
    the dataset is whole (every shard's completion record was written as it finished)."""
    from raysight.dataset.store import Store
    from raysight.engine.outputs import ManifestSaver

    writes: list[str] = []
    real_bytes, real_chunks = Store.write_bytes, Store.write_chunks

    def count_bytes(store, name, data):
        writes.append(name)
        real_bytes(store, name, data)

    def count_chunks(store, name, chunks):
        writes.append(name)
        real_chunks(store, name, chunks)

    monkeypatch.setattr(ManifestSaver, "EVERY", 3600.0)
    monkeypatch.setattr(Store, "write_bytes", count_bytes)
    monkeypatch.setattr(Store, "write_chunks", count_chunks)
    out = tmp_path / "o"
    raysight.run(
        flaky_spec(out, rows(60, poisoned={4, 31, 59})), log=lambda _: None, allow_code=True
    )
    assert writes.count("_manifest.json") == 2 and writes.count("_errors.jsonl") == 1
    assert sum(w.startswith("_shards/") for w in writes) == 20
    assert verify(out) == []
    ds = raysight.open(out)
    assert [(e["shard"], e["example_id"]) for e in ds.errors()] == [(1, 4), (10, 31), (19, 59)]
    lines = (out / "_errors.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == ds.errors()
