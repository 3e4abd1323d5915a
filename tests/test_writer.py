"""Writer and reader: dtypes (bfloat16 bit-exact), formats, layouts, plain readers, atomic files,
row groups sized in bytes, and resume of finished shards."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import PROMPTS, by_id, make_spec
from raysight.dataset.decode import decode
from raysight.writers.encode import ColumnInfo, arrow_field, encode_column
from raysight.writers.shard import ShardWriter
from reference import alone, first


@pytest.mark.parametrize("storage", ["typed", "bytes"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_round_trip_is_bit_exact(dtype, fmt, storage, tmp_path):
    g = torch.Generator().manual_seed(0)
    fixed = (torch.randn(5, 3, 4, generator=g) * 100).to(dtype)
    var = [(torch.randn(n, 6, generator=g) * 100).to(dtype) for n in (3, 1, 7, 2, 5)]
    name = str(dtype).removeprefix("torch.")
    cols = [
        ColumnInfo("fixed", name, (3, 4), storage=storage),
        ColumnInfo("var", name, (None, 6), storage=storage),
    ]
    schema = pa.schema([arrow_field(c) for c in cols])
    w = ShardWriter(tmp_path, 0, schema, fmt).start()
    batch = pa.RecordBatch.from_arrays(
        [encode_column(cols[0], fixed), encode_column(cols[1], var)], schema=schema
    )
    w.write(batch)
    path = w.commit()
    table = pq.read_table(path) if fmt == "parquet" else pa.ipc.open_file(str(path)).read_all()
    got_fixed = decode(table.column("fixed").combine_chunks(), name, [3, 4])
    got_var = decode(table.column("var").combine_chunks(), name, [None, 6])
    assert got_fixed.dtype == dtype
    assert torch.equal(
        got_fixed.view(torch.int16) if dtype == torch.bfloat16 else got_fixed,
        fixed.view(torch.int16) if dtype == torch.bfloat16 else fixed,
    )
    for a, b in zip(got_var, var):
        assert a.dtype == dtype and torch.equal(a.float(), b.float())
    # A slice starts at a non-zero offset in the same buffers.
    part = decode(table.column("var").combine_chunks().slice(2, 2), name, [None, 6])
    assert [torch.equal(a.float(), b.float()) for a, b in zip(part, var[2:4])] == [True, True]
    part = decode(table.column("fixed").combine_chunks().slice(3), name, [3, 4])
    assert torch.equal(part.float(), fixed[3:].float())
    f = table.schema.field("fixed")
    assert f.metadata[b"raysight.dtype"].decode() == name
    as_bytes = storage == "bytes" or dtype == torch.bfloat16
    assert f.metadata[b"raysight.storage"].decode() == ("bytes" if as_bytes else "typed")
    if not as_bytes:  # plain pyarrow recovers the shape from the type: a list per dimension
        arr = table.column("fixed").combine_chunks()
        shape, typ = [len(arr)], arr.type
        while pa.types.is_fixed_size_list(typ):
            shape, typ = [*shape, typ.list_size], typ.value_type
        assert shape == [5, 3, 4]
        assert np.array_equal(arr.flatten().flatten().to_numpy().reshape(shape), fixed.numpy())
    elif dtype != torch.bfloat16:  # a plain reader needs only numpy and the metadata
        raw = b"".join(table.column("fixed").to_pylist())
        nd = np.frombuffer(raw, dtype=str(dtype).removeprefix("torch.")).reshape(-1, 3, 4)
        assert np.array_equal(nd, fixed.numpy())


def test_datasets_written_with_arrows_tensor_extension_still_decode():
    """Before nested lists, fixed shapes were Arrow's fixed_shape_tensor (one flat list)."""
    x = torch.arange(24, dtype=torch.float32).reshape(4, 2, 3)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1).numpy()), 6)
    old = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), [2, 3]), storage)
    assert torch.equal(decode(old, "float32", [2, 3]), x)
    assert torch.equal(decode(old.slice(1, 2), "float32", [2, 3]), x[1:3])


