"""Generation as data: the ``generate:`` section and the ``steps`` every op can take.

Step 0 is the prompt pass (every prompt token); step k ≥ 1 is the forward pass that reads the
k-th generated token under the KV cache (one token per row). ``steps`` picks which of those
passes an op applies to, as nnsight's ``tracer.iter[...]`` / ``tracer.all()`` do; an op without
``steps`` applies to step 0 only, as an nnsight intervention outside ``iter`` does.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from ._base import _Strict

__all__ = ["GenerateSpec", "Steps", "parse_steps", "step_range"]


def parse_steps(v: int | str) -> tuple[int, int | None, int]:
    """(start, stop, step) of a steps selector: ``all``, ``3``, ``"2:5"``, ``"::2"``, ``"1:"``."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(
            f"steps is all, a step number or a slice like '2:5' or '::2', not a {type(v).__name__}"
        )
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"steps {v}: steps count from 0 (the prompt pass)")
        return (v, v + 1, 1)
    text = v.strip()
    if text == "all":
        return (0, None, 1)
    if text.lstrip("-").isdigit():
        return parse_steps(int(text))
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"steps {v!r}: use all, a step number or a slice like '2:5' or '::2'")
    try:
        nums = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(f"steps {v!r}: slice parts must be whole numbers") from None
    start, stop = nums[0] or 0, nums[1]
    step = nums[2] if len(nums) == 3 and nums[2] is not None else 1
    if start < 0 or (stop is not None and stop < 0):
        raise ValueError(f"steps {v!r}: negative steps are not supported (steps count from 0)")
    if step < 1:
        raise ValueError(f"steps {v!r}: the slice step must be 1 or more")
    if stop is not None and stop <= start:
        raise ValueError(f"steps {v!r} selects no step")
    return (start, stop, step)


def _check_steps(v: int | str | None) -> int | str | None:
    if v is not None:
        parse_steps(v)
    return v


Steps = Annotated[
    int | str | None,
    BeforeValidator(_check_steps),
    Field(
        description="Generation steps the op applies to: all, a step number, or a slice like "
        "'2:5' or '::2'. Step 0 is the prompt pass, step k the pass reading the k-th new token. "
        "Default: step 0 only (as nnsight outside tracer.iter)."
    ),
]


def step_range(steps: int | str | None, n_steps: int) -> range:
    """The steps (of ``n_steps`` forward passes) a selector picks; None means step 0."""
    start, stop, step = parse_steps(0 if steps is None else steps)
    return range(start, min(n_steps, stop if stop is not None else n_steps), step)


class GenerateSpec(_Strict):
    max_new_tokens: int = Field(ge=1, le=65536)
    """Tokens to generate per row: the forward passes are steps 0 … max_new_tokens - 1."""
    do_sample: bool = False
    """false: greedy; true: sample, each row from its own generator seeded by (seed, example_id),
    so a row's tokens do not depend on its batch."""
    seed: int = Field(0, ge=0)
    """Sampling seed."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_k: int | None = Field(None, ge=1)
    """Sample among the k most likely tokens only."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Sample among the most likely tokens whose probabilities sum to top_p (nucleus)."""
    stop: list[int | str] | None = None
    """Tokens that end a row besides the tokenizer's EOS (ids, or texts of exactly one token).
    A row that stops early has fewer steps; its later steps are missing, never padded."""

    @field_validator("stop")
    @classmethod
    def _nonempty(cls, v: list[int | str] | None) -> list[int | str] | None:
        if v is not None and not v:
            raise ValueError("stop is empty; omit it to stop at the tokenizer's EOS only")
        return v
