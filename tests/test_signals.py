"""SIGTERM (ray job stop, Kubernetes) and SIGINT (Ctrl-C) stop a run cleanly on both runners:
exit 143 / 130, one line that says how to resume, no partial files, no Ray process of the run
left behind, and the rerun resumes where it stopped. A SIGKILLed driver leaves no Ray process
of ours either."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from raysight.dataset.verify import verify

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
SHARDS = 12


def spec_file(tmp_path: Path, runner: str) -> tuple[Path, Path]:
    out = tmp_path / "o"
    xs = [[float(i)] + [0.25] * 7 for i in range(2 * SHARDS)]
    spec = {
        "model": {"factory": "tiny:flaky", "factory_kwargs": {"delay": 0.25}},
        "data": {"prompts": [{"x": x} for x in xs], "input_field": "x"},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": str(out)},
        "execution": {"runner": runner, "shard_rows": 2, "max_batch_rows": 1, "actors": 2},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, out


def ours(marker: str) -> list[psutil.Process]:
    """Live processes whose command line names this test's Ray temp dir."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(
                p.info["cmdline"] or []
            ):
                found.append(p)
        except psutil.Error:
            pass
    return found


def gone(marker: str, seconds: float = 20) -> list[str]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = ours(marker)
        if not left:
            return []
        time.sleep(0.25)
    return [" ".join(p.cmdline())[:120] for p in left if p.is_running()]


class Driver:
    def __init__(self, tmp_path: Path, runner: str):
        self.spec, self.out = spec_file(tmp_path, runner)
        # Ray's AF_UNIX socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
        self.ray_tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
        self.env = {
            **os.environ,
            "RAY_TMPDIR": self.ray_tmp,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        self.cmd = [sys.executable, "-m", "raysight.cli", "run", str(self.spec), "--allow-code"]

    def start_and_wait_for_a_shard(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if self.finished():
                return proc
            time.sleep(0.1)
        proc.kill()
        raise AssertionError("no shard finished:\n" + proc.communicate()[1][-3000:])

    def finished(self) -> list[Path]:
        """The shards' completion records: a shard is finished once it has one (the manifest
        may list fewer, it lags; a run stopped by a signal writes it before it exits)."""
        return list(self.out.glob("_shards/part-*.json"))

    def rerun_resumes(self) -> None:
        done = self.finished()
        assert 0 < len(done) < SHARDS, "not stopped mid-run"
        rerun = subprocess.run(self.cmd, env=self.env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert f"{SHARDS - len(done)} to run" in rerun.stderr
        assert verify(self.out) == []

    def close(self) -> None:
        for p in ours(self.ray_tmp):
            p.kill()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


# Each runner under one signal, each signal once: both signals raise the same Interrupted, and
# the four pairs took 2.3 minutes of CI's 20. SIGTERM goes to Ray, whose ray.init installs a
# SIGTERM handler of its own (signals.rearm puts ours back).
@pytest.mark.parametrize(("runner", "sig"), [("local", signal.SIGINT), ("ray", signal.SIGTERM)])
def test_a_signal_stops_the_run_cleanly_and_the_rerun_resumes(tmp_path, runner, sig):
    d = Driver(tmp_path, runner)
    try:
        proc = d.start_and_wait_for_a_shard()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 128 + sig, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        lines = [x for x in err.splitlines() if "rerun the same command to resume" in x]
        assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name}" in lines[0]
        assert not list(d.out.glob(".*.tmp")), sorted(p.name for p in d.out.iterdir())
        listed = json.loads((d.out / "_manifest.json").read_text())["shards"]
        assert len(listed) == len(d.finished())  # a stopped run leaves its manifest current
        assert gone(d.ray_tmp) == []
        d.rerun_resumes()
    finally:
        d.close()


def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    d = Driver(tmp_path, "ray")
    try:
        proc = d.start_and_wait_for_a_shard()
        assert ours(d.ray_tmp), "the run started no Ray processes to check"
        proc.kill()
        proc.communicate()
        assert gone(d.ray_tmp, seconds=30) == []
        d.rerun_resumes()
    finally:
        d.close()
