"""The self-check reruns sampled rows of every shard alone and unpadded and compares every saved
value with the batched result: it must catch a broken padding path (nnsight #672: left padding
without position_ids), and stay quiet and cheap on a correct run."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

import raysight
from conftest import make_spec
from raysight.cli import main
from raysight.dataset.verify import verify
from raysight.engine import worker
from raysight.engine.run import RunFailed
from raysight.engine.selfcheck import pick

OPS = [{"save": "layers.1.output", "positions": [-1], "as": "h"}, {"save": "logits", "as": "lg"}]


def test_a_correct_run_records_its_self_check(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "o"
    spec = make_spec(tiny_dirs["gpt2"], out, OPS, execution={"shard_rows": 5, "max_padding": 1})
    raysight.run(spec, log=lambda _: None)
    shards = json.loads((out / "_manifest.json").read_text())["shards"].values()
    assert [s["self_check"]["samples"] for s in shards] == [2, 2]
    assert [s["self_check"]["rows"] for s in shards] == [2, 2]
    assert all(s["self_check"]["max_abs_diff"] < 1e-4 for s in shards)
    assert main(["inspect", str(out)]) == 0
    assert "self-check 4 sample(s) in 2 shard(s)" in capsys.readouterr().out
    assert verify(out) == []


def test_a_padding_path_without_position_ids_fails_the_shard(tiny_dirs, tmp_path, monkeypatch):
    """Drop the position_ids of every padded batch, as nnsight #672 did: left-padded rows of an
    absolute-position model (GPT-2) now see shifted positions, silently without the self-check.
    (Rotary models such as Llama are shift-invariant, so they are not hurt by this bug.)"""
    real = worker.collate

    def broken(*args, **kwargs):
        batch = real(*args, **kwargs)
        inputs = {k: v for k, v in batch.inputs.items() if k != "position_ids"}
        return replace(batch, inputs=inputs)

    monkeypatch.setattr(worker, "collate", broken)
    ex = {"max_padding": 1, "max_retries": 0}
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "silent", OPS, execution={**ex, "self_check": 0})
    raysight.run(spec, log=lambda _: None)  # wrong, and nothing says so
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "checked", OPS, execution=ex)
    with pytest.raises(RunFailed) as e:
        raysight.run(spec, log=lambda _: None)
    msg = str(e.value)
    assert re.search(r"self-check: row \d+, column h: max \|batched - alone\| = \d", msg), msg
    assert "the batch changed this row's values" in msg
    assert not list((tmp_path / "checked").glob("*part-*"))  # nothing unchecked was written


def test_pick_takes_the_shortest_and_spreads_the_rest():
    assert pick([5, 3, 9, 3, 7], 1) == [1]
    assert pick([5, 3, 9, 3, 7], 3) == [1, 3, 4]
    assert pick([4, 4], 5) == [0, 1]
    assert pick([4], 0) == [] and pick([], 2) == []
