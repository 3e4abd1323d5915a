"""A warm session keeps the loaded model between runs in this process: the second run on the
same model loads nothing, a different model replaces the kept one, and every run's values are
the same as a plain forward hook's."""

from __future__ import annotations

import pytest
import torch

import raysight
from conftest import PROMPTS, by_id, make_spec
from raysight.models import loading
from reference import alone, first


def test_a_session_reuses_the_model_and_matches_plain_hooks(tiny_dirs, tiny_models, tmp_path):
    loads: list[tuple[str, bool]] = []
    real = loading._load

    def counted(spec, meta, device):
        loads.append((spec.path, meta))
        return real(spec, meta, device)

    ops = [{"save": "layers.1.output", "positions": [-1], "as": "h"}]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "_load", counted)
        with raysight.session() as s:
            for i, arch in enumerate(["llama", "llama", "gpt2", "llama"]):
                spec = make_spec(tiny_dirs[arch], tmp_path / f"o{i}", ops)
                spec["execution"] = {"runner": "ray"}  # a session runs in this process
                summary = s.run(spec, log=lambda _: None)
                assert summary.examples == len(PROMPTS)
                if i == 1:
                    assert s.models == [str(tiny_dirs["llama"])]
            assert s.runs == 4 and "4 run(s), 1 model(s) kept" in repr(s)
        assert "closed" in repr(s)
    # llama: its meta twin and weights once; gpt2 replaced it, so llama loaded again after
    llama, gpt2 = str(tiny_dirs["llama"]), str(tiny_dirs["gpt2"])
    assert loads == [(llama, True), (llama, False), (gpt2, True), (gpt2, False)] * 1 + [
        (llama, True),
        (llama, False),
    ]
    layer = {"llama": "model.layers.1", "gpt2": "transformer.h.1"}
    model, tok = tiny_models["llama"]
    for i in (0, 1, 3):
        got = by_id(raysight.open(tmp_path / f"o{i}"), "h")
        for k, prompt in enumerate(PROMPTS):
            cap, _ = alone(model, tok, prompt, capture={"h": layer["llama"]})
            torch.testing.assert_close(got[k][0], first(cap["h"])[0, -1], atol=1e-5, rtol=0)
    resolved = raysight.open(tmp_path / "o1").manifest.spec
    assert resolved["execution"]["runner"] == "local"


def test_a_closed_session_refuses_to_run(tiny_dirs, tmp_path):
    s = raysight.session()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.run(make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "logits"}]))


def test_a_session_plans_columns_once_per_spec_shape(tiny_dirs, tmp_path, monkeypatch):
    """The meta-device forwards that find the columns' shapes run once for specs that differ
    only in rows and output path; other ops, or ops that read a file, plan again."""
    import numpy as np

    from raysight.engine import plan as plan_module

    calls = []
    real = plan_module.infer_columns

    def counted(spec, *args):
        calls.append([op.model_dump(mode="json") for op in spec.ops])
        return real(spec, *args)

    monkeypatch.setattr(plan_module, "infer_columns", counted)
    np.save(tmp_path / "v.npy", np.ones(32, dtype=np.float32))
    save = [{"save": "layers.1.output", "positions": [-1], "as": "h"}]
    other = [{"save": "layers.0.output", "positions": [-1], "as": "h"}]
    vec = {"file": {"path": str(tmp_path / "v.npy")}}
    add = [{"set": "layers.0.output", "value": vec, "mode": "add"}]
    with raysight.session() as s:
        for i, (ops, prompts) in enumerate(
            [(save, PROMPTS), (save, PROMPTS[:2]), (other, PROMPTS), (add + save, PROMPTS)] * 2
        ):
            spec = make_spec(tiny_dirs["llama"], tmp_path / f"o{i}", ops, prompts)
            s.run(spec, log=lambda _: None)
    # save and other once each; the file-reading spec both times
    kinds = [("file" if "value" in str(c) else c[0]["save"]) for c in calls]
    assert kinds == ["layers.1.output", "layers.0.output", "file", "file"], kinds
