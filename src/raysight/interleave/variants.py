"""Resolve every sweep variant of a spec and merge their hook plans into one.

An action that is the same in every variant runs once on the whole batch; one that differs
(a templated site or value) carries the set of variants it belongs to, and the interleaver runs
it on those rows only. So all variants of a row share one batched forward pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..models.loading import LoadedModel
from ..spec.models import Spec, Variant
from .actions import HookPlan, SaveAction
from .resolve import ModuleTree, PlanError, resolve_variant

__all__ = ["merge", "resolve"]


def resolve(spec: Spec, loaded: LoadedModel, tree: ModuleTree) -> HookPlan:
    """The hook plan for ``spec`` on this model; raises :class:`PlanError` with every problem,
    each once, naming the sweep point(s) where it appears."""
    plans: list[HookPlan] = []
    found: dict[str, list[Variant]] = {}
    for variant in spec.variants:
        try:
            plans.append(resolve_variant(spec, loaded, tree, variant))
        except PlanError as e:
            for p in e.problems:
                found.setdefault(p, []).append(variant)
    n = len(spec.variants)
    problems = [_at_points(p, vs, n) for p, vs in found.items()]
    if problems:
        raise PlanError(problems)
    return merge(plans, tree)


def _at_points(problem: str, variants: list[Variant], n: int) -> str:
    if n == 1 or len(variants) == n:
        return problem
    more = f" and {len(variants) - 1} more" if len(variants) > 1 else ""
    return f"{problem} (sweep point {variants[0].label}{more})"


def merge(plans: list[HookPlan], tree: ModuleTree) -> HookPlan:
    """One plan running every variant's actions, each on its variants' rows."""
    if len(plans) == 1:
        return plans[0]
    first = plans[0]
    out = HookPlan(
        tuple_outputs=first.tuple_outputs,
        loss=first.loss,
        generate=first.generate,
        stop_ids=first.stop_ids,
        pair_fields=first.pair_fields,
    )
    everyone = set(range(len(plans)))
    for key in dict.fromkeys(k for p in plans for k in p.actions):
        out.actions[key] = _union([p.actions.get(key, []) for p in plans], everyone)
    for module in dict.fromkeys(m for p in plans for m in p.skips):
        out.skips[module] = _union([p.skips.get(module, []) for p in plans], everyone)
    out.sources = set().union(*(p.sources for p in plans))
    saves: dict[str, SaveAction] = {}
    for p in plans:
        for s in p.saves:
            saves.setdefault(s.column, s)
    out.saves = list(saves.values())
    events = [p.stop_event for p in plans]
    if None not in events:
        out.stop_event = max(events, key=lambda e: tree.event_index(*e))
    if out.generate is not None:
        partial = [s for sks in out.skips.values() for s in sks if s.variants is not None]
        if partial:
            raise PlanError(
                [
                    f"{partial[0].where}: a skip that only some sweep variants make cannot run "
                    "during generate (the skipped rows' KV cache would still be written)"
                ]
            )
    return out


def _union(per_variant: list[list[Any]], everyone: set[int]) -> list[Any]:
    """The distinct actions, in op order, each with the variants that have it."""
    merged: list[tuple[Any, set[int]]] = []
    for k, acts in enumerate(per_variant):
        for a in acts:
            for m in merged:
                if m[0] == a:
                    m[1].add(k)
                    break
            else:
                merged.append((a, {k}))
    merged.sort(key=lambda m: _order(m[0].where))
    return [replace(a, variants=None if vs == everyone else frozenset(vs)) for a, vs in merged]


def _order(where: str) -> tuple[int, int]:
    section, index = where.split(".")[:2]
    return (0 if section == "edits" else 1, int(index))
