"""Warm sessions on Ray actors (engine/session.py, engine/pool.py): the actors keep the model
between runs (a different model is loaded in its place), each run's values equal a plain
forward hook's, and a named session is found by another process, from the CLI or Python,
until its owner stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import raysight
from conftest import PROMPTS, by_id, make_spec
from reference import alone, first

OPS = [{"save": "layers.1.output", "positions": [-1], "as": "h"}]
LAYER = {"llama": "model.layers.1", "gpt2": "transformer.h.1"}


def _matches_hooks(out: Path, arch: str, tiny_models) -> None:
    model, tok = tiny_models[arch]
    got = by_id(raysight.open(out), "h")
    for k, prompt in enumerate(PROMPTS):
        cap, _ = alone(model, tok, prompt, capture={"h": LAYER[arch]})
        torch.testing.assert_close(got[k][0], first(cap["h"])[0, -1], atol=1e-5, rtol=0)


def test_a_ray_session_keeps_the_model_in_its_actor(ray_local, tiny_dirs, tiny_models, tmp_path):
    import ray
    from ray.exceptions import RayActorError

    loads = []
    with raysight.session(tiny_dirs["llama"], actors=1) as s:
        actor = s._pool.actors[0]
        for i, arch in enumerate(["llama", "llama", "gpt2"]):
            spec = make_spec(tiny_dirs[arch], tmp_path / f"o{i}", OPS)  # runner: local
            spec["execution"]["actors"] = 3  # the session's actors decide
            s.run(spec, log=lambda _: None)
            loads.append(ray.get(actor.stats.remote())["loads"])
        assert "3 run(s), on 1 Ray actor(s)" in repr(s)
    # the model the session named, loaded as it started; kept for the second run; replaced
    assert loads == [1, 1, 2]
    for i, arch in enumerate(["llama", "llama", "gpt2"]):
        _matches_hooks(tmp_path / f"o{i}", arch, tiny_models)
    resolved = raysight.open(tmp_path / "o1").manifest.spec["execution"]
    assert (resolved["runner"], resolved["actors"]) == ("ray", 1)
    with pytest.raises(RayActorError):  # closing the session stopped its actor
        ray.get(actor.stats.remote(), timeout=60)
    assert ray.is_initialized()  # a Ray the session did not start is left up


def test_a_session_refuses_bad_arguments_by_name():
    with pytest.raises(raysight.SpecError) as e:
        raysight.session("x", actors=0, cpus_per_actor=0)
    assert "execution.actors" in str(e.value) and "execution.cpus_per_actor" in str(e.value)
    with pytest.raises(raysight.SpecError, match=r"model\.factory"):
        raysight.session({"factory": "os:system"}, actors=1)
    with pytest.raises(raysight.RaysightError, match="name 'a b'"):
        raysight.session(actors=1, name="a b")
    with pytest.raises(raysight.RaysightError, match="no raysight session named 'absent'"):
        raysight.session(name="absent")
    with pytest.raises(raysight.RaysightError, match="gpus_per_actor need actors=N"):
        raysight.session(gpus_per_actor=1)  # in this process: the setting would be ignored
    with pytest.raises(raysight.RaysightError, match="address= is for a session on Ray"):
        raysight.session(address="127.0.0.1:1")


def test_a_name_in_use_on_the_cluster_is_refused(ray_local, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSIGHT_CACHE", str(tmp_path))
    with pytest.raises(raysight.RaysightError, match=r"absent. is not a model directory"):
        raysight.session(str(tmp_path / "absent"), actors=1, name="dup")  # said as it starts
    assert not (tmp_path / "sessions" / "dup.json").exists()
    with raysight.session(tiny_dirs["gpt2"], actors=1, name="dup") as s:
        assert (tmp_path / "sessions" / "dup.json").exists()
        with pytest.raises(raysight.RaysightError, match="'dup' is already running"):
            raysight.session(tiny_dirs["gpt2"], actors=1, name="dup")
        # the record gone (an owner elsewhere, or killed), the actors are still on the cluster
        (tmp_path / "sessions" / "dup.json").unlink()
        with pytest.raises(raysight.RaysightError, match="already runs the actors"):
            raysight.session(tiny_dirs["gpt2"], actors=1, name="dup")
        spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "logits"}])
        s.run(spec, log=lambda _: None)  # the first session's actor was left alone
        s._pool.discard()  # what an interrupted run does: its actors stopped
        spec["output"]["path"] = str(tmp_path / "o2")
        s.run(spec, log=lambda _: None)  # on a new actor of the same name
    assert raysight.open(tmp_path / "o").manifest.spec["execution"]["runner"] == "ray"
    assert len(raysight.open(tmp_path / "o2").to_torch("logits")) == len(PROMPTS)


ATTACH = """
import json, sys, ray, raysight
s = raysight.session(name=sys.argv[1])
s.run(sys.argv[2], log=lambda _: None)
print("STATS " + json.dumps(ray.get(s._pool.actors[0].stats.remote())))
"""


@pytest.mark.slow
def test_a_named_session_is_attached_from_the_cli_and_python(tiny_dirs, tiny_models, tmp_path):
    env = {**os.environ, "RAYSIGHT_CACHE": str(tmp_path / "cache")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "raysight.cli"]
    record = tmp_path / "cache" / "sessions" / "lens.json"
    owner = subprocess.Popen(
        [*cli, "session", "lens", "--model", str(tiny_dirs["llama"])],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not record.exists():
            assert owner.poll() is None, owner.stderr.read()
            assert time.monotonic() < deadline, "the session did not start"
            time.sleep(0.2)
        specs = []
        for i in range(2):
            spec = make_spec(tiny_dirs["llama"], tmp_path / f"o{i}", OPS)
            specs.append(tmp_path / f"spec{i}.json")
            specs[-1].write_text(json.dumps(spec))
        taken = subprocess.run(
            [*cli, "session", "lens", "--model", str(tiny_dirs["llama"])],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert taken.returncode == 2 and "already running" in taken.stderr
        run = subprocess.run(
            [*cli, "run", str(specs[0]), "--session", "lens"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        assert "on the session's 1 warm actor(s)" in run.stderr
        attach = subprocess.run(
            [sys.executable, "-c", ATTACH, "lens", str(specs[1])],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert attach.returncode == 0, attach.stderr
        stats = json.loads(attach.stdout.split("STATS ")[1])
        assert stats["loads"] == 1  # two runs from two processes, on the model loaded once
    finally:
        owner.send_signal(signal.SIGTERM)
        stopped = owner.wait(timeout=60)
    assert stopped == 0
    assert not record.exists()
    for i in range(2):
        _matches_hooks(tmp_path / f"o{i}", "llama", tiny_models)
    gone = subprocess.run(
        [*cli, "run", str(specs[0]), "--session", "lens", "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode == 2 and "no raysight session named 'lens'" in gone.stderr
