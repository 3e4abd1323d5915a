"""Tokenization and token-budget batching.

Rows are sorted by length and packed so that rows × padded length stays within the budget: little
padding, and a row's results do not depend on its neighbours (the interleaver guarantees that).
Causal LMs are left-padded with position_ids derived from the attention mask, so a padded row sees
the same positions as the row run alone (the bug nnsight #672 hit with GPT-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Batch",
    "Encoded",
    "check_position",
    "collate",
    "encode",
    "pack",
    "row_numbers",
    "select",
    "token_targets",
    "tokenize",
    "windows",
    "with_units",
]


@dataclass
class Encoded:
    example_id: Any
    ids: list[int]
    text: str | None = None
    truncated: bool = False
    targets: dict[str, int] | None = None  # token ids the loss takes from data columns
    numbers: dict[str, float] | None = None  # numbers expressions take from data columns
    member: int | None = None  # data.pair: which field of the pair this row is
    pos_map: list[list[int]] | None = None  # data.pair.position_map of the row's record
    variant: int = 0  # sweep variant the row runs
    unit: int = 0  # rows of one pair (same example, same variant) share a unit
    offset: int | None = None  # data.chunk: the window's first token's offset in its document


@dataclass
class Batch:
    example_ids: list[Any]
    inputs: dict[str, torch.Tensor]  # keyword arguments for the model's forward
    starts: list[int]  # index of each row's first real token in the padded sequence
    lengths: list[int]  # real tokens per row (1 for tensor models)
    token_ids: list[list[int]] | None  # real token ids per row
    texts: list[str | None]
    targets: list[dict[str, int]] | None = None  # per row: data column -> token id (the loss)
    variants: list[int] | None = None  # per row: its sweep variant
    members: list[int] | None = None  # per row: its data.pair field
    partners: list[list[int]] | None = None  # per row: batch row of each field of its pair
    pos_maps: list[list[list[int]] | None] | None = None  # per row: its pair's position map
    offsets: list[int | None] | None = None  # per row: data.chunk's window offset
    numbers: list[dict[str, float]] | None = None  # per row: data column -> number (expressions)

    @property
    def size(self) -> int:
        return len(self.example_ids)

    @property
    def padded_length(self) -> int:
        return max(self.starts[i] + self.lengths[i] for i in range(self.size)) if self.size else 0


def encode(tokenizer: Any, rows: list[Any], max_length: int, add_special: bool) -> list[Encoded]:
    """Tokenize without padding; records which rows were truncated. A pair row (PairTexts)
    gives one Encoded per field, side by side, with its member index."""
    flat = []  # (row, member, text)
    for r in rows:
        texts = getattr(r.payload, "texts", None)
        if texts is None:
            flat.append((r, None, r.payload))
        else:
            flat += [(r, m, t) for m, t in enumerate(texts)]
    if not flat:  # a shard whose every row was unusable (a tokenizer cannot take [])
        return []
    ids = tokenizer([t for _, _, t in flat], add_special_tokens=add_special, truncation=False)
    out = []
    for (row, member, text), toks in zip(flat, ids["input_ids"]):
        pos_map = getattr(row.payload, "position_map", None)
        out.append(
            Encoded(
                row.example_id,
                list(toks[:max_length]),
                text,
                len(toks) > max_length,
                member=member,
                pos_map=pos_map,
            )
        )
    return out


def tokenize(
    tokenizer: Any,
    rows: list[Any],
    data: Any,
    max_length: int,
    errors: list,
    with_text: bool = False,
) -> list[Encoded]:
    """Rows as model rows: cut into data.chunk windows, or one each (cut to ``max_length``).
    The worker and the planner's size estimate both tokenize through here."""
    if data.chunk is not None:
        return windows(tokenizer, rows, data.chunk, errors, with_text=with_text)
    return encode(tokenizer, rows, max_length, data.add_special_tokens)


def windows(
    tokenizer: Any, rows: list[Any], chunk: Any, errors: list, with_text: bool = False
) -> list[Encoded]:
    """data.chunk: each row's text tokenized whole (no special tokens) and cut into windows of
    ``chunk.size`` tokens (a BOS first when ``chunk.bos``), each with its window's text when
    ``with_text``. A row that gives no window is reported in ``errors``."""
    if not rows:
        return []
    bos = [tokenizer.bos_token_id] if chunk.bos else []
    width = chunk.size - len(bos)
    step = chunk.stride or width
    docs = tokenizer([r.payload for r in rows], add_special_tokens=False, truncation=False)
    out = []
    for row, toks in zip(rows, docs["input_ids"]):
        before = len(out)
        for off in range(0, len(toks), step):
            piece = list(toks[off : off + width])
            if len(piece) < width and chunk.last == "drop":
                break
            text = tokenizer.decode(piece) if with_text else None
            out.append(Encoded(row.example_id, bos + piece, text, offset=off))
            if off + width >= len(toks):
                break
        if len(out) == before and not toks:
            errors.append((row.example_id, "the text tokenizes to no tokens"))
        elif len(out) == before:
            errors.append(
                (
                    row.example_id,
                    f"{len(toks)} tokens, less than one window of {width} (data.chunk.last: drop)",
                )
            )
    return out


