"""``reduce`` on a save: shrink the last dimension before writing.

argmax, norm and mean are plain reductions; ``topk`` keeps ids and values; the metrics read a
language model's logits at given tokens (the numbers a patching grid reports per cell): the
logit difference of two tokens, or a token's probability or log-probability.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from ._base import _Strict, tag_by_key
from .tokens import TokenRef
from .values import ExprValue

__all__ = [
    "LogitDiffReduce",
    "LogprobReduce",
    "ProbReduce",
    "Reduce",
    "TopK",
    "metric_kind",
    "metric_refs",
    "strings_name",
]


class TopK(_Strict):
    topk: int = Field(ge=1, le=100_000)
    """Keep the k largest entries of the last dimension: `<as>_ids` and `<as>_values` columns."""


class TokenPair(_Strict):
    a: TokenRef
    b: TokenRef


class LogitDiffReduce(_Strict):
    logit_diff: TokenPair
    """logit[a] - logit[b] of the last dimension (the vocabulary), per position."""


class ProbReduce(_Strict):
    prob: TokenRef
    """The softmax probability of the token over the last dimension, per position."""


class LogprobReduce(_Strict):
    logprob: TokenRef
    """The log-softmax of the last dimension at the token, per position."""


_tag = tag_by_key(("topk", "logit_diff", "prob", "logprob", "expr"))
Reduce = Annotated[
    Annotated[Literal["argmax", "norm", "mean"], Tag("name")]
    | Annotated[TopK, Tag("topk")]
    | Annotated[ExprValue, Tag("expr")]
    | Annotated[LogitDiffReduce, Tag("logit_diff")]
    | Annotated[ProbReduce, Tag("prob")]
    | Annotated[LogprobReduce, Tag("logprob")],
    Discriminator(
        lambda v: "name" if isinstance(v, str) else _tag(v),
        custom_error_type="reduce",
        custom_error_message="reduce is argmax, norm, mean, {topk: k}, {logit_diff: {a, b}}, "
        "{prob: token}, {logprob: token} or {expr, let}",
    ),
]


def metric_refs(reduce: Any) -> dict[str, Any]:
    """The token references a metric reduce reads, by name (a, b or token); {} otherwise."""
    if isinstance(reduce, LogitDiffReduce):
        return {"a": reduce.logit_diff.a, "b": reduce.logit_diff.b}
    if isinstance(reduce, ProbReduce):
        return {"token": reduce.prob}
    if isinstance(reduce, LogprobReduce):
        return {"token": reduce.logprob}
    return {}


def metric_kind(reduce: Any) -> str | None:
    """logit_diff, prob or logprob for a metric reduce; None otherwise."""
    kinds = {LogitDiffReduce: "logit_diff", ProbReduce: "prob", LogprobReduce: "logprob"}
    return kinds.get(type(reduce))


def strings_name(ids_column: str) -> str:
    """The column of decoded tokens beside a column of token ids: ``lens_ids`` (topk) ->
    ``lens_tokens``, ``top`` (argmax) -> ``top_tokens``."""
    return ids_column.removesuffix("_ids") + "_tokens"
