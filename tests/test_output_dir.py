"""The output directory: raysight deletes only its own files, never another tool's; a manifest
that is not raysight's (or not JSON) is refused, not overwritten; paths expand `~` once."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

import raysight
from conftest import make_spec
from raysight.cli import main
from raysight.engine.run import OutputError
from raysight.engine.verify import verify
from raysight.spec import SpecError, parse_spec

OPS = [{"save": "layers.0.output", "positions": [-1], "as": "h"}]


def cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(list(args))
    assert "Traceback" not in err.getvalue()
    return rc, err.getvalue()


def foreign_files(out) -> dict[str, bytes]:
    (out / "part-00000-3f2a.snappy.parquet").write_bytes(b"spark")
    (out / "part-00001-subdir").mkdir()
    (out / "part-00001-subdir" / "x").write_bytes(b"hadoop")
    (out / "notes.txt").write_bytes(b"mine")
    return {"part-00000-3f2a.snappy.parquet": b"spark", "notes.txt": b"mine"}


def test_a_foreign_manifest_is_refused_and_nothing_deleted(tiny_dirs, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "_manifest.json").write_text(json.dumps({"producer": "other-tool"}))
    kept = foreign_files(out)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(make_spec(tiny_dirs["gpt2"], out, OPS)))
    rc, err = cli("run", str(p), "--overwrite")
    assert rc == 2 and "did not write" in err and "nothing was deleted" in err
    for name, data in kept.items():
        assert (out / name).read_bytes() == data
    assert (out / "part-00001-subdir" / "x").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "{broken", ""])
def test_an_unreadable_manifest_is_refused_by_run(tiny_dirs, tmp_path, text):
    out = tmp_path / "o"
    out.mkdir()
    (out / "_manifest.json").write_text(text)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(make_spec(tiny_dirs["gpt2"], out, OPS)))
    rc, err = cli("run", str(p), "--overwrite")
    assert rc == 2 and "_manifest.json" in err and "nothing was deleted" in err
    assert (out / "_manifest.json").read_text() == text


def test_overwrite_deletes_only_raysights_own_files(tiny_dirs, tmp_path):
    out = tmp_path / "o"
    raysight.run(make_spec(tiny_dirs["gpt2"], out, OPS, execution={"shard_rows": 4}))
    kept = foreign_files(out)
    other = make_spec(tiny_dirs["gpt2"], out, [{"save": "layers.1.output", "as": "g"}])
    with pytest.raises(OutputError, match="different spec"):
        raysight.run(other, log=lambda _: None)
    raysight.run(other, overwrite=True, log=lambda _: None)
    for name, data in kept.items():
        assert (out / name).read_bytes() == data
    assert (out / "part-00001-subdir" / "x").exists()
    assert sorted(p.name for p in out.glob("part-?????.parquet")) == ["part-00000.parquet"]
    assert raysight.open(out).columns == ["g"]


def test_tilde_is_expanded_once_for_every_path(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = make_spec(tiny_dirs["gpt2"], "~/out", OPS)
    spec["output"]["path"] = "~/out"
    parsed = parse_spec(spec)
    assert parsed.output.path == str(tmp_path / "out")
    raysight.run(parsed, log=lambda _: None)
    assert verify(tmp_path / "out") == []  # manifest and data in the same, expanded place
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("path", ["", "   "])
def test_a_blank_output_path_is_an_error(tiny_dirs, path):
    spec = make_spec(tiny_dirs["gpt2"], None, OPS)
    spec["output"]["path"] = path
    with pytest.raises(SpecError, match=r"output\.path: the path is blank"):
        parse_spec(spec)
