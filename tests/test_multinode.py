"""Several Ray nodes on one machine (ray.cluster_utils.Cluster, as Ray's own tests do): shards
spread over the nodes, a node removed mid-run takes its actors with it and its shards are
rerun elsewhere, every row appears once; an output path that some node cannot see is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

import raysight
from raysight.dataset.verify import verify

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ROWS = 24


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the nodes' workers import tiny
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node
    nodes = [c.add_node(num_cpus=1) for _ in range(3)]  # two actors and a spare node
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


def _spec(tmp_path: Path, out: str) -> Path:
    xs = [[float(i)] + [0.25] * 7 for i in range(ROWS)]
    spec = {
        "model": {"factory": "tiny:flaky", "factory_kwargs": {"delay": 0.25}},
        "data": {"prompts": [{"x": x} for x in xs], "input_field": "x"},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": out},
        "execution": {"runner": "ray", "actors": 2, "shard_rows": 2, "max_batch_rows": 1},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _driver(spec: Path, address: str, *prefix: str) -> list[str]:
    return [
        *prefix,
        sys.executable,
        "-m",
        "raysight.cli",
        "run",
        str(spec),
        "--allow-code",
        "--address",
        address,
    ]


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }


def _node_of(proc: psutil.Process, nodes: list) -> object | None:
    """The cluster node whose raylet is an ancestor of ``proc``."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
    for parent in proc.parents():
        if parent.pid in raylets:
            return raylets[parent.pid]
    return None


def test_a_lost_node_loses_no_row(cluster, tmp_path):
    c, nodes = cluster
    out = tmp_path / "o"
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(
            _driver(_spec(tmp_path, str(out)), c.address), env=_env(), stdout=sink, stderr=sink
        )
    try:
        deadline = time.time() + 180
        victim = None
        while time.time() < deadline and driver.poll() is None:
            if len(list(out.glob("_shards/part-*.json"))) >= 2:  # two shards finished
                runners = [
                    p
                    for p in psutil.process_iter(["cmdline"])
                    if " ".join(p.info["cmdline"] or []).startswith("ray::ShardActor")
                ]
                hosts = {id(n): n for p in runners if (n := _node_of(p, nodes)) is not None}
                if len(hosts) >= 2:  # the shards are spread over two nodes
                    victim = next(iter(hosts.values()))
                    break
            time.sleep(0.1)
        assert victim is not None, "no two nodes ran shards:\n" + log.read_text()[-3000:]
        c.remove_node(victim, allow_graceful=False)
        assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    assert verify(out) == []
    ids = raysight.open(out).table(["example_id"]).column(0).to_pylist()
    assert sorted(ids) == list(range(ROWS))


def test_an_output_path_a_node_cannot_see_is_refused(cluster, tmp_path):
    """The driver runs in a mount namespace of its own with a private tmpfs: the nodes, outside
    it, cannot see the output directory, as a node-local disk on another host."""
    c, _ = cluster
    private = Path("/tmp") / f"rs-private-{os.getpid()}"
    private.mkdir(exist_ok=True)
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"no mount namespaces here: {probe.stderr.decode()[:200]}")
    spec = _spec(tmp_path, str(private / "o"))
    inner = " ".join(_driver(spec, c.address))
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs none {private} && exec {inner}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "is not shared by the cluster's nodes: 4 of 4 do not see it" in proc.stderr
    assert "Traceback" not in proc.stderr
    private.rmdir()
