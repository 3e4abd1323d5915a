"""Decoded tokens: every column of vocabulary ids has a sibling column of strings, each equal to
HF's own ``tokenizer.decode([id])`` of the id beside it (decoded here one id at a time, in a
Python loop, independently of the writer's table lookup)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from transformers import AutoTokenizer

from conftest import PROMPTS, make_spec, plan_problems


def _decode(tok, i: int) -> str:
    return tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _same_strings(tok, ids, strings) -> None:
    """``strings`` mirrors ``ids`` (nested python lists) element by element."""
    if isinstance(ids, list):
        assert isinstance(strings, list) and len(ids) == len(strings)
        for a, b in zip(ids, strings):
            _same_strings(tok, a, b)
    else:
        assert strings == _decode(tok, ids), (ids, strings)


def test_lens_argmax_inputs_per_sequence(tiny_dirs, run_spec):
    tok = AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])
    ops = [
        {"save": "logits", "positions": [-2, -1], "reduce": {"topk": 3}, "as": "lens"},
        {"save": "logits", "reduce": "argmax", "as": "next"},  # every token: a list per row
        {"save": "transformer.h.0.output", "reduce": "argmax", "as": "hidden"},  # not vocab
    ]
    ds = run_spec(make_spec(tiny_dirs["gpt2"], None, ops))
    t = ds.table()
    names = t.column_names
    assert names.index("lens_tokens") == names.index("lens_ids") + 1
    assert "hidden_tokens" not in names  # an argmax over the hidden size is not a token
    for ids_col, str_col in [("lens_ids", "lens_tokens"), ("next", "next_tokens")]:
        ids = [torch.as_tensor(r).tolist() for r in ds.to_torch(ids_col)]
        _same_strings(tok, ids, t.column(str_col).to_pylist())
    _same_strings(tok, t.column("input_ids").to_pylist(), t.column("input_tokens").to_pylist())
    assert t.schema.field("lens_tokens").type == pa.list_(pa.list_(pa.large_string(), 3), 2)
    assert t.schema.field("lens_tokens").metadata == {b"raysight.decodes": b"lens_ids"}
    # the input tokens spell the prompt back (a character tokenizer)
    rows = zip(t.column("example_id").to_pylist(), t.column("input_tokens").to_pylist())
    text = {i: "".join(s) for i, s in rows}
    assert text == {i: p for i, p in enumerate(PROMPTS) if len(p) >= 2}  # "a": too short


def test_per_token_and_off(tiny_dirs, run_spec):
    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    ops = [{"save": "logits", "reduce": {"topk": 2}, "as": "top"}]
    ds = run_spec(make_spec(tiny_dirs["llama"], None, ops, output={"layout": "per_token"}))
    t = ds.table()
    _same_strings(tok, t.column("token_id").to_pylist(), t.column("token").to_pylist())
    assert "<s>" in t.column("token").to_pylist()  # the BOS shows as itself
    ids = [torch.as_tensor(r).tolist() for r in ds.to_torch("top_ids")]
    _same_strings(tok, ids, t.column("top_tokens").to_pylist())
    off = run_spec(make_spec(tiny_dirs["llama"], None, ops, output={"decode_tokens": False}))
    assert {"input_tokens", "top_tokens"}.isdisjoint(off.table().column_names)


def test_generated_tokens(tiny_dirs, run_spec):
    tok = AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])
    ops = [{"save": "logits", "positions": [-1], "reduce": "argmax", "steps": "1:", "as": "pick"}]
    spec = make_spec(tiny_dirs["gpt2"], None, ops, generate={"max_new_tokens": 4})
    t = run_spec(spec).table()
    gen = t.column("generated_ids").to_pylist()
    _same_strings(tok, gen, t.column("generated_tokens").to_pylist())
    assert t.column_names.index("generated_tokens") == t.column_names.index("generated_ids") + 1
    picks = t.column("pick").to_pylist()
    _same_strings(tok, picks, t.column("pick_tokens").to_pylist())


def test_a_save_may_not_take_a_strings_name(tiny_dirs):
    ops = [
        {"save": "logits", "reduce": {"topk": 2}, "as": "lens"},
        {"save": "transformer.h.0.output", "as": "lens_tokens"},
    ]
    msg = plan_problems(make_spec(tiny_dirs["gpt2"], None, ops))
    assert "ops.1: column 'lens_tokens' is also written by ops.0" in msg, msg
    msg = plan_problems(make_spec(tiny_dirs["gpt2"], None, [{"save": "logits", "as": "token"}]))
    assert "ops.0: column 'token' is an identity column" in msg, msg


def test_logits_wider_than_the_tokenizer():
    """A logit width padded past the vocabulary: the ids the tokenizer lacks are empty."""
    import tiny
    from raysight.writers.tokens import token_strings

    tok = tiny.char_tokenizer()
    n = len(tok)
    out = token_strings(tok, torch.tensor([[n - 1, n + 3]]), (2,)).to_pylist()
    assert out == [[_decode(tok, n - 1), ""]]
    with pytest.raises(ValueError, match="negative"):
        token_strings(tok, torch.tensor([-1]), ())
