"""`raysight modules MODEL`: the module tree with standardized names, and each module's input
and output shapes from a meta forward, checked against a real forward with plain hooks."""

from __future__ import annotations

import re

import pytest
import torch

from raysight.cli import main


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_tree_names_and_shapes_match_a_real_forward(arch, tiny_dirs, tiny_models, capsys):
    model, _ = tiny_models[arch]
    assert main(["modules", str(tiny_dirs[arch]), "--tokens", "5"]) == 0
    text = capsys.readouterr().out
    shapes = {}
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: shapes.__setitem__(n, o))
        for n, m in model.named_modules()
        if n
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros((1, 5), dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    base = "transformer.h" if arch == "gpt2" else "model.layers"
    lines = {}
    for line in text.splitlines()[2:-1]:
        parts = re.split(r"\s{2,}", line.strip())
        lines.setdefault(parts[0], []).append(parts[1:])
    # layer 0 in full: each child's output shape is what the real forward gave
    for name, out in shapes.items():
        if not name.startswith(f"{base}.0.") or not torch.is_tensor(out):
            continue
        leaf = name.rsplit(".", 1)[-1]
        assert any(row[-1].endswith(f"-> {list(out.shape)}") for row in lines[leaf]), (
            name,
            out.shape,
        )
    std = "layers.0.attn.out_proj" if arch == "llama" else "layers.0.mlp.down_proj"
    assert std in text and "layers.0.attn_norm" in text and "final_norm" in text
    n = len(model.get_submodule(base))
    assert f"1–{n - 1}" in text and "(same modules and shapes as layer 0)" in text
    assert len(lines["mlp"]) == 1  # only layer 0's modules are listed: the rest are folded


def test_a_missing_model_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["modules", str(tmp_path / "none")]) == 2
    assert "is not a model directory" in capsys.readouterr().err
