"""data.chunk: long documents as fixed windows of tokens, one row per window with the document's
id and the window's offset. References: the windows cut by hand from the HF tokenizer's ids,
and each window's hidden states from a plain HF forward of that window alone."""

from __future__ import annotations

import json

import pytest
import torch

import raysight
from conftest import make_spec, plan_problems
from raysight.dataset.verify import verify

DOCS = {
    "a": "The quick brown fox jumps over the lazy dog, again and again.",  # 61 characters
    "b": "Short one.",  # 10
    "c": "x" * 24,
}


def _spec(tiny_dirs, tmp_path, chunk, **output):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in DOCS.items()))
    spec = make_spec(
        tiny_dirs["llama"],
        tmp_path / "o",
        [{"save": "layers.1.output", "as": "h"}],
        output=output,
        execution={"shard_rows": 2},
    )
    spec["data"] = {"source": str(src), "id_field": "id", "chunk": chunk}
    return spec


def _expected(tok, size, stride, bos, last):
    """Windows by hand: (doc id, offset) -> token ids."""
    width = size - bos
    out = {}
    for k, text in DOCS.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for off in range(0, len(ids), stride or width):
            piece = ids[off : off + width]
            if len(piece) < width and last == "drop":
                break
            out[(k, off)] = [tok.bos_token_id] * bos + piece
            if off + width >= len(ids):
                break
    return out


@pytest.mark.parametrize(
    "chunk",
    [
        {"size": 16},
        {"size": 16, "stride": 8},  # overlapping windows
        {"size": 12, "bos": False, "last": "drop"},
    ],
)
def test_windows_match_a_hand_cut_reference(tiny_dirs, tiny_models, tmp_path, chunk):
    model, tok = tiny_models["llama"]
    spec = _spec(tiny_dirs, tmp_path, chunk)
    raysight.run(spec, log=lambda _: None)
    assert verify(tmp_path / "o") == []
    ds = raysight.open(tmp_path / "o")
    t = ds.table(["example_id", "offset", "input_ids", "n_tokens"])
    got = {
        (e, o): ids
        for e, o, ids in zip(
            t.column("example_id").to_pylist(),
            t.column("offset").to_pylist(),
            t.column("input_ids").to_pylist(),
        )
    }
    want = _expected(
        tok, chunk["size"], chunk.get("stride"), chunk.get("bos", True), chunk.get("last", "keep")
    )
    assert got == want
    h = ds.to_torch("h")
    for i, key in enumerate(
        zip(t.column("example_id").to_pylist(), t.column("offset").to_pylist())
    ):
        with torch.no_grad():
            ref = model(torch.tensor([want[key]]), output_hidden_states=True).hidden_states[2][0]
        torch.testing.assert_close(h[i], ref, rtol=1e-4, atol=1e-5)
    if chunk.get("last") == "drop":  # "b" has no full window: reported, not written
        (err,) = ds.errors()
        assert err["example_id"] == "b" and "less than one window of 12" in err["reason"]


def test_plan_counts_windows_not_documents(tiny_dirs, tiny_models, tmp_path):
    _, tok = tiny_models["llama"]
    spec = _spec(tiny_dirs, tmp_path, {"size": 16, "stride": 8})
    report = raysight.plan(spec)
    assert report.input_rows == 3
    assert report.output_rows == len(_expected(tok, 16, 8, True, "keep"))


def test_per_token_windows_verify_and_open(tiny_dirs, tmp_path):
    spec = _spec(tiny_dirs, tmp_path, {"size": 16, "stride": 8}, layout="per_token")
    raysight.run(spec, log=lambda _: None)
    assert verify(tmp_path / "o") == []  # the same position in two windows is no duplicate
    t = raysight.open(tmp_path / "o").table(["example_id", "offset", "position"])
    keys = list(zip(*(t.column(c).to_pylist() for c in ("example_id", "offset", "position"))))
    assert len(keys) == len(set(keys)) and ("a", 8, 0) in keys


def test_a_window_too_short_for_the_positions_is_reported_alone(tiny_dirs, tmp_path):
    spec = _spec(tiny_dirs, tmp_path, {"size": 16})
    spec["ops"] = [{"save": "layers.1.output", "positions": [12], "as": "h"}]
    raysight.run(spec, log=lambda _: None)
    assert verify(tmp_path / "o") == []
    errors = {
        (e["example_id"], e.get("offset")): e["reason"]
        for e in raysight.open(tmp_path / "o").errors()
    }
    # a: 61 tokens in windows of 15 -> the last window (offset 60) has 1 + 1 tokens
    assert "window at token 60: 2 tokens" in errors[("a", 60)]
    # b has one window only, too short: the document is reported
    assert errors[("b", None)].startswith("11 tokens, but the ops' positions need at least 13")


def test_chunk_settings_that_cannot_work_are_named(tiny_dirs, tmp_path):
    spec = _spec(tiny_dirs, tmp_path, {"size": 1000})
    assert "data.chunk.size: 1000 tokens, but the model has 256 positions" in plan_problems(spec)
    spec = _spec(tiny_dirs, tmp_path, {"size": 16})
    spec["data"]["max_length"] = 64
    with pytest.raises(
        raysight.SpecError, match=r"data\.chunk .* cannot be used with data\.max_length"
    ):
        raysight.parse_spec(spec)
    spec["data"].pop("max_length")
    spec["data"]["chunk"]["sizee"] = 3
    with pytest.raises(raysight.SpecError, match="sizee"):
        raysight.parse_spec(spec)
