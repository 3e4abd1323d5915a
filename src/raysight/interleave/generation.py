"""Generation under the interleaver: HF ``generate`` with a step counter, per-row sampling, and
the per-step saves put back together per example.

Every forward pass of ``generate`` is one step: step 0 reads the (left-padded) prompt, step k ≥ 1
reads the k-th generated token under the KV cache, so every hooked value there is one token per
row. A row that hits a stop token is finished: its later steps are not recorded (the batch keeps
running them for the other rows, on padding).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..data.batching import Batch
from ..models.loading import LoadedModel
from ..spec.generate import step_range
from ..spec.models import TopK
from .actions import HookPlan
from .values import row_seed

__all__ = ["assemble", "generate", "step_batch"]


def step_batch(batch: Batch) -> Batch:
    """The geometry of a step ≥ 1: one real token per row, no padding."""
    n = batch.size
    ids = torch.zeros((n, 1), dtype=torch.long)
    one = {"inputs": {"input_ids": ids}, "starts": [0] * n, "lengths": [1] * n}
    return replace(batch, **one, token_ids=None, pos_maps=None)


class _RowSampler:
    """Samples each row's next token from its own generator, seeded by (seed, example_id), and
    leaves only that token possible, so greedy decoding picks it: a row's tokens do not depend
    on its batch neighbours. Temperature, top-k and top-p are applied first."""

    def __init__(self, gen: Any, example_ids: list[Any]):
        self.gen = gen
        self.generators = [
            torch.Generator().manual_seed(row_seed(gen.seed, e)) for e in example_ids
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.gen.temperature
        if self.gen.top_k is not None:
            k = min(self.gen.top_k, logits.shape[-1])
            kth = torch.topk(logits, k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if self.gen.top_p is not None:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= self.gen.top_p  # keep the first past top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        out = torch.full_like(scores, float("-inf"))
        for i, g in enumerate(self.generators):
            choice = torch.multinomial(probs[i].cpu(), 1, generator=g)
            out[i, choice.to(out.device)] = 0.0
        return out


def generate(loaded: LoadedModel, plan: HookPlan, batch: Batch, keep_logits: bool) -> torch.Tensor:
    """Run HF generation on the batch (hooks installed by the caller); the new tokens [rows, n]."""
    from transformers import LogitsProcessorList

    gen = plan.generate
    inputs = {k: v.to(loaded.device) for k, v in batch.inputs.items() if k != "position_ids"}
    kwargs: dict[str, Any] = {
        "max_new_tokens": gen.max_new_tokens,
        "do_sample": False,
        "eos_token_id": list(plan.stop_ids),
        "pad_token_id": loaded.tokenizer.pad_token_id,
        "num_beams": 1,
        # the config's sampling defaults would only warn: sampling is ours, per row
        "temperature": None,
        "top_k": None,
        "top_p": None,
    }
    if keep_logits:
        kwargs["logits_to_keep"] = 0  # every prompt position's logits at step 0, not the last
    if gen.do_sample:
        kwargs["logits_processor"] = LogitsProcessorList([_RowSampler(gen, batch.example_ids)])
    out = loaded.module.generate(**inputs, **kwargs)
    return out[:, inputs["input_ids"].shape[1] :]


def _n_steps(new: torch.Tensor, stop_ids: list[int]) -> list[int]:
    """Steps each row computed: up to and including the step that produced a stop token."""
    out = []
    stops = torch.isin(new, torch.tensor(stop_ids, device=new.device))
    for row in stops:
        hit = row.nonzero()
        out.append(int(hit[0]) + 1 if len(hit) else new.shape[1])
    return out


def assemble(
    plan: HookPlan, per_step: dict[int, dict[str, Any]], new: torch.Tensor
) -> dict[str, Any]:
    """One value per row and column: a step-0-only op's value as is; an op over later steps
    stacks its steps per row ([steps, ...]), only the steps the row computed."""
    gen = plan.generate
    n = _n_steps(new, plan.stop_ids)
    out: dict[str, Any] = {"generated_ids": [new[i, : n[i]] for i in range(len(n))]}
    for save in plan.saves:
        steps = step_range(save.steps, gen.max_new_tokens)
        c = save.column
        for col in [f"{c}_ids", f"{c}_values"] if isinstance(save.reduce, TopK) else [c]:
            if list(steps) == [0]:
                out[col] = per_step[0][col]
                continue
            rows = []
            for i in range(len(n)):
                vals = [per_step[s][col][i] for s in steps if s < n[i] and s in per_step]
                rows.append(torch.stack(vals) if vals else torch.empty(0))
            out[col] = rows
    return out