def test_failed_shard_leaves_no_file_and_temp_files_are_hidden(tmp_path):
    col = ColumnInfo("x", "float32", (2,))
    schema = pa.schema([arrow_field(col)])
    done = ShardWriter(tmp_path, 0, schema).start()
    done.write(pa.RecordBatch.from_arrays([encode_column(col, torch.ones(3, 2))], schema=schema))
    done.commit()
    w = ShardWriter(tmp_path, 1, schema).start()
    w.write(pa.RecordBatch.from_arrays([encode_column(col, torch.ones(3, 2))], schema=schema))
    assert w.tmp.name.startswith(".")
    assert pq.read_table(tmp_path).num_rows == 3  # the unfinished file is invisible to readers
    w.fail()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_row_groups_are_sized_in_bytes(tmp_path):
    col = ColumnInfo("x", "float32", (256,))  # 1 KiB a row
    schema = pa.schema([arrow_field(col)])
    w = ShardWriter(tmp_path, 0, schema, row_group_bytes=64 * 1024).start()
    for _ in range(10):
        w.write(
            pa.RecordBatch.from_arrays([encode_column(col, torch.ones(20, 256))], schema=schema)
        )
    meta = pq.ParquetFile(w.commit()).metadata
    assert meta.num_rows == 200
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert all(s >= 64 for s in sizes[:-1]) and max(sizes) <= 80, sizes


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_background_writer_writes_the_same_rows_in_order(fmt, tmp_path):
    col = ColumnInfo("x", "float16", (256,))
    schema = pa.schema([arrow_field(col)])
    data = torch.randn(200, 256).half()
    paths = []
    for shard, background in ((0, False), (1, True)):
        w = ShardWriter(tmp_path, shard, schema, fmt, row_group_bytes=2**16, background=background)
        w.start()
        for chunk in data.split(20):
            w.write(pa.RecordBatch.from_arrays([encode_column(col, chunk)], schema=schema))
        paths.append(w.commit())
    read = [
        pq.read_table(p) if fmt == "parquet" else pa.ipc.open_file(str(p)).read_all() for p in paths
    ]
    assert read[0].equals(read[1])
    assert torch.equal(decode(read[1].column("x").combine_chunks(), "float16", [256]), data)


def test_background_writer_error_reaches_the_caller_and_leaves_no_file(tmp_path, monkeypatch):
    col = ColumnInfo("x", "float32", (256,))
    schema = pa.schema([arrow_field(col)])
    w = ShardWriter(tmp_path, 0, schema, row_group_bytes=2**16, background=True).start()

    def broken(batches):
        raise OSError("disk full")

    monkeypatch.setattr(w, "_write_group", broken)
    batch = pa.RecordBatch.from_arrays([encode_column(col, torch.ones(80, 256))], schema=schema)
    w.write(batch)  # fills a row group: handed to the thread, which fails
    with pytest.raises(OSError, match="disk full"):
        w.write(batch)
        w.commit()
    w.fail()
    assert list(tmp_path.iterdir()) == []


def test_per_token_layout_drops_padding_and_matches_per_sequence(tiny_dirs, tiny_models, run_spec):
    _, tok = tiny_models["llama"]
    ops = [{"save": "layers.1.output", "as": "h"}]
    seq = run_spec(make_spec(tiny_dirs["llama"], None, ops))
    tokd = run_spec(
        make_spec(
            tiny_dirs["llama"],
            None,
            ops,
            output={"layout": "per_token", "format": "arrow", "include_text": True},
        )
    )
    t = tokd.table()
    total = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert t.num_rows == total
    per_seq = by_id(seq, "h")
    vals = tokd.to_torch("h")
    ids, pos, tid = (t.column(c).to_pylist() for c in ("example_id", "position", "token_id"))
    for r in range(t.num_rows):
        torch.testing.assert_close(vals[r], per_seq[ids[r]][pos[r]], atol=1e-6, rtol=0)
        assert tid[r] == tok(PROMPTS[ids[r]])["input_ids"][pos[r]]
    # the prompt once per example, on its first row (position 0), not on every token row
    text = t.column("text").to_pylist()
    for r in range(t.num_rows):
        assert text[r] == (PROMPTS[ids[r]] if pos[r] == 0 else None)


