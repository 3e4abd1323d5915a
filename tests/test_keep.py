"""data.keep: input columns carried into the output, checked against the input file itself."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch

import raysight
from conftest import PROMPTS, make_spec, plan_problems
from raysight.spec import SpecError, parse_spec


def _input(tmp_path, drop_label_at: int | None = None):
    path = tmp_path / "in.jsonl"
    records = []
    for i, text in enumerate(PROMPTS):
        rec = {"id": f"r{i}", "text": text, "label": i % 3, "split": ["a", "b"][i % 2]}
        rec["score"] = i / 4
        if i == drop_label_at:
            del rec["label"]
        records.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, {r["id"]: r for r in records}


def _spec(tiny_dirs, src, **sections):
    spec = make_spec(tiny_dirs["gpt2"], None, [{"save": "layers.0.output", "as": "h"}], **sections)
    spec["data"] = {"source": str(src), "id_field": "id", "keep": ["label", "split", "score"]}
    return spec


@pytest.mark.parametrize("layout", ["per_sequence", "per_token"])
def test_kept_columns_are_the_inputs(tiny_dirs, run_spec, tmp_path, layout):
    src, records = _input(tmp_path)
    ds = run_spec(_spec(tiny_dirs, src, output={"layout": layout}))
    t = ds.table()
    assert t.schema.names[1:4] == ["label", "split", "score"]  # right after the id
    assert t.schema.field("label").type == pa.int64()
    assert t.schema.field("split").type == pa.large_string()
    for row in t.select(["example_id", "label", "split", "score"]).to_pylist():
        rec = records[row["example_id"]]
        assert (row["label"], row["split"], row["score"]) == (
            rec["label"],
            rec["split"],
            rec["score"],
        )
    if layout == "per_token":  # every token of a row carries it (a character tokenizer)
        ids = t.column("example_id").to_pylist()
        assert [ids.count(f"r{i}") for i in range(len(PROMPTS))] == [len(p) for p in PROMPTS]


def test_a_row_without_the_column_is_a_row_error(tiny_dirs, run_spec, tmp_path):
    src, _ = _input(tmp_path, drop_label_at=4)
    ds = run_spec(_spec(tiny_dirs, src))
    assert [e["example_id"] for e in ds.errors()] == ["r4"]
    assert ds.errors()[0]["reason"] == "no field 'label' (data.keep)"
    assert "r4" not in ds.table(["example_id"]).column(0).to_pylist()


def test_names_and_types_are_checked(tiny_dirs, tmp_path):
    src, _ = _input(tmp_path)
    spec = _spec(tiny_dirs, src)
    spec["data"]["keep"] = ["label", "text", "label"]
    with pytest.raises(SpecError) as e:
        parse_spec({**spec, "output": {"path": "x"}})
    assert "data.keep names a column twice" in str(e.value)
    spec["data"]["keep"] = ["text"]
    with pytest.raises(SpecError, match=r"data\.keep: 'text' is an identity column"):
        parse_spec({**spec, "output": {"path": "x"}})
    spec = _spec(tiny_dirs, src)
    spec["ops"].append({"save": "layers.1.output", "as": "label"})
    assert "ops.1: column 'label' is an identity column, sweep axis or data.keep" in plan_problems(
        spec
    )
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a b", "label": 1}\n{"text": "c d", "label": "x"}\n')
    spec = make_spec(tiny_dirs["gpt2"], None, [{"save": "layers.0.output", "as": "h"}])
    spec["data"] = {"source": str(mixed), "keep": ["label"]}
    with pytest.raises(raysight.RaysightError, match="column 'label' has values of different"):
        raysight.run({**spec, "output": {"path": str(tmp_path / "o")}}, log=lambda _: None)


def test_per_token_rows_of_special_tokens_can_be_dropped(tiny_dirs, tiny_models, run_spec):
    from reference import alone, first

    model, tok = tiny_models["llama"]  # its tokenizer puts <s> first
    ops = [{"save": "layers.0.output", "as": "h"}]
    out = {"layout": "per_token", "special_tokens": "drop", "include_text": True}
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, output=out))
    t = ds.table(["example_id", "position", "token_id", "token", "text"])
    assert "<s>" not in t.column("token").to_pylist()
    assert tok.bos_token_id not in t.column("token_id").to_pylist()
    rows = t.to_pylist()
    h = ds.to_torch("h")
    for i, prompt in enumerate(PROMPTS):
        mine = [k for k, r in enumerate(rows) if r["example_id"] == i]
        assert sorted(rows[k]["position"] for k in mine) == list(range(1, len(prompt) + 1))
        # the text on the first row written (position 1: the BOS row was dropped)
        assert [rows[k]["text"] for k in mine] == [prompt] + [None] * (len(mine) - 1)
        cap, _ = alone(model, tok, prompt, capture={"h": "model.layers.0"})
        ref = first(cap["h"])[0]  # [1 + len(prompt), hidden]: BOS first
        for k in mine:
            assert torch.allclose(h[k], ref[rows[k]["position"]], rtol=1e-4, atol=1e-5)
    with pytest.raises(SpecError, match="it needs layout per_token"):
        parse_spec(make_spec(tiny_dirs["llama"], "x", ops, output={"special_tokens": "drop"}))
