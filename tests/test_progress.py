"""Progress: counted per batch, rates from the first batch on (start-up left out), generated
tokens counted, failures shown under -q; and the CLI's -q / -v."""

from __future__ import annotations

import logging

import pytest

from conftest import make_spec
from raysight.engine.progress import Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_rates_leave_the_start_up_out_and_batches_count():
    clock, lines = Clock(), []
    p = Progress({0: 100, 1: 100}, lines.append, clock=clock, every=10)
    clock.t = 60.0  # a minute of start-up before the first batch
    p.batch(0, 1, 10, tokens=500, generated=0)
    assert p.rates() == (None, None) and p.rows == 10
    assert len(lines) == 1 and "10/200 rows, - tokens/s" in lines[0]  # it has started
    clock.t = 65.0
    p.batch(0, 5, 10, tokens=2500, generated=0)
    rows_s, tokens_s = p.rates()
    assert rows_s == pytest.approx(40 / 5) and tokens_s == pytest.approx(2000 / 5)
    assert "ETA 0:18" in p.line()  # 150 rows left at 8 rows/s, not at 50 rows / 65 s
    assert len(lines) == 1  # off a terminal, a line at most every `every` seconds
    clock.t = 71.0
    p.tick()
    assert len(lines) == 2 and "50/200 rows, 182 tokens/s" in lines[1]  # 2000 tokens in 11 s
    p.shard_done(0, 98, 5000, 2)  # the shard's own count replaces its batches
    assert p.rows == 100 and "shard 0 done" in lines[-1]
    p.batch(0, 10, 10, 5000, 0)  # a late report of a finished shard changes nothing
    assert p.rows == 100


def test_generated_tokens_and_failures():
    clock, lines, warnings = Clock(), [], []
    p = Progress({0: 4, 1: 4}, lines.append, generating=True, clock=clock, warn=warnings.append)
    p.batch(0, 2, 4, tokens=20, generated=16)
    p.shard_done(0, 4, 40, 0, generated=32)
    assert "32 generated" in lines[-1]
    p.shard_failed(1, "boom")
    assert warnings and "shard 1 FAILED: boom" in warnings[-1] and "1 failed" in warnings[-1]
    assert warnings[-1].endswith("ETA -")  # a failed shard's rows are not still to come


class Bar:  # the tqdm calls Progress makes, recorded
    n, postfix = 0, ""

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def refresh(self):
        pass


def test_start_up_says_what_it_is_doing_until_the_first_batch():
    lines = []
    p = Progress({0: 10, 1: 10}, lines.append, clock=Clock())
    p.stage("loading the model in 2 actor(s)")  # off a terminal: a line
    assert lines == ["  loading the model in 2 actor(s)"]
    p.bar = bar = Bar()
    p.stage("loading the model in 2 actor(s)")
    assert bar.postfix == "0/2 shards, loading the model in 2 actor(s)…"
    p.batch(1, 0, 5, 0, 0)  # a replica began shard 1: its model is loaded
    assert bar.postfix == "0/2 shards, 1 shard(s) begun, running the first batch…"
    assert p.rows == 0 and p.steady is None  # no rows yet, and the rates start later
    p.batch(1, 1, 5, 100, 0)
    assert bar.n == 2 and bar.postfix == "0/2 shards, - tok/s, ETA -"


def _run_cli(args, tiny_dirs, tmp_path, capsys):
    import yaml

    from raysight.cli import main

    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "logits", "positions": [-1]}])
    tmp_path.mkdir()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    try:
        rc = main(["run", str(path), *args])
    finally:
        logging.getLogger("raysight").setLevel(logging.INFO)
    return rc, capsys.readouterr().err


def test_quiet_and_verbose(tiny_dirs, tmp_path, capsys):
    rc, err = _run_cli(["-q"], tiny_dirs, tmp_path / "q", capsys)
    assert rc == 0 and err == ""
    rc, err = _run_cli([], tiny_dirs, tmp_path / "n", capsys)
    assert rc == 0 and "shard 0 done" in err and "raysight: done." in err
    assert "forward" not in err  # no stage times at the normal level
    rc, err = _run_cli(["-v"], tiny_dirs, tmp_path / "v", capsys)
    assert rc == 0 and "shard 0: " in err and "forward" in err
