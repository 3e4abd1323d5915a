"""The declared loss, per row, and the backward pass that fires the ``grad`` ops' tensor hooks.

Each row's loss reads only that row's real tokens, and rows never interact in a forward pass, so
differentiating the sum over rows gives every row the gradients it has when run alone. Padding
never enters a loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .actions import GradAction, HookPlan, LossAction
from .expr import evaluate
from .rows import Ctx, OpError, batched, rows
from .selectors import SelectError, abs_positions, container_get, split_index

__all__ = ["GradError", "backward", "row_losses"]


class GradError(OpError):
    """The loss cannot be computed or differentiated as declared; names the spec fields."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else problems
        super().__init__("; ".join(self.problems))


def _token_ids(loss: LossAction, name: str, ctx: Ctx, vocab: int) -> torch.Tensor:
    tok = loss.tokens[name]
    b = ctx.batch
    if isinstance(tok, tuple):  # ("field", column): one token per row, resolved by the reader
        ids = [t[tok[1]] for t in b.targets] if b.targets else [0] * b.size
    else:
        ids = [tok] * b.size
    for i, t in enumerate(ids):
        if not 0 <= t < vocab:
            raise SelectError(
                f"row {b.example_ids[i]!r}: {name} token id {t} is outside the logits' "
                f"vocabulary (0..{vocab - 1})"
            )
    return torch.tensor(ids, dtype=torch.long)


def row_losses(
    loss: LossAction, value: Any, ctx: Ctx, tokens: dict[str, int] | None = None
) -> torch.Tensor:
    """[rows] losses from the loss site's (batched) value (``tokens``: an expression's tok())."""
    tgt = loss.target
    path, groups = split_index(tgt.index, value, tgt.primary)
    x = batched(container_get(value, path), ctx, tgt.label)
    b = ctx.batch
    if loss.kind == "expr":  # each row's own value, padding cut: one number per row
        per = []
        numbers = b.numbers or [{} for _ in range(b.size)]
        for i, r in enumerate(rows(x, tgt, groups, None, ctx)):
            v = evaluate(loss.expr, r, tokens or {}, b.example_ids[i], None, numbers[i])
            if v.numel() != 1:
                raise SelectError(
                    f"the expression gives a value of shape {list(v.shape)} for row "
                    f"{b.example_ids[i]!r}; a loss is one number per row (sum or mean it)"
                )
            per.append(v.reshape(()).float())
        return torch.stack(per)
    if loss.kind in ("sum", "mean"):
        data = rows(x, tgt, groups, loss.positions, ctx)
        per = [r.sum() if loss.kind == "sum" else r.mean() for r in data]
        return torch.stack(per)
    if x.dim() != 3:
        raise SelectError(f"logits of shape {list(x.shape)}; expected [rows, tokens, vocab]")
    if loss.kind == "cross_entropy":
        per = []
        for i in range(b.size):
            s, n = b.starts[i], b.lengths[i]
            if n < 2:
                raise SelectError(f"row {b.example_ids[i]!r}: cross_entropy needs 2 or more tokens")
            target = torch.tensor(b.token_ids[i][1:n], device=x.device)
            per.append(
                F.cross_entropy(x[i, s : s + n - 1].float(), target, reduction=loss.reduction)
            )
        return torch.stack(per)
    pos = abs_positions([loss.position], b.starts, b.lengths, x.device)[:, 0]
    logits = x[torch.arange(b.size, device=x.device), pos].float()  # [rows, vocab]
    vocab = logits.shape[-1]

    def read(name: str, values: torch.Tensor) -> torch.Tensor:
        ids = _token_ids(loss, name, ctx, vocab).to(x.device)
        return values.gather(-1, ids[:, None])[:, 0]

    if loss.kind == "logprob":
        return read("target", logits.log_softmax(-1))
    if loss.kind == "logit":
        return read("target", logits)
    return read("a", logits) - read("b", logits)


def backward(plan: HookPlan, ctx: Ctx) -> None:
    """Differentiate the summed row losses; every grad op must have been reached."""
    loss = plan.loss
    assert loss is not None
    if ctx.loss_value is None:
        raise GradError(f"{loss.where}: the loss's site '{loss.target.label}' did not run")
    try:
        total = row_losses(loss, ctx.loss_value, ctx, plan.expr_tokens).sum()
    except (SelectError, ValueError, IndexError, RuntimeError) as e:
        raise GradError(f"{loss.where}: {e}") from e
    grads = [a for acts in plan.actions.values() for a in acts if isinstance(a, GradAction)]
    if total.requires_grad:
        total.backward()
    missing = [
        f"{a.where}.grad: the loss ({loss.where}) does not depend on '{a.target.label}' (no "
        "path from it reaches the loss: an op or module in between replaces the value)"
        for a in grads
        if id(a) not in ctx.fired
    ]
    if missing:
        raise GradError(missing)
