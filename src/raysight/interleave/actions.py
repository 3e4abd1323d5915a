"""What a resolved spec asks of one forward pass: the actions per hooked value, the skips, the
values kept as sources, the loss. Built by :mod:`.resolve`, executed by :mod:`.interleaver`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec.models import TopK

__all__ = [
    "GradAction",
    "HookPlan",
    "LossAction",
    "SaveAction",
    "SetAction",
    "SkipAction",
    "Target",
]


@dataclass(frozen=True)
class Target:
    module: str  # raw, concrete
    attr: str  # output | input | inputs
    primary: bool  # standardized name: a tuple output means its element 0
    index: tuple
    label: str  # the concrete site as the user's namespace writes it
    call: int | None = None  # which call of a module run more than once per forward

    @property
    def event(self) -> tuple[str, str]:
        """When the value exists: ("post", module) for outputs, ("pre", module) for inputs."""
        return ("post" if self.attr == "output" else "pre", self.module)

    @property
    def key(self) -> tuple[str, str]:
        """Which hook handles it: (attr, module)."""
        return (self.attr, self.module)


@dataclass
class SaveAction:
    target: Target
    column: str
    positions: list[int] | None
    apply: list[str]
    reduce: Any
    dtype: str | None
    where: str
    steps: int | str | None = None  # generation steps (None: step 0)
    tokens: dict[str, Any] | None = None  # metric reduce: a/b/token -> id or ("field", column)
    variants: frozenset[int] | None = None  # sweep variants it applies to (None: all)
    drop_special: bool = False  # leave the tokenizer's special tokens out (HookPlan.special_ids)
    # the hooked tensor's dims that hold tokens, where not dim 1 alone (attention weights: the
    # query and key dims); measured by the plan's probe (engine/plan.py)
    token_dims: tuple[int, ...] | None = None
    at: dict[str, Target] = field(default_factory=dict)  # an expression's at('site') sources


@dataclass
class SetAction:
    target: Target
    value: Any  # a spec value, or a Target for `from`
    mode: str
    positions: list[int] | None
    where: str
    steps: int | str | None = None  # generation steps (None: step 0)
    from_row: int | None = None  # `from.row`: the pair member the value is copied from
    variants: frozenset[int] | None = None
    at: dict[str, Target] = field(default_factory=dict)  # an expression's at('site') sources


@dataclass
class SkipAction:
    module: str
    with_: Any  # Target, a spec value, or None (identity)
    where: str
    steps: int | str | None = None  # generation steps (None: step 0)
    variants: frozenset[int] | None = None


@dataclass
class GradAction:
    target: Target
    kind: str  # save | set | attribution
    out: SaveAction | None  # the column it writes (save, attribution)
    value: Any  # set: the spec value
    mode: str
    positions: list[int] | None
    where: str
    variants: frozenset[int] | None = None


@dataclass
class LossAction:
    kind: str  # sum | mean | logprob | logit | logit_diff | cross_entropy | expr
    target: Target  # the site read: logits for token losses
    positions: list[int] | None  # sum / mean
    position: int  # token losses: which real position's logits
    tokens: dict[str, Any]  # a / b / target -> token id, or ("field", column)
    reduction: str  # cross_entropy
    where: str
    expr: Any = None  # an expression loss's ExprValue


@dataclass
class HookPlan:
    actions: dict[tuple[str, str], list[SaveAction | SetAction | GradAction]] = field(
        default_factory=dict
    )
    skips: dict[str, list[SkipAction]] = field(default_factory=dict)  # per variant set
    sources: set[tuple[str, str]] = field(default_factory=set)  # (attr, module) values kept
    saves: list[SaveAction] = field(default_factory=list)
    stop_event: tuple[str, str] | None = None
    tuple_outputs: dict[str, int] = field(default_factory=dict)
    loss: LossAction | None = None
    generate: Any = None  # the spec's GenerateSpec when generating
    stop_ids: list[int] = field(default_factory=list)  # tokens that end a generated row
    pair_fields: list[str] = field(default_factory=list)  # data.pair.fields, by member index
    skipped: list[str] = field(default_factory=list)  # what `cache: "*"` left out, and why
    special_ids: list[int] = field(default_factory=list)  # for saves with special_tokens: drop
    # (attr, module) values laid out [batch × tokens, ...]: viewed as [batch, seq, ...] for ops
    token_flat: set[tuple[str, str]] = field(default_factory=set)
    expr_tokens: dict[str, int] = field(default_factory=dict)  # tok('text') -> id, expressions

    @property
    def hooked(self) -> set[tuple[str, str]]:
        """Every (attr, module) a hook reads or writes."""
        keys = self.actions.keys() | self.sources
        return keys | {self.loss.target.key} if self.loss else keys

    @property
    def columns(self) -> list[str]:
        out = []
        for s in self.saves:
            out += (
                [f"{s.column}_ids", f"{s.column}_values"]
                if isinstance(s.reduce, TopK)
                else [s.column]
            )
        return out
