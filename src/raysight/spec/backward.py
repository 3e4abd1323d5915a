"""Gradients as data: the ``backward:`` section (a declared loss) and ``grad`` ops.

nnsight writes ``with loss.backward(): x.grad.save()``; here the loss is one of a few declared
forms and each ``grad`` op names a site whose gradient is saved, set before it flows further back,
or multiplied by the activation (attribution patching's first-order estimate). The loss is taken
per row with padding masked out and summed over the batch's rows, so a row's gradients are the
ones it has when run alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ._base import Dtype, Positions, ValueSite, _Strict, _value_site, tag_by_key
from .expr import check_expr, string_args
from .reduce import Reduce, metric_kind
from .tokens import FieldRef, TokenRef
from .values import ExprValue, FileValue, FromValue, NumberField, Value

__all__ = [
    "BackwardSpec",
    "CrossEntropyLoss",
    "ExprLoss",
    "FieldRef",
    "GradOp",
    "LogitDiffLoss",
    "LogitLoss",
    "LogprobLoss",
    "Loss",
    "MeanLoss",
    "SumLoss",
    "TokenRef",
    "loss_fields",
    "loss_kind",
]


class SumLoss(_Strict):
    sum: ValueSite
    """Sum of this site's value over the row's real tokens (and every other dimension)."""
    positions: Positions = None

    _site = field_validator("sum")(_value_site)


class MeanLoss(_Strict):
    mean: ValueSite
    """Mean of this site's value over the row's real tokens (and every other dimension)."""
    positions: Positions = None

    _site = field_validator("mean")(_value_site)


class TokenParams(_Strict):
    target: TokenRef
    position: int = -1
    """Position among the row's real tokens whose logits are read (the prediction of the next
    token); -1 is the last real token."""


class LogprobLoss(_Strict):
    logprob: TokenParams
    """log softmax of the logits at `position`, read at the target token."""


class LogitLoss(_Strict):
    logit: TokenParams
    """The raw logit of the target token at `position`."""


class DiffParams(_Strict):
    a: TokenRef
    b: TokenRef
    position: int = -1
    """Position among the row's real tokens whose logits are read; -1 is the last real token."""


class LogitDiffLoss(_Strict):
    logit_diff: DiffParams
    """logit[a] - logit[b] at `position` (e.g. the correct minus the wrong answer)."""


class CEParams(_Strict):
    reduction: Literal["mean", "sum"] = "mean"
    """Over the row's next-token predictions (its real tokens but the last)."""


class CrossEntropyLoss(_Strict):
    cross_entropy: CEParams
    """Next-token cross-entropy of the row's own tokens (language-model loss)."""


class ExprLoss(_Strict):
    expr: str
    """An expression giving one number per row (spec/expr.py): `x` is the row's value of
    `site`, e.g. "log_softmax(x[-1])[tok(' Paris')] - log_softmax(x[-1])[tok(' Rome')]"."""
    site: ValueSite = "logits"
    """The value `x` is: the logits by default, or any site (the row's real tokens only)."""
    let: dict[str, float | FileValue | NumberField] = {}
    """Names besides `x`: numbers, tensor files, the row's numbers from data columns."""

    _site = field_validator("site")(_value_site)

    @model_validator(mode="after")
    def _checked(self) -> ExprLoss:
        ExprValue(expr=self.expr, let=self.let)  # the same checks as any expression
        if string_args(check_expr(self.expr, set(self.let)), "at"):
            raise ValueError("a loss reads its own site: at() is not available in a loss")
        return self

    @property
    def value(self) -> ExprValue:
        return ExprValue(expr=self.expr, let=self.let)


_LOSS_KEYS = ("sum", "mean", "logprob", "logit", "logit_diff", "cross_entropy", "expr")


loss_kind = tag_by_key(_LOSS_KEYS)
"""The key a loss is tagged by (``logprob``, ``sum``…)."""


Loss = Annotated[
    Annotated[SumLoss, Tag("sum")]
    | Annotated[MeanLoss, Tag("mean")]
    | Annotated[LogprobLoss, Tag("logprob")]
    | Annotated[LogitLoss, Tag("logit")]
    | Annotated[LogitDiffLoss, Tag("logit_diff")]
    | Annotated[CrossEntropyLoss, Tag("cross_entropy")]
    | Annotated[ExprLoss, Tag("expr")],
    Discriminator(
        loss_kind,
        custom_error_type="loss",
        custom_error_message="a loss has exactly one of the keys " + ", ".join(_LOSS_KEYS),
    ),
]


class BackwardSpec(_Strict):
    loss: Loss
    """What is differentiated. Computed per row with padding masked out, then summed over the
    batch's rows: rows do not interact, so each row's gradients equal those of the row alone.
    Model parameters get no gradients."""


class GradOp(_Strict):
    grad: ValueSite
    """Site whose gradient (of backward.loss) this op saves, sets or attributes; a site that
    runs before the loss's own site."""
    positions: Positions = None
    as_: str | None = Field(None, alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Column name (default `<site>.grad`, or `<site>.attribution`)."""
    value: Value | None = None
    """Set the gradient instead of saving it: what flows further back (zeros, a number, noise,
    a file). Ops on one site apply in list order."""
    mode: Literal["replace", "add", "scale"] = "replace"
    """With `value`: replace (g = v), add (g = g + v) or scale (g = g * v)."""
    attribution: bool = False
    """Save activation × gradient summed over the last dimension: one number per position, the
    first-order estimate attribution patching uses."""
    dtype: Dtype | None = None
    """Cast the saved values; default: their own dtype."""
    reduce: Reduce | None = None
    """Reduce the saved gradient as a save's reduce does (norm, mean, argmax, {topk: k}, or an
    expression {expr: "norm(x)"}); not with value or attribution."""

    _site = field_validator("grad")(_value_site)

    @model_validator(mode="after")
    def _one_action(self) -> GradOp:
        if self.value is not None and self.attribution:
            raise ValueError("a grad op either sets the gradient (value) or saves an attribution")
        if isinstance(self.value, FromValue):
            raise ValueError("value: a gradient can be set to zeros, a number, noise or a file")
        if self.value is None and self.mode != "replace":
            raise ValueError("mode applies to a set gradient: give value as well")
        if self.value is not None and (self.as_ or self.dtype or self.reduce is not None):
            raise ValueError(
                "as, dtype and reduce are for a saved gradient; a grad op with value saves none"
            )
        if self.attribution and self.reduce is not None:
            raise ValueError("an attribution is already reduced (summed over the last dimension)")
        if metric_kind(self.reduce):
            raise ValueError("reduce on a gradient: norm, mean, argmax, {topk: k} or {expr}")
        return self

    @property
    def is_set(self) -> bool:
        return self.value is not None


def loss_fields(backward: BackwardSpec | None) -> list[tuple[str, str]]:
    """(data column, field path in the spec) for every token the loss takes from the data."""
    if backward is None:
        return []
    loss = backward.loss
    refs: list[tuple[str, Any]] = []
    if isinstance(loss, LogprobLoss):
        refs = [("logprob.target", loss.logprob.target)]
    elif isinstance(loss, LogitLoss):
        refs = [("logit.target", loss.logit.target)]
    elif isinstance(loss, LogitDiffLoss):
        refs = [("logit_diff.a", loss.logit_diff.a), ("logit_diff.b", loss.logit_diff.b)]
    return [(r.field, f"backward.loss.{where}") for where, r in refs if isinstance(r, FieldRef)]
