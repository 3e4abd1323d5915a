"""Every file in specs/ documents itself, validates, and (slow) runs on SmolLM2."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import raysight
from raysight.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
EXPECTED_PLOT = {
    "logit_lens.yaml": "lens",
    "activation_patching.yaml": "grid",
    "layer_importance.yaml": "grid",
    "quickstart.yaml": "top",
    "extract_dataset.yaml": "norms",
    "attribution_patching.yaml": "norms",
    "cross_prompt_patching.yaml": "text",
}


def test_there_are_specs():
    assert len(SPECS) >= 8


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_starts_with_what_it_shows_and_how_to_run_it(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 20
    header = [line for line in lines if line.startswith("#")]
    assert any(f"raysight run specs/{path.name}" in line for line in header)
    assert main(["validate", str(path), "--no-model"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_runs(path, tmp_path, monkeypatch):
    # specs name their data files relative to the repository, and earlier runs' outputs (out/)
    # relative to where they run: a directory of the test's own, holding specs/
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    monkeypatch.chdir(tmp_path)
    for first in re.findall(r"First run specs/(\S+\.yaml)", path.read_text()):
        earlier = raysight.load_spec(ROOT / "specs" / first, ["execution.runner=local"])
        raysight.run(earlier, log=lambda _: None)
    out = tmp_path / path.stem
    spec = raysight.load_spec(path, [f"output.path={out}", "execution.runner=local"])
    summary = raysight.run(spec, log=lambda _: None)
    ds = raysight.open(out)
    assert summary.errors == 0 and ds.errors() == []
    assert ds.table().num_rows == summary.rows > 0
    for col in ds.columns:
        ds.to_torch(col)
    chart = ds.plot(tmp_path / "plot.png")  # every spec's output has a plot
    image = matplotlib.image.imread(str(tmp_path / "plot.png"))
    assert image.shape[0] > 200 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 8
    assert chart.kind == EXPECTED_PLOT.get(path.name, chart.kind)
    if path.name == "quickstart.yaml":  # the README shows this row
        t = ds.table(["example_id", "lens_tokens"]).to_pylist()
        eiffel = next(r["lens_tokens"] for r in t if r["example_id"] == "eiffel")
        assert eiffel[0][0] == " Paris"
