"""Readers that stream: batches of chosen columns and rows, filters pushed down, torch batches,
to_torch without a multiple of its result in memory, Ray Data for both file formats, and an
unknown column that names the ones there are. The reference is plain pyarrow over the files."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

import raysight
from conftest import PROMPTS, make_spec
from raysight.dataset.reader import UnknownColumn

OPS = [
    {"save": "layers.1.output", "positions": [-1], "as": "last"},
    {"save": "layers.0.output", "as": "h"},  # one [tokens, d] value per row
]


@pytest.fixture(scope="module")
def dataset(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "o"
    prompts = [f"{p} {i}" for i in range(3) for p in PROMPTS]  # 30 rows
    spec = make_spec(tiny_dirs["gpt2"], out, OPS, prompts=prompts, execution={"shard_rows": 7})
    raysight.run(spec, log=lambda _: None)
    ds = raysight.open(out)
    whole = pa.concat_tables(pq.read_table(f) for f in ds.files)  # plain pyarrow, shard order
    return ds, whole


def test_batches_of_columns_rows_and_filters_are_slices_of_the_files(dataset):
    ds, whole = dataset
    for rows, batch_rows in [(None, 4), (range(3, 26), 5), (slice(10, None), 64), (range(0, 0), 3)]:
        batches = list(ds.iter_batches(["example_id", "last"], rows=rows, batch_rows=batch_rows))
        got = pa.Table.from_batches(batches, schema=ds.schema_of(["example_id", "last"]))
        lo = 0 if rows is None else rows.start or 0
        hi = whole.num_rows if rows is None or rows.stop is None else rows.stop
        want = whole.select(["example_id", "last"]).slice(lo, hi - lo)
        assert got.equals(want.cast(got.schema)), rows
        assert all(
            b.num_rows <= batch_rows for b in ds.iter_batches(["n_tokens"], batch_rows=batch_rows)
        )
    expr = (pc.field("n_tokens") > 10) & (pc.bit_wise_and(pc.field("example_id"), 1) == 0)
    got = ds.table(["example_id", "n_tokens"], filter=expr)
    mask = pc.and_(
        pc.greater(whole["n_tokens"], 10), pc.equal(pc.bit_wise_and(whole["example_id"], 1), 0)
    )
    assert got.column("example_id").to_pylist() == whole.filter(mask)["example_id"].to_pylist()
    assert got.num_rows > 0
    first_two = pa.Table.from_batches(
        list(ds.iter_batches(["example_id"], rows=range(0, 2), filter=expr))
    )
    assert first_two.column(0).to_pylist() == got.column("example_id").to_pylist()[:2]
    some = ds.table(["example_id"], rows=range(8, 20))  # crosses shards of 7 rows
    assert some.column(0).to_pylist() == whole["example_id"].to_pylist()[8:20]


def test_torch_batches_and_to_torch_agree_with_the_files(dataset):
    ds, whole = dataset
    last = ds.to_torch("last")
    assert last.shape == (30, 1, 32)
    ref = torch.tensor(
        whole["last"].combine_chunks().flatten().flatten().to_numpy().reshape(30, 1, 32)
    )
    assert torch.equal(last, ref)
    assert torch.equal(ds.to_torch("last", rows=range(5, 12)), ref[5:12])
    seen = 0
    for b in ds.iter_torch(["example_id", "h", "last"], batch_rows=8):
        n = len(b["example_id"])
        assert b["last"].shape == (n, 1, 32) and len(b["h"]) == n
        assert torch.equal(b["last"], ref[seen : seen + n])
        assert all(
            h.shape[0] == t for h, t in zip(b["h"], whole["n_tokens"].to_pylist()[seen : seen + n])
        )
        seen += n
    assert seen == 30
    ids = ds.to_torch("example_id", filter=pc.field("example_id") < 5)
    assert sorted(ids.tolist()) == [0, 1, 2, 3, 4]


def test_an_unknown_column_names_the_columns_there_are(dataset):
    ds, _ = dataset
    for call in (
        lambda: ds.to_torch("lsat"),
        lambda: ds.table(["example_id", "lsat"]),
        lambda: next(ds.iter_batches(["lsat"])),
    ):
        with pytest.raises(
            UnknownColumn,
            match=r"no column 'lsat'; the columns are example_id, n_tokens, input_ids, "
            r"input_tokens, last, h",
        ):
            call()


@pytest.mark.slow
def test_to_torch_peaks_near_its_result(tiny_dirs, tmp_path):
    """Peak RSS while reading a 192 MiB column, in a fresh process: at most 1.3x the result above
    what the process held before (the old reader held the table, its combined copy and the
    tensor: 3x and more; docs/benchmarks.md section 9)."""
    xs = [[float(i)] + [0.0] * 7 for i in range(12288)]  # -> 12288 x 4096 float32 = 192 MiB
    out = tmp_path / "big"
    spec = {
        "model": {"factory": "tiny:wide", "factory_kwargs": {"width": 4096}},
        "data": {"prompts": [{"x": x} for x in xs], "input_field": "x"},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": str(out), "row_group_bytes": 4 * 2**20},
        "execution": {"runner": "local", "shard_rows": 4096, "self_check": 0},
    }
    raysight.run(spec, log=lambda _: None, allow_code=True)
    del xs, spec
    code = (
        "import gc, sys, raysight\n"
        "def vm(key):\n"
        "    line = next(x for x in open('/proc/self/status') if x.startswith(key))\n"
        "    return int(line.split()[1]) * 1024\n"
        "ds = raysight.open(sys.argv[1])\n"
        "ds.to_torch('y', rows=range(0, 1))  # one-time costs (pyarrow's dataset machinery)\n"
        "gc.collect()\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) starts again here\n"
        "before = vm('VmRSS')\n"
        "t = ds.to_torch('y')\n"
        "print((vm('VmHWM') - before) / t.nbytes, t.shape[0], float(t[100, 0]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True
    )
    ratio, n, value = proc.stdout.split()
    assert int(n) == 12288 and float(value) == 201.0
    assert float(ratio) <= 1.3, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_ray_data_reads_both_formats(ray_local, tiny_dirs, tmp_path, fmt):
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / fmt,
        OPS[:1],
        output={"format": fmt},
        execution={"shard_rows": 4},
    )
    raysight.run(spec, log=lambda _: None)
    rd = raysight.open(tmp_path / fmt).ray()
    rows = rd.take_all()
    assert sorted(r["example_id"] for r in rows) == list(range(len(PROMPTS)))
    assert rows[0]["last"].shape == (1, 32)