def test_plain_readers_understand_the_files(tiny_dirs, run_spec):
    ds = run_spec(
        make_spec(
            tiny_dirs["gpt2"],
            None,
            [
                {"save": "layers.1.output", "positions": [-1], "as": "last"},
                {"save": "layers.1.output", "as": "full"},
            ],
        )
    )
    root = ds.path
    t = pq.read_table(root)
    assert t.num_rows == len(PROMPTS)
    assert t.schema.field("last").type == pa.list_(pa.list_(pa.float32(), 32), 1)
    df = pl.read_parquet(f"{root}/*.parquet")
    assert df.height == len(PROMPTS) and df["full"].dtype == pl.List(pl.Array(pl.Float32, 32))
    assert df["last"].dtype == pl.Array(pl.Float32, (1, 32))
    assert df["last"].to_numpy().shape == (len(PROMPTS), 1, 32)
    ref = ds.to_torch("last")
    ids = ds.table(["example_id"]).column(0).to_pylist()
    assert np.array_equal(df.sort("example_id")["last"].to_numpy(), ref[np.argsort(ids)].numpy())
    n = duckdb.sql(f"select count(*), sum(len(\"full\")) from '{root}/*.parquet'").fetchall()[0]
    assert n[0] == len(PROMPTS) and n[1] == sum(ds.table(["n_tokens"]).column(0).to_pylist())
    assert ds.polars().height == len(PROMPTS) and len(ds.pandas()) == len(PROMPTS)


def test_bfloat16_saves_are_bit_exact(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["gpt2"]
    ds = run_spec(
        make_spec(
            tiny_dirs["gpt2"],
            None,
            [{"save": "layers.1.output", "dtype": "bfloat16", "as": "h"}],
            prompts=[PROMPTS[0]],
        )
    )
    got = ds.to_torch("h")[0]
    ref = first(alone(model, tok, PROMPTS[0], capture={"h": "transformer.h.1"})[0]["h"])[0]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.view(torch.int16), ref.to(torch.bfloat16).view(torch.int16))
    assert json.loads(pq.read_schema(ds.files[0]).field("h").metadata[b"raysight.shape"]) == [
        None,
        32,
    ]


def test_resume_runs_only_unfinished_shards(tiny_dirs, tmp_path):
    import raysight

    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [{"save": "layers.0.output", "as": "h"}],
        execution={"shard_rows": 3},
    )
    logs = []
    raysight.run(spec, log=logs.append)
    files = sorted((tmp_path / "o").glob("part-*"))
    assert len(files) == 4  # 10 rows in shards of 3
    before = raysight.open(tmp_path / "o").to_torch("h")
    files[2].unlink()
    logs.clear()
    raysight.run(spec, log=logs.append)
    assert any("4 shard(s), 1 to run" in m for m in logs) and any("shard 2 done" in m for m in logs)
    after = raysight.open(tmp_path / "o").to_torch("h")
    assert len(after) == len(before) == len(PROMPTS)
    for a, b in zip(after, before):
        assert torch.equal(a, b)
    logs.clear()
    stale = tmp_path / "o" / ".part-00001.parquet.999.tmp"  # as a killed run would leave it
    stale.write_bytes(b"partial")
    raysight.run(spec, log=logs.append)
    assert any("0 to run" in m for m in logs) and not stale.exists()
    manifest = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert sum(s["examples"] for s in manifest["shards"].values()) == len(PROMPTS)
    assert np.all([s["status"] == "done" for s in manifest["shards"].values()])


def test_a_different_shard_size_is_a_different_dataset(tiny_dirs, tmp_path):
    """Shard boundaries decide which rows a file holds: mixing two sizes would duplicate rows."""
    import raysight
    from raysight.engine.run import OutputError

    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [{"save": "layers.0.output"}],
        execution={"shard_rows": 3},
    )
    raysight.run(spec, log=lambda _: None)
    spec["execution"]["shard_rows"] = 4
    with pytest.raises(OutputError, match="different spec"):
        raysight.run(spec, log=lambda _: None)
    spec["execution"] = {"runner": "local", "shard_rows": 3, "batch_tokens": 99}
    raysight.run(spec, log=lambda _: None)  # batching does not change results: same dataset


def test_a_retried_shard_removes_only_its_own_dead_attempts_file(tmp_path):
    col = ColumnInfo("x", "float32", (2,))
    schema = pa.schema([arrow_field(col)])
    dead_same = tmp_path / ".part-00003.parquet.111.tmp"
    other = tmp_path / ".part-00004.parquet.222.tmp"
    dead_same.write_bytes(b"partial")
    other.write_bytes(b"partial")
    w = ShardWriter(tmp_path, 3, schema).start()
    assert not dead_same.exists() and other.exists()
    w.fail()
