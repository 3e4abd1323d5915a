"""Tokenization and token-budget batching.

Rows are sorted by length and packed so that rows × padded length stays within the budget: little
padding, and a row's results do not depend on its neighbours (the interleaver guarantees that).
Causal LMs are left-padded with position_ids derived from the attention mask, so a padded row sees
the same positions as the row run alone (the bug nnsight #672 hit with GPT-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Batch", "Encoded", "collate", "encode", "pack", "token_targets"]


@dataclass
class Encoded:
    example_id: Any
    ids: list[int]
    text: str | None = None
    truncated: bool = False
    targets: dict[str, int] | None = None  # token ids the loss takes from data columns


@dataclass
class Batch:
    example_ids: list[Any]
    inputs: dict[str, torch.Tensor]  # keyword arguments for the model's forward
    starts: list[int]  # index of each row's first real token in the padded sequence
    lengths: list[int]  # real tokens per row (1 for tensor models)
    token_ids: list[list[int]] | None  # real token ids per row
    texts: list[str | None]
    targets: list[dict[str, int]] | None = None  # per row: data column -> token id (the loss)

    @property
    def size(self) -> int:
        return len(self.example_ids)

    @property
    def padded_length(self) -> int:
        return max(self.starts[i] + self.lengths[i] for i in range(self.size)) if self.size else 0


def encode(tokenizer: Any, rows: list[Any], max_length: int, add_special: bool) -> list[Encoded]:
    """Tokenize without padding; records which rows were truncated."""
    texts = [r.payload for r in rows]
    ids = tokenizer(texts, add_special_tokens=add_special, truncation=False)["input_ids"]
    out = []
    for row, toks in zip(rows, ids):
        out.append(
            Encoded(row.example_id, list(toks[:max_length]), row.payload, len(toks) > max_length)
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


def pack(
    lengths: list[int], batch_tokens: int, max_rows: int, max_padding: float = 1.0
) -> list[list[int]]:
    """Group row indices into batches: longest first, each within the token budget, and a batch
    is closed early rather than let its padding exceed ``max_padding`` (a fraction of its padded
    tokens), so rows of similar length share a batch (length bucketing) and the whole shard's
    padding stays under ``max_padding`` too.

    A row longer than the budget still runs, alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        n = len(cur) + 1
        if cur and (
            n * width > batch_tokens
            or len(cur) >= max_rows
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
    return Batch(
        example_ids=[e.example_id for e in items],
        inputs=inputs,
        starts=starts,
        lengths=[len(e.ids) for e in items],
        token_ids=[e.ids for e in items],
        texts=[e.text for e in items],
        targets=[e.targets or {} for e in items],
    )
