"""The output and execution sections of a spec: where and how results are written, and how the
run is executed (neither changes what is computed, except shard_rows, which fixes the files)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ._base import PathText, _Strict

__all__ = ["ExecutionSpec", "OutputSpec", "ShuffleSpec"]


class ShuffleSpec(_Strict):
    """Rows written in a seeded random order within each shard, a buffer at a time: rows are
    held until ``buffer_rows`` of them are there, permuted, and written. The scope is a buffer
    and not the dataset because a shard of per-token rows does not fit in memory (4096 prompts
    x 256 tokens x 576 floats is 2.4 GB) and a global shuffle would need a second pass over
    every file; a buffer of 65,536 token rows mixes the tokens of some 250 prompts, which is
    what SAE trainers' own mixing buffers do. The order depends on (seed, shard) only, so a
    resumed or re-run shard comes out the same whatever the actor count. For a shuffle across
    shards, read the shards in a random order (``ds.files``)."""

    seed: int = Field(0, ge=0)
    """Seed of the permutation (with the shard's number)."""
    buffer_rows: int = Field(65_536, ge=2, le=2**26)
    """Rows held and permuted together; memory is this many output rows (``raysight plan``
    prints a row's size)."""


class OutputSpec(_Strict):
    path: PathText
    """Output directory (created; a finished run there is resumed, a different spec refused)."""
    layout: Literal["per_sequence", "per_token"] = "per_sequence"
    """per_sequence: one row per example; per_token: one row per real token (padding dropped)."""
    format: Literal["parquet", "arrow"] = "parquet"
    """Data file format: Parquet or Arrow IPC (Feather v2)."""
    tensor_storage: Literal["typed", "bytes"] = "typed"
    """typed: tensors as Arrow number lists that any reader understands; bytes: one binary value
    of raw bytes per row (dtype and shape in the field metadata, decoded by raysight.open),
    several times faster to write as Parquet for float16. bfloat16 is always stored as bytes."""
    include_text: bool = False
    """Add a `text` column with the prompt (per_token: on each sequence's first written row
    only, null on its other rows, so a long prompt is not stored once per token)."""
    special_tokens: Literal["keep", "drop"] = "keep"
    """per_token: `drop` leaves out the rows of the tokenizer's special tokens (BOS, EOS...),
    so only text tokens are written, as SAE training data usually wants; `position` still
    counts them (a row's first text token after a BOS is position 1)."""
    decode_tokens: bool = True
    """Beside every column of token ids, a column of the tokens as text, each decoded alone
    (" Paris"): `input_tokens` (per_token: `token`), `generated_tokens`, and `<as>_tokens` for
    an argmax or topk over the vocabulary (the logits, or a logit lens)."""
    compression: Literal["none", "zstd", "lz4", "snappy"] = "none"
    """Compression codec; float activations barely compress, so none is fastest."""
    row_group_bytes: int = Field(128 * 2**20, ge=2**16)
    """Target row-group (Parquet) / record-batch (Arrow) size in bytes."""
    encoders: int = Field(2, ge=1, le=32)
    """Threads per actor that turn the saved tensors into Arrow record batches while the next
    batch runs; one more writes the file and one hashes and syncs it behind. Raise it where
    all-layer captures keep the host busy (`raysight inspect` names the write stage)."""
    shuffle: ShuffleSpec | None = None
    """Write rows in a seeded random order within a buffer of each shard (SAE training data
    from the per_token layout), instead of batch order, which is sorted by length."""

    @model_validator(mode="after")
    def _per_token_only(self) -> OutputSpec:
        if self.special_tokens == "drop" and self.layout != "per_token":
            raise ValueError(
                "output.special_tokens: drop removes token rows; it needs layout per_token"
            )
        return self


class ExecutionSpec(_Strict):
    runner: Literal["ray", "local"] = "ray"
    """ray: a Ray actor (local Ray started when no cluster is given); local: in this process."""
    actors: int = Field(1, ge=1, le=4096)
    """Model replicas, one Ray actor each; shards are handed to whichever actor is free."""
    gpus_per_actor: float = Field(0, ge=0)
    """GPUs per actor (0: CPU)."""
    cpus_per_actor: int = Field(1, ge=1)
    """CPU cores reserved for each actor; torch uses this many threads."""
    batch_tokens: int = Field(16384, ge=1)
    """Token budget per batch (rows × padded length; under `generate:` each row also counts its
    max_new_tokens, the KV cache at the last step)."""
    max_batch_rows: int = Field(256, ge=1)
    """Upper bound on rows per batch."""
    max_padding: float = Field(0.05, ge=0, le=1)
    """Most padding a batch may have, as a fraction of its padded tokens: rows are sorted by
    length and a batch is closed early rather than exceed it (1 turns bucketing off). Not
    under `generate:`, whose batches are filled to max_batch_rows and batch_tokens (each row
    counts its prompt and max_new_tokens): splitting a generate loop repeats every step."""
    shard_rows: int = Field(4096, ge=1)
    """Rows per shard: the unit of output file, resume and retry."""
    self_check: int = Field(2, ge=0, le=1000)
    """Units (a row, or a pair's rows, under one sweep variant) per shard that are run again
    alone and unpadded; every value they saved must equal the batched result within a
    tolerance for its dtype, or the shard fails naming the row, column and difference. The
    shortest unit (the most padded) is always among them. 0 turns the check off."""
    max_retries: int = Field(2, ge=0, le=100)
    """Times a shard whose code raised is run again before it is reported as failed (an actor
    that dies is replaced and its shard redone, within the same budget)."""
