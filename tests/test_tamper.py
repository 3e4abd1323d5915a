"""Tampering with a finished dataset: every changed byte, truncation, swapped or replaced file
and manifest edit is a finding of `raysight verify` (exit 1, a line naming the shard or the
manifest and what is wrong), never a traceback; `raysight.open` refuses a damaged shard by name."""

from __future__ import annotations

import io
import json
import random
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pyarrow.parquet as pq
import pytest

import raysight
from conftest import make_spec
from raysight.cli import main
from raysight.dataset.reader import DamagedDataset
from raysight.dataset.verify import verify


@pytest.fixture(scope="module")
def made(tiny_dirs, tmp_path_factory):
    """One whole dataset per file format (3 shards), made once; each test damages a copy."""
    root = tmp_path_factory.mktemp("tamper")
    out = {}
    for fmt in ("parquet", "arrow"):
        spec = make_spec(
            tiny_dirs["gpt2"],
            root / fmt,
            [{"save": "layers.1.output", "as": "h"}, {"save": "logits", "positions": [-1]}],
            output={"format": fmt},
            execution={"shard_rows": 4},
        )
        raysight.run(spec, log=lambda _: None)
        assert verify(root / fmt) == []
        out[fmt] = root / fmt
    return out


@pytest.fixture
def copy_of(made, tmp_path):
    def _copy(fmt: str = "parquet"):
        return shutil.copytree(made[fmt], tmp_path / fmt)

    return _copy


def cli_verify(path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["verify", str(path)])
    assert "Traceback" not in err.getvalue()
    return rc, out.getvalue()


def assert_found(path, *words: str) -> str:
    rc, text = cli_verify(path)
    assert rc == 1, text
    assert all(w in text for w in words), (words, text)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main(["inspect", str(path)]) in (0, 2)  # a summary or a message, no traceback
    return text


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_every_flipped_byte_is_found(copy_of, fmt):
    ds = copy_of(fmt)
    shard = ds / f"part-00001.{fmt}"
    original = shard.read_bytes()
    rng = random.Random(7)
    for offset in sorted(rng.sample(range(len(original)), 40)):
        damaged = bytearray(original)
        damaged[offset] ^= 1 << rng.randrange(8)
        shard.write_bytes(bytes(damaged))
        assert_found(ds, f"shard 1: part-00001.{fmt} changed after it was written")
    shard.write_bytes(original)
    assert cli_verify(ds)[0] == 0


