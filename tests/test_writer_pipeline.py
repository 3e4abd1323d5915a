"""The shard writer's pipeline (writers/shard.py, writers/flush.py): encoder threads that finish
out of order still write rows in the order given, a full queue blocks the caller (nothing is
dropped, memory stays bounded), an encoder's error reaches the caller and leaves no file, and the
checksum taken behind the writer equals a plain hashlib pass over the finished file."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysight.dataset.decode import decode
from raysight.writers.encode import ColumnInfo, arrow_field, encode_column
from raysight.writers.shard import ShardWriter

COL = ColumnInfo("x", "float16", (64,), storage="bytes")
SCHEMA = pa.schema([arrow_field(COL)])


def _read(path, fmt):
    return pq.read_table(path) if fmt == "parquet" else pa.ipc.open_file(str(path)).read_all()


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize("encoders", [1, 4])
def test_out_of_order_encoders_keep_the_order_and_the_checksum(fmt, encoders, tmp_path):
    data = torch.randn(600, 64).half()
    rng = random.Random(encoders)

    def job(chunk, delay):
        def encode():
            time.sleep(delay)  # later chunks often finish first with 4 encoders
            return pa.RecordBatch.from_arrays([encode_column(COL, chunk)], schema=SCHEMA)

        return encode

    w = ShardWriter(
        tmp_path, 0, SCHEMA, fmt, row_group_bytes=2**16, background=True, encoders=encoders
    ).start()
    for chunk in data.split(10):
        w.write(job(chunk, rng.uniform(0, 0.01)))
    path = w.commit()
    got = _read(path, fmt).column("x").combine_chunks()
    assert torch.equal(decode(got, "float16", [64]), data)
    assert w.rows == 600 and w.encode_seconds > 0
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert w.size == path.stat().st_size
    if fmt == "parquet":  # row groups sized in bytes through the queue, as without it
        assert pq.ParquetFile(path).num_row_groups > 1


def test_a_full_queue_blocks_the_caller_and_drops_nothing(tmp_path):
    gate = threading.Event()
    started = []

    def job(i):
        def encode():
            started.append(i)
            gate.wait(10)
            return pa.RecordBatch.from_arrays(
                [encode_column(COL, torch.full((4, 64), float(i)).half())], schema=SCHEMA
            )

        return encode

    w = ShardWriter(tmp_path, 0, SCHEMA, background=True, encoders=2).start()
    done = []

    def produce():
        for i in range(20):
            w.write(job(i))
            done.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.5)
    # two encoders busy and four queued at most: the caller is held at its fifth write
    assert len(done) == 4 and len(started) == 2
    gate.set()
    producer.join(10)
    path = w.commit()
    values = decode(_read(path, "parquet").column("x").combine_chunks(), "float16", [64])
    assert values[:, 0].tolist() == [float(i) for i in range(20) for _ in range(4)]
    assert w.write_seconds >= 0.4  # the time it was held is the stage inspect reports


def test_an_encoder_error_reaches_the_caller_and_leaves_no_file(tmp_path):
    def broken():
        raise ValueError("bad tensor in row 7")

    ok = pa.RecordBatch.from_arrays([encode_column(COL, torch.ones(4, 64).half())], schema=SCHEMA)
    w = ShardWriter(tmp_path, 0, SCHEMA, background=True, encoders=2).start()
    w.write(ok)
    w.write(broken)
    with pytest.raises(ValueError, match="row 7"):
        for _ in range(10):
            w.write(ok)
        w.commit()
    w.fail()
    assert list(tmp_path.iterdir()) == []


def test_the_flusher_hashes_what_landed_even_when_the_writer_outruns_it(tmp_path, monkeypatch):
    import raysight.writers.flush as flush

    monkeypatch.setattr(flush, "_CHUNK", 4096)  # many small reads, racing the writer
    data = torch.randn(4000, 64).half()
    w = ShardWriter(tmp_path, 0, SCHEMA, "arrow", row_group_bytes=2**16, background=True).start()
    for chunk in data.split(100):
        w.write(pa.RecordBatch.from_arrays([encode_column(COL, chunk)], schema=SCHEMA))
    path = w.commit()
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
