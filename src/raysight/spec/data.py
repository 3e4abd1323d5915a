"""The data section of a spec: where input rows come from and how they become model rows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ._base import MAX_TOKENS, PathText, _Strict

__all__ = ["ChunkSpec", "DataSpec", "PairSpec"]


class PairSpec(_Strict):
    fields: list[str] = Field(min_length=2)
    """Text columns that make one pair (e.g. [clean, corrupt]): each record runs as one row per
    field, side by side in one batch, so a set can copy a value from a paired row."""
    position_map: str | None = None
    """Column holding [[position in the first field's row, position in the second's], ...]
    for pairs of different lengths (two fields only). Without it, rows are aligned by position
    and a copy between rows of different lengths is a row error."""

    @model_validator(mode="after")
    def _check(self) -> PairSpec:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"data.pair.fields {self.fields} repeats a field")
        if self.position_map is not None and len(self.fields) != 2:
            raise ValueError("data.pair.position_map relates two rows: give exactly two fields")
        return self


class ChunkSpec(_Strict):
    size: int = Field(ge=4, le=MAX_TOKENS)
    """Tokens per window, the BOS token included when `bos` is on."""
    stride: int | None = Field(None, ge=1)
    """Tokens between the starts of consecutive windows; default: the window's text tokens (no
    overlap). Less than that overlaps windows."""
    bos: bool = True
    """Start every window with the tokenizer's BOS token (as SAE training data does); off: the
    window is text tokens only."""
    last: Literal["keep", "drop"] = "keep"
    """A document's last window when it is shorter than the others: keep it, or drop it. A
    document with no full window under `drop` goes to the error report."""


class DataSpec(_Strict):
    source: PathText | list[PathText] | None = None
    """Input: a file, a directory, a glob (`data/*.parquet`, `**` crosses directories) or a URI
    (s3://, gs://, hdfs://, file://, or any fsspec scheme), or a list of these, read in order.
    Files are Parquet, JSONL (one JSON record per line) or txt (one prompt per line), JSONL and
    txt also compressed (.gz, .zst, .bz2), Arrow IPC (.arrow), or a directory written by HF
    datasets' save_to_disk. A directory is read recursively, in path order, skipping names
    starting with '_' or '.'."""
    format: Literal["auto", "parquet", "jsonl", "txt", "arrow"] = "auto"
    """File format; auto: from each file's extension."""
    prompts: list[Any] | None = None
    """Inline prompts (instead of `source`): strings, or records like a jsonl line's."""
    text_field: str = "text"
    """Column holding the prompt text (jsonl / parquet)."""
    id_field: str | None = None
    """Column holding a row id; default: the row's index in the input."""
    input_field: str | None = None
    """Column holding a numeric array per row, for models that take tensors, not text."""
    max_length: int = Field(512, ge=1, le=MAX_TOKENS)
    """Prompts longer than this many tokens are truncated (the count goes in the manifest)."""
    add_special_tokens: bool = True
    """Let the tokenizer add its special tokens (BOS, CLS/SEP), as a plain tokenizer call does."""
    max_tokens: int | None = Field(None, ge=1)
    """Stop after this many tokens: the run covers the fewest leading shards whose tokens (as
    the run counts them: every row written, every variant and pair row) reach it. Shards are
    started in order; any later shard that finished meanwhile is dropped, so the dataset is the
    same whatever the number of actors."""
    limit: int | None = Field(None, ge=1)
    """Read only the first `limit` rows."""
    chunk: ChunkSpec | None = None
    """Split each tokenized text into windows of `chunk.size` tokens, one row per window, with
    the document's id (example_id) and the window's first token's offset in the document
    (offset). Documents are never truncated; data.max_length does not apply."""
    pair: PairSpec | None = None
    """Run each record as a pair of rows (e.g. clean and corrupt prompts) for patching."""
    keep: list[str] = []
    """Input columns copied into the output, each row's value beside its example_id (per_token:
    on each of its tokens; with data.chunk, on each window): labels for a probe, metadata to
    filter on. The column type is inferred from the first rows read (as plan samples them); a
    row without the column is a row error. Names may not be identity columns."""

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.source is None) == (self.prompts is None):
            raise ValueError("give exactly one of data.source or data.prompts")
        if isinstance(self.source, list):
            if not self.source:
                raise ValueError("data.source is an empty list")
            if len(set(self.source)) != len(self.source):
                raise ValueError("data.source names a file or pattern twice")
        if self.prompts is not None and len(self.prompts) == 0:
            raise ValueError("data.prompts is empty")
        if self.chunk is not None:
            clash = [
                f"data.{name}"
                for name, on in (
                    ("pair", self.pair is not None),
                    ("input_field", self.input_field is not None),
                    # not model_fields_set: a resolved spec (_spec.json, an actor's copy)
                    # carries the default explicitly
                    (
                        "max_length",
                        self.max_length != type(self).model_fields["max_length"].default,
                    ),
                )
                if on
            ]
            if clash:
                raise ValueError(
                    f"data.chunk windows whole texts into rows; it cannot be used with "
                    f"{' or '.join(clash)}"
                )
        if self.pair is not None and self.input_field is not None:
            raise ValueError("data.pair runs text prompts; it cannot be used with data.input_field")
        if len(set(self.keep)) != len(self.keep):
            raise ValueError("data.keep names a column twice")
        return self