def test_a_damaged_page_is_refused_by_open_by_name(copy_of):
    ds = copy_of()
    shard = ds / "part-00002.parquet"
    meta = pq.ParquetFile(shard).metadata
    h = next(i for i in range(meta.num_columns) if meta.schema.column(i).path.startswith("h"))
    col = meta.row_group(0).column(h)
    data = bytearray(shard.read_bytes())
    data[col.data_page_offset + col.total_compressed_size // 2] ^= 0xFF  # inside page values
    shard.write_bytes(bytes(data))
    opened = raysight.open(ds)  # sizes still match: the damage is found on reading
    with pytest.raises(DamagedDataset, match=r"shard 2: part-00002\.parquet cannot be read"):
        opened.to_torch("h")
    assert_found(ds, "shard 2: part-00002.parquet changed after it was written")


@pytest.mark.parametrize("keep", [0, 4, 100, -8, -1])
def test_a_truncated_shard_is_found_and_refused(copy_of, keep):
    ds = copy_of()
    shard = ds / "part-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[:keep])  # the first bytes, or all but the last
    assert_found(ds, "shard 0: part-00000.parquet has", "bytes, the manifest says")
    with pytest.raises(DamagedDataset, match=r"shard 0: part-00000\.parquet has \d+ bytes"):
        raysight.open(ds)


def test_swapped_replaced_missing_and_extra_files(copy_of):
    ds = copy_of()
    a, b = ds / "part-00000.parquet", ds / "part-00001.parquet"
    a.rename(ds / "tmp")
    b.rename(a)
    (ds / "tmp").rename(b)
    assert_found(ds, "shard 0: part-00000.parquet", "shard 1: part-00001.parquet")
    b.rename(ds / "tmp")
    a.rename(b)
    (ds / "tmp").rename(a)  # swapped back
    assert cli_verify(ds)[0] == 0
    shutil.copy(a, ds / "part-00002.parquet")  # replaced by another shard's file
    assert_found(ds, "shard 2: part-00002.parquet")
    (ds / "part-00002.parquet").unlink()
    assert_found(ds, "shard 2: file part-00002.parquet is missing")
    with pytest.raises(DamagedDataset, match=r"shard 2: its file part-00002\.parquet is missing"):
        raysight.open(ds)


def _edit(ds, change) -> None:
    path = ds / "_manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def _set_column(key, value):
    def change(m):
        m["columns"][0][key] = value

    return change


def _swap_entries(m):
    m["shards"]["0"], m["shards"]["1"] = m["shards"]["1"], m["shards"]["0"]


MANIFEST_EDITS = {
    "column dtype": (_set_column("dtype", "float16"), "its header"),
    "column shape": (_set_column("shape", [None, 64]), "its header"),
    "spec hash": (lambda m: m.update(spec_hash="0" * 16), "its header"),
    "spec": (lambda m: m["spec"]["data"].update(max_length=7), "its header"),
    "schema": (lambda m: m.update(schema_ipc=m["schema_ipc"].replace("A", "B", 1)), "its header"),
    "input rows": (lambda m: m.update(input_rows=m["input_rows"] + 1), "its header"),
    "entries swapped": (_swap_entries, "shard 0: the manifest names 'part-00001.parquet'"),
    "rows edited": (
        lambda m: m["shards"]["1"].update(rows=99),
        "shard 1: part-00001.parquet has 4 rows, the manifest says 99",
    ),
    "checksum removed": (lambda m: m["shards"]["1"].pop("sha256"), "shard 1 lacks its"),
    "header checksum removed": (lambda m: m.pop("header_sha256"), "no header checksum"),
    "no shards": (lambda m: m.pop("shards"), "'shards' is missing or not a dict"),
    "shards not a dict": (lambda m: m.update(shards=[1]), "'shards' is missing or not a dict"),
    "entry not a dict": (lambda m: m["shards"].update({"1": "done"}), "shard '1' has no status"),
    "foreign": (lambda m: m.update(format="other-tool"), "is not 'raysight-dataset/1'"),
}


@pytest.mark.parametrize("case", MANIFEST_EDITS)
def test_manifest_edits_are_found(copy_of, case):
    ds = copy_of()
    change, words = MANIFEST_EDITS[case]
    _edit(ds, change)
    assert_found(ds, words)


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "is not readable JSON"),
        ("[1, 2]", "holds a list, not a manifest object"),
        ("", "is not readable JSON"),
        ("\udcff", "is not readable JSON"),
    ],
)
def test_a_manifest_that_is_not_one(copy_of, text, words):
    ds = copy_of()
    (ds / "_manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert_found(ds, words)


def test_a_garbled_or_edited_error_report_is_a_finding(copy_of):
    ds = copy_of()
    (ds / "_errors.jsonl").write_text("not json\n")
    assert_found(ds, "_errors.jsonl: not a readable error report")
    # an error that no shard's completion record lists (the report is written from them)
    (ds / "_errors.jsonl").write_text('{"shard": 0, "example_id": 1, "reason": "made up"}\n')
    assert_found(ds, "_errors.jsonl: line 1 is not the shards' completion records'")


def test_open_reads_what_the_manifest_lists_and_says_what_is_missing(copy_of):
    ds = copy_of()
    n = raysight.open(ds).table().num_rows
    shutil.copy(ds / "part-00000.parquet", ds / "part-00009.parquet")  # a stray copy
    shutil.copy(ds / "part-00000.parquet", ds / "part-00000-copy.parquet")
    assert raysight.open(ds).table().num_rows == n  # neither is read
    _edit(ds, lambda m: m["shards"].pop("2"))  # as if the manifest lagged behind shard 2
    assert raysight.open(ds).table().num_rows == n  # its completion record counts
    assert not any("shard 2" in p for p in verify(ds))
    (ds / "_shards" / "part-00002.json").unlink()  # as if the run stopped before shard 2
    with pytest.warns(UserWarning, match=r"incomplete: shard\(s\) \[2\] are not finished"):
        opened = raysight.open(ds)
    assert opened.missing == [2] and [f.name for f in opened.files] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_open_refuses_a_shard_whose_schema_is_not_the_plans(copy_of, tmp_path):
    ds = copy_of()
    t = pq.read_table(ds / "part-00001.parquet")
    t = t.drop_columns(["h"])
    pq.write_table(t, ds / "part-00001.parquet")
    _edit(ds, lambda m: m["shards"]["1"].update(bytes=(ds / "part-00001.parquet").stat().st_size))
    with pytest.raises(DamagedDataset, match=r"shard 1: part-00001\.parquet has a schema other"):
        raysight.open(ds)
