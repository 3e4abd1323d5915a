"""Object-storage output against a real S3-compatible server on loopback (moto's server mode, in
a process of its own): a run to s3://, verify, inspect and open on the URI, plain pyarrow
reading the bucket; an actor and a driver SIGKILLed mid-upload, then resume and verify; two
drivers on one prefix; --overwrite on a URI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

import raysight
from raysight.cli import main
from raysight.dataset.verify import verify

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ROOT = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the standard AWS_* variables pointing at it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    import boto3

    boto3.client("s3").create_bucket(Bucket="bucket")
    yield env
    server.terminate()
    server.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _objects(prefix: str) -> list[str]:
    fs, path = pafs.FileSystem.from_uri(f"s3://bucket/{prefix}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(
        i.path.removeprefix(f"bucket/{prefix}/") for i in infos if i.type == pafs.FileType.File
    )


def _cli(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "raysight.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        },
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_quickstart_to_s3_then_verify_and_plain_pyarrow(s3):
    rc, out = _cli("run", "specs/quickstart.yaml", "--set", "output.path=s3://bucket/q")
    assert rc == 0, out[-3000:]
    rc, out = _cli("verify", "s3://bucket/q")
    assert rc == 0 and "OK" in out, out
    table = pq.read_table("s3://bucket/q/part-00000.parquet")
    assert table.num_rows == 8
    ds = raysight.open("s3://bucket/q")
    assert sorted(ds.table(["example_id"]).column(0).to_pylist()) == sorted(
        json.loads(line)["id"]
        for line in (ROOT / "specs/data/prompts.jsonl").read_text().splitlines()
    )
    assert ds.to_torch("lens_ids").shape == (8, 1, 5)
    assert main(["inspect", "s3://bucket/q"]) == 0
    assert {"_manifest.json", "_spec.json", "_shards/part-00000.json", "part-00000.parquet"} <= set(
        _objects("q")
    )


def _flaky(out: str, n: int, delay: float, **execution) -> dict:
    xs = [[float(i)] + [0.25] * 7 for i in range(n)]
    return {
        "model": {"factory": "tiny:flaky", "factory_kwargs": {"delay": delay}},
        "data": {"prompts": [{"x": x} for x in xs], "input_field": "x"},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": out},
        "execution": {"shard_rows": 2, "max_batch_rows": 1, **execution},
    }


def _whole(uri: str, n: int) -> None:
    assert verify(uri) == []
    ids = raysight.open(uri).table(["example_id"]).column(0).to_pylist()
    assert sorted(ids) == list(range(n))


def _driver(tmp_path: Path, spec: dict, name: str = "s.yaml") -> tuple[list[str], dict]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    ray_tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # AF_UNIX paths stay short
    env = {
        **os.environ,
        "RAY_TMPDIR": ray_tmp,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return [sys.executable, "-m", "raysight.cli", "run", str(path), "--allow-code"], env


def _done(prefix: str) -> int:
    return sum(n.startswith("_shards/") for n in _objects(prefix))


def _wait_for(cond, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not cond():
        time.sleep(0.1)


def test_killed_actor_and_killed_driver_mid_upload_then_resume(s3, tmp_path):
    uri = "s3://bucket/chaos"
    cmd, env = _driver(tmp_path, _flaky(uri, 24, 0.2, runner="ray", actors=2))
    driver = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: _done("chaos") >= 2)
        actors = [
            p
            for p in psutil.process_iter(["cmdline"])
            if " ".join(p.info["cmdline"] or []).startswith("ray::ShardActor")
        ]
        assert actors, "no actor to kill"
        actors[0].send_signal(signal.SIGKILL)  # an actor, mid-shard
        _wait_for(lambda: _done("chaos") >= 5)
        driver.send_signal(signal.SIGKILL)  # and the driver, with uploads in flight
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    done = _done("chaos")
    assert 0 < done < 12
    assert verify(uri), "an interrupted dataset must not verify"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _whole(uri, 24)


def test_two_drivers_on_one_prefix(s3, tmp_path):
    """The second driver is refused while the first holds the lock; started together, both may
    run, and the dataset is still whole."""
    uri = "s3://bucket/race"
    spec = _flaky(uri, 12, 0.1, runner="local")
    cmd, env = _driver(tmp_path, spec)
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for(lambda: "_lock.json" in _objects("race"))
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "is being written by another raysight run" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    _whole(uri, 12)
    uri2 = "s3://bucket/race2"
    cmd2, env2 = _driver(tmp_path, {**spec, "output": {"path": uri2}}, "s2.yaml")
    both = [
        subprocess.Popen(
            cmd2, env=env2, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    codes = [p.wait(timeout=300) for p in both]
    assert 0 in codes and set(codes) <= {0, 2}, [p.stderr.read()[-2000:] for p in both]
    _whole(uri2, 12)


def test_overwrite_on_a_uri_deletes_only_raysights_objects(s3, tmp_path):
    uri = "s3://bucket/ow"
    raysight.run(_flaky(uri, 4, 0.0, runner="local"), log=lambda _: None, allow_code=True)
    fs, _ = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream("bucket/ow/notes.txt") as f:
        f.write(b"someone else's")
    other = _flaky(uri, 6, 0.0, runner="local")
    other["ops"][0]["as"] = "z"
    with pytest.raises(raysight.engine.run.OutputError, match="different spec"):
        raysight.run(other, log=lambda _: None, allow_code=True)
    raysight.run(other, log=lambda _: None, allow_code=True, overwrite=True)
    _whole(uri, 6)
    assert "notes.txt" in _objects("ow")
    assert raysight.open(uri).columns == ["z"]


def test_input_read_from_the_bucket(s3, tiny_dirs, tmp_path):
    """data.source on the object store: a directory, a glob and a file, each shard reading its
    own rows from the bucket."""
    import pyarrow as pa

    fs, _ = pafs.FileSystem.from_uri("s3://bucket/in")
    texts = [f"text number {i}" for i in range(10)]
    for k, lo in enumerate((0, 6)):
        part = pa.table({"id": list(range(lo, lo + [6, 4][k])), "text": texts[lo : lo + [6, 4][k]]})
        pq.write_table(part, f"bucket/in/pq/part-{k}.parquet", filesystem=fs)
    with fs.open_output_stream("bucket/in/rows.jsonl") as f:
        f.write(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()
        )
    for n, source in enumerate(
        ["s3://bucket/in/pq", "s3://bucket/in/pq/*.parquet", "s3://bucket/in/rows.jsonl"]
    ):
        out = tmp_path / f"o{n}"
        spec = {
            "model": {"path": str(tiny_dirs["gpt2"])},
            "data": {"source": source, "id_field": "id"},
            "ops": [{"save": "layers.0.output", "positions": [-1], "as": "h"}],
            "output": {"path": str(out), "include_text": True},
            "execution": {"runner": "local", "shard_rows": 4},
        }
        raysight.run(spec, log=lambda _: None)
        assert verify(out) == [], source
        t = raysight.open(out).table(["example_id", "text"])
        assert dict(zip(*(t.column(c).to_pylist() for c in ("example_id", "text")))) == dict(
            enumerate(texts)
        )
