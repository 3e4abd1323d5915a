"""Scale-out on real Ray (no mocks): 1 vs 2 actors, killed actors, a killed driver, job submission
against a real `ray start --head`, and the readers (Ray Data, HF datasets)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

import raysight
from conftest import PROMPTS, by_id, make_spec
from raysight.dataset.verify import verify

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


def flaky_spec(out: Path, n: int, delay: float, **execution) -> dict:
    xs = [[float(i)] + [0.25] * 7 for i in range(n)]
    return {
        "model": {"factory": "tiny:flaky", "factory_kwargs": {"delay": delay}},
        "data": {"prompts": [{"x": x} for x in xs], "input_field": "x"},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": str(out)},
        "execution": {"runner": "ray", "shard_rows": 2, "max_batch_rows": 1, **execution},
    }


def assert_whole(out: Path, n: int) -> None:
    assert verify(out) == []
    ids = raysight.open(out).table(["example_id"]).column(0).to_pylist()
    assert sorted(ids) == list(range(n))


def test_one_and_two_actors_give_identical_rows(ray_local, tiny_dirs, tmp_path):
    ops = [
        {"save": "layers.1.output", "as": "h"},
        {"save": "logits", "positions": [-1], "reduce": {"topk": 3}, "as": "top"},
    ]
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"a{n}"
        spec = make_spec(
            tiny_dirs["llama"], out, ops, execution={"runner": "ray", "actors": n, "shard_rows": 3}
        )
        raysight.run(spec, log=lambda _: None)
        assert verify(out) == []
        runs[n] = raysight.open(out)
    for col in ("h", "top_ids", "top_values"):
        a, b = by_id(runs[1], col), by_id(runs[2], col)
        assert a.keys() == b.keys() == set(range(len(PROMPTS)))
        for i in a:
            assert torch.equal(a[i], b[i])


def _shard_runners() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::ShardActor"):
            found.append(p)
    return found


@pytest.mark.parametrize("trial", range(2))  # two kill times (CI's 20 minutes are nearly full)
def test_a_killed_actor_is_replaced_and_its_shard_redone(ray_local, tmp_path, trial):
    rng = random.Random(trial)
    killed = []
    out = tmp_path / "o"
    strike_after = rng.randint(1, 10)  # finished shards before the kill

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            m = out / "_manifest.json"
            if m.exists() and len(json.loads(m.read_text())["shards"]) >= strike_after:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        procs = _shard_runners()
        if procs:
            victim = rng.choice(procs)
            victim.send_signal(signal.SIGKILL)
            killed.append(victim.pid)

    t = threading.Thread(target=killer)
    t.start()
    raysight.run(flaky_spec(out, 40, 0.15, actors=2), log=lambda _: None, allow_code=True)
    t.join()
    assert killed, "the chaos thread found no actor to kill"
    assert_whole(out, 40)


def _kill_ray_leftovers(marker: str) -> None:
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_a_killed_driver_is_recovered_by_rerunning(tmp_path):
    # one trial: test_signals.py kills a driver too (and checks that no Ray process is left)
    rng = random.Random(100)
    out = tmp_path / "o"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(flaky_spec(out, 24, 0.2, actors=2)))
    # Ray's AF_UNIX socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmp),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "raysight.cli", "run", str(spec), "--allow-code"]
    log = tmp_path / "driver.log"
    try:
        with log.open("w") as sink:
            driver = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink)
        deadline = time.time() + 120
        records = out / "_shards"  # a shard is finished once its completion record exists
        while time.time() < deadline:  # wait until at least one shard has finished
            if (records.exists() and any(records.glob("part-*.json"))) or driver.poll() is not None:
                break
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.5))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        done = list(records.glob("part-*.json"))  # the manifest may list fewer: it lags
        assert 0 < len(done) < 12, "not killed mid-run:\n" + log.read_text()[-3000:]
        listed = json.loads((out / "_manifest.json").read_text())["shards"]
        assert set(listed) <= {p.stem.removeprefix("part-").lstrip("0") or "0" for p in done}
        assert verify(out), "an interrupted dataset must not verify"
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert f"{12 - len(done)} to run" in rerun.stderr
        assert_whole(out, 24)
    finally:
        _kill_ray_leftovers(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_submission_to_a_real_head_node(tiny_dirs, tmp_path):
    from ray.job_submission import JobSubmissionClient

    from raysight.engine.submit import submit

    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "job_out"
    (work / "job.yaml").write_text(
        yaml.safe_dump(
            make_spec(
                tiny_dirs["gpt2"],
                out,
                [{"save": "layers.0.output", "positions": [-1]}],
                execution={"runner": "ray"},
            )
        )
    )
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    port, dash = _free_port(), _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(ray_tmp),
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
    }
    # Free ports for every agent too: another Ray on this machine (the session's) holds the
    # defaults, and a head whose job agent cannot bind never accepts a job.
    agent_ports = [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]
    head = subprocess.Popen(
        [
            str(Path(bin_dir) / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            *agent_ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)
        logs: list[str] = []
        rc = submit(
            str(work / "job.yaml"),
            address,
            ["execution.shard_rows=4"],
            working_dir=str(work),
            log=logs.append,
        )
        assert rc == 0, "\n".join(logs)[-3000:]
        assert any("SUCCEEDED" in line for line in logs)
        assert_whole(out, len(PROMPTS))
        assert len(raysight.open(out).files) == 3  # the --set override reached the job
        # The plain Ray command does the same job.
        out2 = tmp_path / "plain_out"
        plain = subprocess.run(
            [
                str(Path(bin_dir) / "ray"),
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(work),
                "--",
                "raysight",
                "run",
                "job.yaml",
                "--set",
                f"output.path={out2}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
        assert_whole(out2, len(PROMPTS))
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        _kill_ray_leftovers(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_output_opens_in_ray_data_and_hf_datasets(ray_local, tiny_dirs, tmp_path):
    out = tmp_path / "o"
    raysight.run(
        make_spec(
            tiny_dirs["gpt2"],
            out,
            [
                {"save": "layers.0.output", "positions": [-1], "as": "h"},
                {"save": "layers.0.output", "as": "full"},
            ],
            execution={"shard_rows": 4},
        ),
        log=lambda _: None,
    )
    ds = raysight.open(out)
    rd = ds.ray()
    assert rd.count() == len(PROMPTS)
    row = rd.take(1)[0]
    assert row["h"].shape == (1, 32)
    hf = ds.hf().with_format("torch")
    assert len(hf) == len(PROMPTS)
    first = hf[0]
    assert first["h"].shape == (1, 32) and first["full"].shape[1] == 32
    ids = ds.table(["example_id"]).column(0).to_pylist()
    torch.testing.assert_close(first["full"], ds.to_torch("full")[0])
    assert int(first["example_id"]) == ids[0]
