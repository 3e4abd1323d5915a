"""benchmarks/gpu.sh stays ready to run: its CPU smoke mode runs every method of the GPU suite
(bare forward, raysight and an nnsight 0.8 script; one layer, every layer, early stop) and the
writer benchmark, each in its own process, and prints a full table. The numbers here mean
nothing (batches of 2 x 32 tokens on a CPU); that they all come out is the point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_suite_runs_end_to_end_in_smoke_mode(tmp_path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = tmp_path / "suite.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (log.read_text() if log.exists() else "")
    table = (tmp_path / "suite.md").read_text()
    rows = re.findall(r"^\| (bare|raysight|nnsight) \| (\w+) \| ([\d.]+) \|", table, re.M)
    assert sorted((m, layers) for m, layers, _ in rows) == sorted(
        [
            ("bare", "none"),
            ("bare", "all"),
            ("raysight", "one"),
            ("raysight", "early"),
            ("raysight", "all"),
            ("nnsight", "one"),
            ("nnsight", "all"),
        ]
    ), table
    assert all(float(secs) > 0 for *_, secs in rows)
    writer = (tmp_path / "writer.md").read_text()
    assert "raysight, arrow, per_token, bytes" in writer and "raw file write" in writer, writer
    pipeline = (tmp_path / "pipeline.md").read_text()
    rates = re.findall(r"^(raw|arrow-typed|parquet-bytes)\s+([-2])\s+([\d.]+)", pipeline, re.M)
    assert len(rates) == 3 and all(float(r) > 0 for *_, r in rates), pipeline
