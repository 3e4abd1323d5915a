"""The dataset store's streamed writes and reads, on a local directory and on an object-store
URI (pyarrow's in-memory mock filesystem stands in for a bucket; tests/test_s3.py runs a real
S3 server)."""

from __future__ import annotations

import pytest

from raysight.dataset.store import Store


@pytest.fixture(params=["local", "uri"])
def store(request, tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "READ_BLOCK", 5)  # lines cross the blocks of a streamed read
    if request.param == "local":
        return Store(tmp_path / "run")
    out = Store("mock://bucket/run")
    out.fs.create_dir(out.root)  # the mock is hierarchical; a bucket needs no directories
    return out


def test_chunks_are_written_whole_and_read_back_line_by_line(store):
    store.mkdir()
    chunks = [b"first\n", b"sec", b"ond\n", b"third\n" * 3, "\u00e9\n".encode()]
    store.write_chunks("_errors.jsonl", iter(chunks))
    assert store.read_bytes("_errors.jsonl") == b"".join(chunks)
    lines = list(store.read_lines("_errors.jsonl"))
    assert lines == ["first\n", "second\n", "third\n", "third\n", "third\n", "\u00e9\n"]
    store.write_chunks("_errors.jsonl", iter([b"no newline at the end"]))
    assert list(store.read_lines("_errors.jsonl")) == ["no newline at the end"]


def test_a_failing_producer_leaves_the_old_file(store):
    store.mkdir()
    store.write_bytes("_errors.jsonl", b"kept\n")

    def broken():
        yield b"partial\n"
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_chunks("_errors.jsonl", broken())
    assert store.read_bytes("_errors.jsonl") == b"kept\n"
    assert [n for n in store.names() if n != "_errors.jsonl"] == []  # no temporary left


def test_reading_a_missing_file_is_file_not_found(store):
    store.mkdir()
    with pytest.raises(FileNotFoundError):
        list(store.read_lines("_errors.jsonl"))
