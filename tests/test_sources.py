"""Input that streams: data.source as a file, directory, glob, list or URI in every format, read
shard by shard by the workers from metadata-defined ranges, never held by the driver.

The reference for every format is the list of prompts the test wrote, not raysight's output."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import zstandard

import raysight
from conftest import make_spec
from raysight.data import readers
from raysight.data.readers import read_range
from raysight.data.sources import DataError, open_source
from raysight.dataset.verify import verify

OPS = [{"save": "layers.0.output", "positions": [-1], "as": "h"}]
TEXTS = [f"prompt number {i} " + "word " * (i % 7) for i in range(23)]


def _jsonl(texts, start=0):
    return "".join(
        json.dumps({"id": f"r{start + i}", "text": t}) + "\n" for i, t in enumerate(texts)
    )


def _table(texts, start=0):
    n = len(texts)
    return pa.table(
        {
            "id": [f"r{start + i}" for i in range(n)],
            "text": texts,
            "unused": [list(range(50))] * n,  # a column the spec never reads
        }
    )


def _write_sources(root):
    """The same 23 rows (ids r0..r22) in every layout a corpus comes in."""
    chunks = [TEXTS[:9], TEXTS[9:10], TEXTS[10:]]
    starts = [0, 9, 10]
    src = {}
    (root / "one.jsonl").write_text(_jsonl(TEXTS))
    src["one jsonl"] = str(root / "one.jsonl")
    d = root / "pq"
    d.mkdir()
    for k, (c, s) in enumerate(zip(chunks, starts)):
        pq.write_table(_table(c, s), d / f"part-{k}.parquet", row_group_size=4)
    (d / "_SUCCESS").write_text("")  # a marker file that readers skip
    src["parquet directory"] = str(d)
    g = root / "gz"
    g.mkdir()
    for k, (c, s) in enumerate(zip(chunks, starts)):
        (g / f"shard-{k}.jsonl.gz").write_bytes(gzip.compress(_jsonl(c, s).encode()))
    src["glob of .jsonl.gz"] = str(g / "shard-*.jsonl.gz")
    (root / "a.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(_jsonl(chunks[0]).encode())
    )
    (root / "b.jsonl").write_text(_jsonl(chunks[1], 9))
    pq.write_table(_table(chunks[2], 10), root / "c.parquet")
    src["list of zst, jsonl, parquet"] = [
        str(root / "a.jsonl.zst"),
        str(root / "b.jsonl"),
        str(root / "c.parquet"),
    ]
    with ipc.new_file(str(root / "rows.arrow"), _table(TEXTS).schema) as w:
        for c, s in zip(chunks, starts):
            w.write_table(_table(c, s))
    src["arrow file"] = str(root / "rows.arrow")
    import datasets

    datasets.Dataset.from_dict({"id": [f"r{i}" for i in range(23)], "text": TEXTS}).save_to_disk(
        str(root / "hf"), num_shards=2
    )
    src["HF save_to_disk"] = str(root / "hf")
    src["file:// URI"] = f"file://{root / 'one.jsonl'}"
    src["file:// directory"] = f"file://{d}"
    return src


def test_every_source_layout_gives_the_same_rows(tiny_dirs, tmp_path):
    sources = _write_sources(tmp_path)
    for label, source in sources.items():
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        spec = make_spec(tiny_dirs["gpt2"], out, OPS, output={"include_text": True})
        # shards of 5 rows cross file boundaries and row groups
        spec["data"] = {"source": source, "id_field": "id"}
        spec["execution"]["shard_rows"] = 5
        raysight.run(spec, log=lambda _: None)
        assert verify(out) == [], label
        t = raysight.open(out).table(["example_id", "text"])
        got = dict(zip(t.column("example_id").to_pylist(), t.column("text").to_pylist()))
        assert got == {f"r{i}": text for i, text in enumerate(TEXTS)}, label


def test_a_shard_reads_its_own_range_by_seeking(tmp_path):
    lines = [json.dumps({"text": f"line {i}"}) for i in range(100)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:57]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[57:]))  # no newline at the end
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b""))  # an empty file
    spec = raysight.parse_spec(
        {
            "model": {"path": "unused"},
            "data": {"source": str(tmp_path)},
            "ops": OPS,
            "output": {"path": "unused"},
        }
    ).data
    src = open_source(spec.source, stride=4)  # an offset every 4 lines: most ranges seek
    assert src.total == 100 and [f.rows for f in src.files] == [57, 43, 0]
    assert len(src.files[0].offsets) == 57 // 4 + 1 and not src.files[2].offsets
    rng = random.Random(0)
    for _ in range(60):
        lo = rng.randrange(0, 100)
        hi = rng.randrange(lo, 101)
        rows, errors = read_range(spec, src, lo, hi)
        assert not errors
        assert [r.payload for r in rows] == [f"line {i}" for i in range(lo, hi)]
        assert [r.index for r in rows] == list(range(lo, hi))


def test_only_the_columns_the_spec_needs_are_read(tiny_dirs, tmp_path, monkeypatch):
    pq.write_table(_table(TEXTS), tmp_path / "in.parquet", row_group_size=5)
    asked = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS)
    spec["data"] = {"source": str(tmp_path / "in.parquet"), "id_field": "id"}
    raysight.run(spec, log=lambda _: None)
    assert asked and all(sorted(c) == ["id", "text"] for c in asked)


def test_the_driver_reads_a_sample_not_the_input(tiny_dirs, tmp_path, monkeypatch):
    """The driver plans from metadata and a sample; every other row is read by a shard."""
    from raysight.engine import planning

    (tmp_path / "big.jsonl").write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(3000)))
    driver_reads = []
    real = planning.read_range

    def spy(spec, source, lo, hi, *args, **kwargs):
        driver_reads.append(hi - lo)
        return real(spec, source, lo, hi, *args, **kwargs)

    monkeypatch.setattr(planning, "read_range", spy)
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS, execution={"shard_rows": 1000})
    spec["data"] = {"source": str(tmp_path / "big.jsonl")}
    summary = raysight.run(spec, log=lambda _: None)
    assert summary.examples == 3000 and verify(tmp_path / "o") == []
    assert driver_reads == [planning.RUN_SAMPLE]
    report = raysight.plan(spec, sample_rows=100)
    assert report.input_rows == 3000 and report.sampled_rows == 100 and report.estimated
    assert driver_reads[-1] == 100
    # 3000 rows like the sampled ones: the estimate scales the sample
    assert report.output_rows == 3000


def test_duplicate_ids_within_and_across_shards(tiny_dirs, tmp_path):
    rows = [{"id": i, "text": f"text {i}"} for i in range(12)]
    rows[4]["id"] = 1  # shard 0 (rows 0-5): a repeat within the shard is a row error
    rows[9]["id"] = 2  # shard 1 (rows 6-11): a repeat of shard 0's id
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS, execution={"shard_rows": 6})
    spec["data"] = {"source": str(tmp_path / "in.jsonl"), "id_field": "id"}
    with pytest.raises(
        DataError, match=r"1 id\(s\) appear in more than one shard \(2 in shards 0, 1\)"
    ):
        raysight.run(spec, log=lambda _: None)
    ds = raysight.open(tmp_path / "o")  # every shard is kept
    (err,) = ds.errors()
    assert err["example_id"] == "<row 4>" and "id 1 is also row 1's" in err["reason"]
    assert any("duplicated row" in p for p in verify(tmp_path / "o"))


def test_a_hash_collision_is_not_a_duplicate(tiny_dirs, tmp_path, monkeypatch):
    from raysight.dataset import keys

    monkeypatch.setattr(keys, "key64", lambda value: 7)  # every id and row key collides
    (tmp_path / "in.jsonl").write_text(_jsonl(TEXTS))
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS, execution={"shard_rows": 5})
    spec["data"] = {"source": str(tmp_path / "in.jsonl"), "id_field": "id"}
    summary = raysight.run(spec, log=lambda _: None)
    assert summary.examples == 23 and verify(tmp_path / "o") == []


def test_rows_that_do_not_fit_the_input_are_row_errors(tiny_dirs, tmp_path):
    (tmp_path / "in.jsonl").write_text(
        '{"id": 1, "text": "an int id first"}\n\n{"id": "two", "text": "then a string"}\n'
        '{"id": 3, "text": "fine"}\n'
    )
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS)
    spec["data"] = {"source": str(tmp_path / "in.jsonl"), "id_field": "id"}
    raysight.run(spec, log=lambda _: None)
    ds = raysight.open(tmp_path / "o")
    assert sorted(ds.table(["example_id"]).column(0).to_pylist()) == [1, 3]
    reasons = {e["example_id"]: e["reason"] for e in ds.errors()}
    assert reasons["<row 1>"] == "line 2 is blank"
    assert reasons["<row 2>"].startswith("id 'two' is a string, but the input's ids are ints")
    assert verify(tmp_path / "o") == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nothing-*.jsonl", "no file matches"),
        ("in.parquet.gz", "unknown format"),
        ("nosuchscheme://bucket/x.jsonl", "no filesystem for nosuchscheme://"),
    ],
)
def test_sources_that_cannot_be_read_are_named(tmp_path, source, message):
    (tmp_path / "in.parquet.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=message):
        open_source(source, base=tmp_path)


def test_a_file_added_to_a_source_directory_refuses_the_resume(tiny_dirs, tmp_path):
    from raysight.engine.run import OutputError

    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(_table(TEXTS[:10]), d / "a.parquet")
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS)
    spec["data"] = {"source": str(d), "id_field": "id"}
    raysight.run(spec, log=lambda _: None)
    pq.write_table(_table(TEXTS[10:], 10), d / "b.parquet")
    with pytest.raises(OutputError, match=r"data\.source's files changed"):
        raysight.run(spec, log=lambda _: None)


def test_a_file_that_shrank_after_planning_fails_its_shard_by_name(tmp_path):
    (tmp_path / "in.jsonl").write_text(_jsonl(TEXTS))
    spec = raysight.parse_spec(
        {
            "model": {"path": "unused"},
            "data": {"source": str(tmp_path / "in.jsonl"), "id_field": "id"},
            "ops": OPS,
            "output": {"path": "unused"},
        }
    ).data
    src = readers.input_source(spec)
    (tmp_path / "in.jsonl").write_text(_jsonl(TEXTS[:3]))
    with pytest.raises(DataError, match="has fewer rows than when the run was planned"):
        read_range(spec, src, 0, 10)


def test_a_pyarrow_dataset_is_a_source(tiny_dirs, tmp_path):
    import pyarrow.dataset as pads

    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(_table(TEXTS[:12]), d / "a.parquet")
    pq.write_table(_table(TEXTS[12:], 12), d / "b.parquet")
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS, output={"include_text": True})
    spec["data"] = {"prompts": ["replaced by the dataset's files"], "id_field": "id"}
    raysight.run(spec, log=lambda _: None, source=pads.dataset(str(d)))
    t = raysight.open(tmp_path / "o").table(["example_id", "text"])
    assert dict(zip(*(t.column(c).to_pylist() for c in ("example_id", "text")))) == {
        f"r{i}": text for i, text in enumerate(TEXTS)
    }
    resolved = json.loads((tmp_path / "o" / "_spec.json").read_text())["spec"]["data"]
    assert resolved["source"] == [str(d / "a.parquet"), str(d / "b.parquet")]
    with pytest.raises(DataError, match="not read from files"):
        raysight.run(spec, log=lambda _: None, source=pads.dataset(pa.table({"text": ["x"]})))


@pytest.mark.slow
def test_a_ray_dataset_that_reads_files_is_a_source(ray_local, tiny_dirs, tmp_path):
    """read_parquet (Ray's datasource v2), read_json and read_text (v1) become their files; a
    dataset whose rows are not its files' is refused, naming its last step."""
    import ray.data

    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(_table(TEXTS[:12]), d / "a.parquet")
    pq.write_table(_table(TEXTS[12:], 12), d / "b.parquet")
    (tmp_path / "in.jsonl").write_text(_jsonl(TEXTS))
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in TEXTS))
    cases = {
        "parquet": (ray.data.read_parquet(str(d)), "id", [str(d)]),
        "jsonl": (ray.data.read_json(str(tmp_path / "in.jsonl")), "id", None),
        "txt": (ray.data.read_text(str(tmp_path / "in.txt")), None, None),
    }
    for fmt, (source, id_field, files) in cases.items():
        out = tmp_path / f"o-{fmt}"
        spec = make_spec(tiny_dirs["gpt2"], out, OPS, output={"include_text": True})
        spec["data"] = {"prompts": ["replaced by the dataset's files"], "id_field": id_field}
        raysight.run(spec, log=lambda _: None, source=source)
        t = raysight.open(out).table(["text"])
        assert sorted(t.column("text").to_pylist()) == sorted(TEXTS), fmt
        resolved = json.loads((out / "_spec.json").read_text())["spec"]["data"]
        assert resolved["format"] == fmt and (files is None or resolved["source"] == files)
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", OPS)
    for ds, step in [
        (ray.data.from_items([{"text": "x"}]), "FromItems"),
        (ray.data.read_parquet(str(d)).map(lambda r: r), "MapRows"),
        (ray.data.read_parquet(str(d)).limit(3), "Limit"),
    ]:
        with pytest.raises(DataError, match=rf"not a plain read of files .*{step}.*write it out"):
            raysight.run(spec, log=lambda _: None, source=ds)
