"""Loading models: the checkpoint's own dtype by default (as HF's from_pretrained(dtype="auto")),
the same on the meta model that plans and the real one that runs; a hub id resolved from the
local HF cache only, offline (a cache this test builds), and a clear error for one not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM

import tiny
from conftest import make_spec


def test_the_checkpoints_own_dtype_by_default(tmp_path, run_spec):
    model, tok = tiny.build("gpt2")
    path = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    assert next(hf.parameters()).dtype == torch.bfloat16  # what HF itself does
    ds = run_spec(make_spec(path, None, [{"save": "layers.0.output", "positions": [-1]}]))
    col = ds.manifest.columns[0]
    assert col["dtype"] == "bfloat16" and ds.to_torch(col["name"]).dtype == torch.bfloat16
    ds = run_spec(
        make_spec(
            path, None, [{"save": "layers.0.output", "positions": [-1]}], model={"dtype": "float32"}
        )
    )
    assert ds.manifest.columns[0]["dtype"] == "float32"


def _hub_cache(root: Path, repo: str) -> Path:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<rev>/...}."""
    model, tok = tiny.build("gpt2")
    entry = root / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / "0123abcd"
    model.save_pretrained(snapshot)
    tok.save_pretrained(snapshot)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0123abcd")
    return root


def test_a_hub_id_from_the_local_cache_offline(tmp_path):
    cache = _hub_cache(tmp_path / "hub", "tiny-org/tiny-gpt2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    # no hub: a request would be refused at once (and raysight must not make one)
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9")

    def run(model_path: str) -> subprocess.CompletedProcess:
        out = tmp_path / model_path.replace("/", "_")
        spec = make_spec(model_path, out, [{"save": "layers.0.output", "positions": [-1]}])
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        cmd = [sys.executable, "-m", "raysight.cli", "run", str(path), "--local", "-q"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    ok = run("tiny-org/tiny-gpt2")
    assert ok.returncode == 0, ok.stderr[-2000:]
    missing = run("tiny-org/absent")
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "is not a model directory, and not a hub id in the local HF cache" in missing.stderr
    assert "Traceback" not in missing.stderr
