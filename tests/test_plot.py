"""raysight plot: each kind draws what the data says. The lens is checked against a logit lens
computed here with plain PyTorch hooks; the grid and the norms against the same aggregation done
here with numpy; and every image is decoded and looked at (its heatmap's pixels vary, the
labels are the expected tokens), not only found on disk."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch

from conftest import PROMPTS, make_spec
from raysight.cli import main
from raysight.dataset.plot import PlotError
from reference import alone, first

LONG = [p for p in PROMPTS if len(p) >= 2]


def _image(path) -> np.ndarray:
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    return img


def _colours(img: np.ndarray) -> int:
    return len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0))


def test_logit_lens_against_hooks(tiny_dirs, tiny_models, run_spec, tmp_path):
    model, tok = tiny_models["gpt2"]
    lens = {
        "save": "layers.*.output",
        "positions": [-1],
        "apply": ["final_norm", "lm_head"],
        "reduce": {"topk": 3},
        "as": "lens",
    }
    ds = run_spec(make_spec(tiny_dirs["gpt2"], None, [lens], prompts=LONG))
    chart = ds.plot(tmp_path / "lens.png", rows=4)
    assert chart.kind == "lens"
    panel = chart.panels[0]
    mods = dict(model.named_modules())
    order = sorted(range(len(LONG)), key=str)[:4]  # the plot shows rows by example_id
    for j, k in enumerate(order):
        cap, _ = alone(
            model, tok, LONG[k], capture={f"h{i}": f"transformer.h.{i}" for i in range(3)}
        )
        for layer in range(3):
            with torch.no_grad():
                logits = mods["lm_head"](mods["transformer.ln_f"](first(cap[f"h{layer}"])[0, -1]))
            top = int(logits.argmax())
            assert panel["tokens"][layer][j] == tok.decode([top])
            assert panel["values"][layer, j] == pytest.approx(float(logits[top]), rel=1e-4)
    image = chart.figure.axes[0].images[0].get_array()
    assert np.allclose(np.asarray(image), panel["values"])
    texts = {t.get_text() for t in chart.figure.axes[0].texts}
    assert {s.replace("\n", "\\n") for row in panel["tokens"] for s in row} <= texts
    assert _colours(_image(tmp_path / "lens.png")) > 50  # a heatmap, not a blank canvas


def test_patching_grid_is_the_mean_per_sweep_point(tiny_dirs, run_spec, tmp_path):
    ops = [
        {"set": "layers.{layer}.output", "positions": ["{pos}"], "value": {"zeros": True}},
        {"save": "logits", "positions": [-1], "reduce": {"logprob": 5}, "as": "lp"},
    ]
    spec = make_spec(
        tiny_dirs["gpt2"], None, ops, prompts=LONG, sweep={"layer": "0:3", "pos": [0, -1]}
    )
    ds = run_spec(spec)
    chart = ds.plot()
    assert chart.kind == "grid"
    panel = chart.panels[0]
    t = ds.table(["layer", "pos"]).to_pylist()
    lp = ds.to_torch("lp").reshape(-1).numpy()
    for i, layer in enumerate([0, 1, 2]):
        for j, pos in enumerate([0, -1]):
            mine = [k for k, r in enumerate(t) if r["layer"] == layer and r["pos"] == pos]
            assert len(mine) == len(LONG)
            assert panel["values"][i, j] == pytest.approx(lp[mine].mean(), rel=1e-6)
    assert panel["axes"] == ["layer", "pos"]
    chart.save(tmp_path / "grid.html")
    page = (tmp_path / "grid.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert f"{panel['values'][0, 0]:.4g}" in page


def test_norms_and_a_column_saved_at_several_layers(tiny_dirs, run_spec, tmp_path):
    ops = [{"save": "layers.*.output", "as": "h"}, {"save": "layers.0.mlp.output", "as": "mlp"}]
    ds = run_spec(make_spec(tiny_dirs["gpt2"], None, ops))
    chart = ds.plot(tmp_path / "n.png")
    assert chart.kind == "norms"
    line, bars = chart.panels
    assert line["title"] == "h" and line["x"] == [0, 1, 2]
    for layer, v in zip(line["x"], line["values"]):
        rows = ds.to_torch(f"h.{layer}")
        assert v == pytest.approx(torch.cat(rows).norm(dim=-1).mean().item(), rel=1e-5)
    assert bars["x"] == ["mlp"]
    _image(tmp_path / "n.png")


def test_cli_and_errors(tiny_dirs, run_spec, tmp_path, capsys):
    ds = run_spec(
        make_spec(
            tiny_dirs["gpt2"], None, [{"save": "logits", "positions": [-1], "reduce": {"topk": 4}}]
        )
    )
    out = tmp_path / "top.png"
    assert main(["plot", str(ds.path), "-o", str(out)]) == 0
    assert "top plot" in capsys.readouterr().out
    assert _colours(_image(out)) > 20
    assert main(["plot", str(ds.path), "--kind", "grid", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a grid needs a sweep and a scalar column; its columns are logits_ids" in err
    with pytest.raises(PlotError, match="plot kind 'pie'"):
        ds.plot(kind="pie")
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no _manifest.json" in capsys.readouterr().err


def test_logit_lens_over_every_position_of_one_row(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["gpt2"]
    lens = {"save": "layers.*.output", "apply": ["final_norm", "lm_head"], "reduce": {"topk": 2}}
    ds = run_spec(make_spec(tiny_dirs["gpt2"], None, [{**lens, "as": "lens"}], prompts=LONG))
    chart = ds.plot(row=3)
    panel = chart.panels[0]
    assert panel["x"] == [tok.decode([t]) for t in tok(LONG[3])["input_ids"]]  # its tokens
    mods = dict(model.named_modules())
    cap, _ = alone(model, tok, LONG[3], capture={f"h{i}": f"transformer.h.{i}" for i in range(3)})
    for layer in range(3):
        with torch.no_grad():
            logits = mods["lm_head"](mods["transformer.ln_f"](first(cap[f"h{layer}"])[0]))
        top = logits.argmax(-1).tolist()
        assert panel["tokens"][layer] == [tok.decode([t]) for t in top]
    with pytest.raises(PlotError, match="no row has that example_id"):
        ds.plot(row="nope")
