"""The output directory: raysight deletes only its own files, never another tool's; a manifest
that is not raysight's (or not JSON) is refused, not overwritten; paths expand `~` once."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

import raysight
from conftest import make_spec
from raysight.cli import main
from raysight.dataset.verify import verify
from raysight.engine.run import OutputError
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


# ----------------------------------------------------------------------------- one driver
def _lock(out, **fields):
    out.mkdir(exist_ok=True)
    (out / "_lock.json").write_text(json.dumps(fields))


def test_a_second_driver_is_refused_while_the_first_holds_the_lock(tiny_dirs, tmp_path):
    import os
    import socket
    import time

    out = tmp_path / "o"
    spec = make_spec(tiny_dirs["gpt2"], out, OPS)
    host = socket.gethostname()
    _lock(out, host=host, pid=os.getpid(), token="other", renewed=time.time())
    with pytest.raises(OutputError, match=r"being written by another raysight run \(pid \d+"):
        raysight.run(spec, log=lambda _: None)
    _lock(out, host="elsewhere", pid=1, token="other", renewed=time.time())
    with pytest.raises(OutputError, match="on elsewhere"):
        raysight.run(spec, log=lambda _: None)
    # a dead driver's lock: a dead pid on this host, or a lease run out elsewhere
    dead = 2**22 + 12345
    for held in (
        {"host": host, "pid": dead, "renewed": time.time()},
        {"host": "elsewhere", "pid": 1, "renewed": time.time() - 120},
        {"garbled": True},
    ):
        _lock(out, **held)
        if "garbled" in held:
            os.utime(out / "_lock.json", (time.time() - 120, time.time() - 120))
        raysight.run(spec, log=lambda _: None)
        assert not (out / "_lock.json").exists()  # released when the run ends
    assert verify(out) == []


# ----------------------------------------------------------------------------- resume
def _interrupted(out) -> None:
    """Make a finished dataset look like one whose driver died after its first shard: the
    later shards are neither in the manifest nor recorded as complete."""
    path = out / "_manifest.json"
    m = json.loads(path.read_text())
    for k in list(m["shards"])[1:]:
        del m["shards"][k]
        (out / "_shards" / f"part-{int(k):05d}.json").unlink()
    path.write_text(json.dumps(m))


def test_a_resume_over_changed_input_or_model_is_refused(tiny_dirs, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"prompt number {i}"}) + "\n" for i in range(6)))
    model = shutil.copytree(tiny_dirs["gpt2"], tmp_path / "model")
    out = tmp_path / "o"
    spec = make_spec(model, out, OPS, execution={"shard_rows": 3})
    spec["data"] = {"source": str(src)}
    raysight.run(spec, log=lambda _: None)
    _interrupted(out)
    src.write_text(src.read_text().replace("number 4", "NUMBER 4"))  # same size, new text
    with pytest.raises(OutputError, match=r"data\.source's files changed since its first shards"):
        raysight.run(spec, log=lambda _: None)
    src.write_text(src.read_text().replace("NUMBER 4", "number 4"))
    (model / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(OutputError, match="the model's files changed"):
        raysight.run(spec, log=lambda _: None)
    (model / "extra.safetensors").unlink()
    summary = raysight.run(spec, log=lambda _: None)  # unchanged: resumes
    assert summary.shards_run == 1 and verify(out) == []


def test_a_resume_on_another_runner_is_refused():
    from raysight.engine.fingerprint import changes

    before = {"input": {"inline": True}, "model": {}, "runner": {"runner": "ray", "gpu": False}}
    now = {**before, "runner": {"runner": "local", "gpu": False}}
    assert changes(before, now) == ["runner changed since its first shards were written"]
    assert changes(before, before) == []
    assert "no fingerprint" in changes(None, now)[0]


def test_a_model_directory_with_only_pickle_weights_is_refused_at_validation(tiny_dirs, tmp_path):
    model = shutil.copytree(tiny_dirs["gpt2"], tmp_path / "model")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(make_spec(model, tmp_path / "o", OPS)))
    rc, err = cli("validate", str(p))
    assert rc == 2 and "only pickle weights (pytorch_model.bin)" in err and "never pickles" in err


def test_a_manifest_that_cannot_be_written_is_a_message_and_keeps_what_is_done(
    tiny_dirs, tmp_path, monkeypatch
):
    """ENOSPC while recording a shard: the run stops with a message naming output.path, the
    shards recorded before stay, and the rerun adopts the shard whose completion record was
    written just before the manifest failed, and finishes the rest."""
    import errno

    from raysight.dataset.store import Store
    from raysight.engine.outputs import ManifestSaver

    out = tmp_path / "o"
    spec = make_spec(tiny_dirs["gpt2"], out, OPS, execution={"shard_rows": 3})
    real = Store.write_bytes

    def full_disk(store, name, data):
        if name == "_manifest.json" and (out / "_shards" / "part-00001.json").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real(store, name, data)

    monkeypatch.setattr(ManifestSaver, "due", lambda self, now: True)  # after every shard
    monkeypatch.setattr(Store, "write_bytes", full_disk)
    with pytest.raises(OutputError, match=r"cannot write the manifest .*No space left"):
        raysight.run(spec, log=lambda _: None)
    monkeypatch.setattr(Store, "write_bytes", real)
    kept = json.loads((out / "_manifest.json").read_text())["shards"]
    assert list(kept) == ["0"]
    assert (out / "_shards" / "part-00001.json").exists()  # recorded before the manifest failed
    summary = raysight.run(spec, log=lambda _: None)
    assert summary.shards_run == 2 and verify(out) == []  # shard 1 adopted, 2 and 3 run