def token_targets(tokenizer: Any, fields: dict[str, Any], columns: list[str]) -> dict[str, int]:
    """One row's loss target tokens from its data columns: an id, or text that is one token.
    Raises ValueError naming the column otherwise."""
    out = {}
    for col in columns:
        v = fields[col]
        if isinstance(v, int) and not isinstance(v, bool):
            out[col] = v
            continue
        if not isinstance(v, str):
            raise ValueError(f"field {col!r} is {type(v).__name__}; give a token id or its text")
        ids = tokenizer(v, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"field {col!r}: {v!r} is {len(ids)} tokens {ids}; a target is one")
        out[col] = ids[0]
    return out


def row_numbers(fields: dict[str, Any], columns: list[str]) -> dict[str, float]:
    """One row's numbers from its data columns (for expressions); raises ValueError naming the
    column when one is not a finite number."""
    out = {}
    for col in columns:
        v = fields[col]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"field {col!r} is {v!r}; an expression's let needs a number")
        out[col] = float(v)
    return out


def check_position(value: float, column: str, tokens: int) -> None:
    """A row's position from a data column must be a whole number within its tokens."""
    if value != int(value):
        raise ValueError(f"field {column!r} is {value}; a position is a whole number")
    if not -tokens <= int(value) < tokens:
        raise ValueError(
            f"field {column!r}: position {int(value)} is past the row's {tokens} tokens"
        )


def pack(
    lengths: list[int],
    batch_tokens: int,
    max_rows: int,
    max_padding: float = 1.0,
    rows_per_item: int = 1,
    new_tokens: int = 0,
) -> list[list[int]]:
    """Group row indices into batches: longest first, each within the token budget, and a batch
    is closed early rather than let its padding exceed ``max_padding`` (a fraction of its padded
    tokens), so rows of similar length share a batch (length bucketing) and the whole shard's
    padding stays under ``max_padding`` too.

    An item may stand for ``rows_per_item`` rows that must share a batch (a pair), each as long
    as ``lengths`` says. A row longer than the budget still runs, alone.

    With ``new_tokens`` (generation) every row takes that many more tokens of the budget (its
    KV cache at the last step), and padding closes no batch: a generate loop costs about the
    same per step whatever its rows' padding (every step after the first reads one real token
    per row), so splitting a batch repeats every step. Measured (docs/benchmarks.md, section
    11): 24 mixed prompts, 16 new tokens, bucketed at 5% padding ran 2.3x an HF loop of full
    batches. Rows still go longest first, so a batch pads as little as its row count allows.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if new_tokens:
        lengths = [n + new_tokens for n in lengths]
        max_padding = 1.0
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        n = len(cur) + 1
        if cur and (
            n * width * rows_per_item > batch_tokens
            or (len(cur) + 1) * rows_per_item > max_rows
            or 1 - (real + lengths[i]) / (n * width) > max_padding
        ):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def collate(items: list[Encoded], pad_id: int, side: str, causal: bool) -> Batch:
    """Pad to the longest row. position_ids come from the mask for causal LMs and for any
    left-padded model, so real tokens keep the positions they have when run alone."""
    width = max(len(e.ids) for e in items)
    n = len(items)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    starts = []
    for b, e in enumerate(items):
        start = width - len(e.ids) if side == "left" else 0
        ids[b, start : start + len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        mask[b, start : start + len(e.ids)] = 1
        starts.append(start)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if causal or side == "left":
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = Batch(
        example_ids=[e.example_id for e in items],
        inputs=inputs,
        starts=starts,
        lengths=[len(e.ids) for e in items],
        token_ids=[e.ids for e in items],
        texts=[e.text for e in items],
        targets=[e.targets or {} for e in items],
        offsets=[e.offset for e in items],
        numbers=[e.numbers or {} for e in items],
    )
    return with_units(batch, items)


def select(batch: Batch, idx: list[int]) -> Batch:
    """The rows ``idx`` of a batch, as a batch of their own (pair partners are not kept)."""

    def pick(xs: list | None) -> list | None:
        return None if xs is None else [xs[i] for i in idx]

    rows = torch.tensor(idx, dtype=torch.long)
    return Batch(
        pick(batch.example_ids),
        {k: v[rows.to(v.device)] for k, v in batch.inputs.items()},
        pick(batch.starts),
        pick(batch.lengths),
        pick(batch.token_ids),
        pick(batch.texts),
        pick(batch.targets),
        pick(batch.variants),
        pick(batch.members),
        offsets=pick(batch.offsets),
        numbers=pick(batch.numbers),
    )


def with_units(batch: Batch, items: list[Encoded]) -> Batch:
    """Record each row's sweep variant and, for pairs, where its pair's other rows are."""
    batch.variants = [e.variant for e in items]
    if any(e.member is not None for e in items):
        where = {(e.unit, e.member): i for i, e in enumerate(items)}
        k = 1 + max(e.member for e in items)
        batch.members = [e.member for e in items]
        batch.partners = [[where.get((e.unit, m), -1) for m in range(k)] for e in items]
        batch.pos_maps = [e.pos_map for e in items]
    return batch
