"""Resolve a spec's ops against a model: expand patterns and standardized names, order the ops by
the model's execution, and check every reference — collecting every problem, not the first.

The execution order comes from one forward pass of the meta-device model (no weights), recorded
as pre/post events per module. Ops on one site keep their list order (edits first).
"""

from __future__ import annotations

from typing import Any

from ..errors import RaysightError
from ..models.loading import LoadedModel
from ..spec.backward import ExprLoss, FieldRef, GradOp, MeanLoss, SumLoss, loss_kind
from ..spec.models import (
    CacheOp,
    ExprValue,
    FromValue,
    SaveOp,
    SetOp,
    SkipOp,
    Spec,
    TopK,
    Variant,
)
from ..spec.reduce import metric_refs, strings_name
from ..spec.sites import (
    SiteError,
    parse_module_site,
    parse_value_site,
)
from ..spec.variants import RESERVED
from .actions import GradAction, HookPlan, LossAction, SaveAction, SetAction, SkipAction, Target
from .expr import at_sites, token_texts
from .targets import expand, find_targets
from .tree import ModuleTree, sample_inputs, trace_tree

__all__ = [
    "GradAction",
    "HookPlan",
    "LossAction",
    "ModuleTree",
    "PlanError",
    "SaveAction",
    "SetAction",
    "SkipAction",
    "Target",
    "resolve_variant",
    "sample_inputs",
    "trace_tree",
]


class PlanError(RaysightError, ValueError):
    """The spec does not fit the model; ``problems`` lists each with the op it comes from."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        n = len(problems)
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} with the spec on this model:\n{body}")


class _Resolver:
    def __init__(self, spec: Spec, loaded: LoadedModel, tree: ModuleTree, variant: Variant):
        self.spec, self.loaded, self.tree, self.variant = spec, loaded, tree, variant
        self.problems: list[str] = []
        pairs = spec.data.pair.fields if spec.data.pair else []
        self.plan = HookPlan(tuple_outputs=dict(tree.tuple_outputs), pair_fields=list(pairs))
        self.source_uses: list[tuple[Target, str]] = []
        # identity columns (plan.identity_fields) and sweep axes: saves may not take their names
        self.reserved = (*RESERVED, *(spec.sweep or {}), *spec.data.keep)
        # a templated save's column is the same in every variant (spec.variants)
        self.column_of = {f"ops.{i}": name for i, name in variant.columns.items()}

    def fail(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def targets(
        self, site: str, where: str, call: int | None = None, write: bool = False
    ) -> list[Target]:
        """The concrete values a site names; ``write``: for a set or a gradient."""
        found, problems = find_targets(site, self.loaded, self.tree, call, write)
        for p in problems:
            self.fail(where, p)
        return [self._flat(t) for t in found]

    def _flat(self, target: Target) -> Target:
        if target.key in (self.tree.flat or ()):
            self.plan.token_flat.add(target.key)
        return target

    def modules(self, pattern: str, where: str) -> list[tuple[str, str]]:
        try:
            parse_module_site(pattern)
            return [(raw, shown) for raw, shown, _ in expand(pattern, self.loaded, self.tree)]
        except (SiteError, KeyError) as e:
            self.fail(where, str(e).strip("\"'"))
            return []

    def add(self, action: SaveAction | SetAction | GradAction) -> None:
        self.plan.actions.setdefault(action.target.key, []).append(action)

    def source(
        self, site: str, target_event: tuple[str, str], where: str, row: bool = False
    ) -> Target | None:
        """The site a value is copied from; it must run before the target (or, for a copy from
        a paired row, may be the target's own site: the partner's value is in the same call)."""
        found = self.targets(site, where)
        if len(found) != 1:
            if found:
                self.fail(where, f"'{site}' names {len(found)} sites; a source must name one")
            return None
        src = found[0]
        si = self.tree.event_index(*src.event)
        ti = self.tree.event_index(*target_event)
        if row and si == ti:
            return src  # read from the hooked value itself: nothing to keep
        if si is not None and ti is not None and si >= ti:
            self.fail(
                where,
                f"'{src.label}' is computed after the target '{target_event[1]}' "
                "runs, so it cannot be used there; pick a site that runs earlier",
            )
            return None
        self.plan.sources.add(src.key)
        self.source_uses.append((src, where))
        return src

    def at_sources(self, value: Any, tgt: Target, where: str) -> dict[str, Target]:
        """The sites an expression reads with at(), each kept from the forward (like `from`)."""
        if not isinstance(value, ExprValue):
            return {}
        found = {site: self.source(site, tgt.event, where) for site in at_sites(value)}
        return {site: src for site, src in found.items() if src is not None}

    def special(self) -> None:
        """The tokenizer's special ids, where a save leaves them out."""
        if not any(a.drop_special for a in self.plan.saves):
            return
        tok = self.loaded.tokenizer
        if tok is None:
            self.fail("ops", "special_tokens: drop needs a tokenizer (a token model)")
            return
        self.plan.special_ids = sorted(tok.all_special_ids)

    def resolve(self) -> HookPlan:
        self.loss()
        for i, op in enumerate(self.variant.edits):
            self.op(op, f"edits.{i}")
        for i, op in enumerate(self.variant.ops):
            self.op(op, f"ops.{i}")
        self.check_skips()
        self.check_columns()
        self.special()
        needed = [s.target for s in self.plan.saves]
        if self.plan.loss:
            needed.append(self.plan.loss.target)
        self.generation()
        saves = [self.tree.event_index(*t.event) for t in needed]
        once = all(t.call is None for t in needed)  # event_index finds a module's first call
        if saves and None not in saves and self.spec.generate is None and once:
            self.plan.stop_event = self.tree.events[max(saves)]
        if self.problems:
            raise PlanError(self.problems)
        return self.plan

    def op(self, op: Any, where: str) -> None:
        for key in ("value", "reduce"):  # an expression's tok('text') lookups, once per plan
            v = getattr(op, key, None)
            for text in token_texts(v) if isinstance(v, ExprValue) else ():
                if self.loaded.tokenizer is None:
                    self.fail(f"{where}.{key}.expr", "tok() needs a model with a tokenizer")
                    break
                self.plan.expr_tokens[text] = self.token(text, f"{where}.{key}.expr")
        if isinstance(op, SaveOp):
            self.save(op, where)
        elif isinstance(op, CacheOp) and op.cache == "*":
            self.cache_all(op, where)
        elif isinstance(op, CacheOp):
            for raw, shown in self.modules(op.cache, where):
                name = f"{op.as_}.{shown}" if op.as_ else self.column_of.get(where, shown)
                std = self.loaded.names.translate(op.cache)[1]
                tgt = self._flat(Target(raw, "output", std, (), shown))
                self.saves_add(
                    SaveAction(tgt, name, op.positions, [], None, op.dtype, where, op.steps)
                )
        elif isinstance(op, SetOp):
            if op.positions is not None and "[" in op.set:
                self.fail(where, "use positions or an index selector on a set, not both")
            for tgt in self.targets(op.set, f"{where}.set", op.call, write=True):
                value, row = op.value, None
                if isinstance(value, FromValue):
                    row = value.from_.row
                    src = self.source(value.from_.site, tgt.event, f"{where}.value.from", bool(row))
                    if src is None:
                        continue
                    value = src
                from_row = None if row is None else self.plan.pair_fields.index(row)
                act = SetAction(
                    tgt, value, op.mode, op.positions, where, op.steps, from_row=from_row
                )
                act.at = self.at_sources(value, tgt, f"{where}.value.expr")
                self.add(act)
        elif isinstance(op, SkipOp):
            self.skip(op, where)
        elif isinstance(op, GradOp):
            self.grad(op, where)

    def cache_all(self, op: CacheOp, where: str) -> None:
        """``cache: "*"``: every module whose output is a tensor (or a tuple led by one, whose
        first item is saved), as nnsight's ``tracer.cache()``; the others are listed in the
        plan's ``skipped`` with the reason."""
        kinds = self.tree.outputs or {}
        for raw in self.tree.children:
            if not raw:
                continue
            calls = self.tree.calls.get(raw, 0)
            kind = kinds.get(raw)
            if calls == 0:
                reason = "not called in a forward pass"
            elif calls > 1:
                reason = f"called {calls} times per forward (save one call with `call: k`)"
            elif not kind or not kind.startswith(("tensor", "tuple")):
                reason = f"returns {kind}, not a tensor"
            elif op.positions is not None and not kind.endswith("+seq"):
                reason = "its value has no sequence dimension for positions"
            else:
                name = f"{op.as_}.{raw}" if op.as_ else raw
                tgt = self._flat(Target(raw, "output", True, (), raw))
                self.saves_add(
                    SaveAction(tgt, name, op.positions, [], None, op.dtype, where, op.steps)
                )
                continue
            self.plan.skipped.append(f"{where} (cache '*'): {raw}: {reason}")

    def generation(self) -> None:
        gen = self.spec.generate
        if gen is None:
            return
        if self.loaded.kind != "causal":
            self.fail("generate", "generation needs a causal language model")
            return
        self.plan.generate = gen
        eos = self.loaded.tokenizer.eos_token_id
        stops = [self.token(t, f"generate.stop.{i}") for i, t in enumerate(gen.stop or [])]
        if eos is None and not stops:
            self.fail("generate.stop", "the tokenizer has no EOS token; list stop tokens")
        self.plan.stop_ids = ([] if eos is None else [eos]) + stops

    # -------------------------------------------------------------- gradients
    def loss(self) -> None:
        if self.spec.backward is None:
            return
        loss = self.spec.backward.loss
        kind = loss_kind(loss)
        where = f"backward.loss.{kind}"
        params = getattr(loss, kind)
        if isinstance(loss, ExprLoss):
            found = self.targets(loss.site, f"{where}.site")
            if len(found) != 1:
                if found:
                    self.fail(where, f"'{loss.site}' names {len(found)} sites; a loss reads one")
                return
            for text in token_texts(loss.value):
                self.plan.expr_tokens[text] = self.token(text, where)
            self.plan.loss = LossAction(kind, found[0], None, -1, {}, "", where, loss.value)
            return
        if isinstance(loss, (SumLoss, MeanLoss)):
            found = self.targets(params, where)
            if len(found) != 1:
                if found:
                    self.fail(where, f"'{params}' names {len(found)} sites; a loss reads one")
                return
            self.plan.loss = LossAction(kind, found[0], loss.positions, -1, {}, "", where)
            return
        if self.loaded.kind != "causal":
            self.fail(where, f"a {kind} loss reads a language model's logits; this model has none")
            return
        found = self.targets("logits", where)
        if not found:
            return
        refs = {"target": getattr(params, "target", None)}
        if kind == "logit_diff":
            refs = {"a": params.a, "b": params.b}
        tokens = {}
        for name, ref in refs.items():
            if ref is not None:
                tokens[name] = self.token(ref, f"{where}.{name}")
        position = getattr(params, "position", -1)
        reduction = getattr(params, "reduction", "")
        self.plan.loss = LossAction(kind, found[0], None, position, tokens, reduction, where)

    def token(self, ref: Any, where: str) -> Any:
        if isinstance(ref, FieldRef):
            return ("field", ref.field)
        if isinstance(ref, int):
            vocab = len(self.loaded.tokenizer)
            if not 0 <= ref < vocab:
                self.fail(where, f"token id {ref} is outside the vocabulary (0..{vocab - 1})")
            return ref
        ids = self.loaded.tokenizer(ref, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            self.fail(where, f"{ref!r} is {len(ids)} tokens ({ids}); a target must be one token")
            return 0
        return ids[0]

    def grad(self, op: GradOp, where: str) -> None:
        loss = self.plan.loss
        pattern = parse_value_site(op.grad).is_pattern
        kind = "set" if op.is_set else "attribution" if op.attribution else "save"
        for tgt in self.targets(op.grad, f"{where}.grad", write=True):
            if loss is not None:
                gi = self.tree.event_index(*tgt.event)
                li = self.tree.event_index(*loss.target.event)
                if gi is not None and li is not None and gi > li:
                    self.fail(
                        f"{where}.grad",
                        f"'{tgt.label}' is computed after the loss's site '{loss.target.label}' "
                        f"({loss.where}), so the loss cannot depend on it",
                    )
                    continue
            save = None
            if kind != "set":
                suffix = "grad" if kind == "save" else "attribution"
                if op.as_ and pattern:
                    name = f"{op.as_}.{_wild_values(op.grad, tgt.label)}"
                else:
                    name = op.as_ or self.column_of.get(where, f"{tgt.label}.{suffix}")
                save = SaveAction(tgt, name, op.positions, [], op.reduce, op.dtype, where)
                save.at = self.at_sources(op.reduce, tgt, f"{where}.reduce.expr")
                self.plan.saves.append(save)
            self.add(GradAction(tgt, kind, save, op.value, op.mode, op.positions, where))

    def save(self, op: SaveOp, where: str) -> None:
        found = self.targets(op.save, f"{where}.save", op.call)
        pattern = parse_value_site(op.save).is_pattern
        apply = []
        for m in op.apply:
            if not isinstance(m, str):  # an SAE's encoder
                apply.append(m)
                continue
            mods = self.modules(m, f"{where}.apply")
            if len(mods) > 1:
                self.fail(f"{where}.apply", f"'{m}' names {len(mods)} modules; name one")
            apply += [raw for raw, _ in mods[:1]]
        refs = metric_refs(op.reduce)
        tokens = {k: self.token(r, f"{where}.reduce.{k}") for k, r in refs.items()} or None
        for tgt in found:
            if op.as_ and pattern:
                name = f"{op.as_}.{_wild_values(op.save, tgt.label)}"
            else:
                name = op.as_ or self.column_of.get(where, tgt.label)
            act = SaveAction(
                tgt, name, op.positions, apply, op.reduce, op.dtype, where, op.steps, tokens
            )
            act.drop_special = op.special_tokens == "drop"
            act.at = self.at_sources(op.reduce, tgt, f"{where}.reduce.expr")
            self.saves_add(act)

    def saves_add(self, action: SaveAction) -> None:
        self.plan.saves.append(action)
        self.add(action)

    def skip(self, op: SkipOp, where: str) -> None:
        for raw, _shown in self.modules(op.skip, f"{where}.skip"):
            if raw in self.plan.skips:
                self.fail(where, f"'{raw}' is already skipped by {self.plan.skips[raw][0].where}")
                continue
            with_: Any = op.with_
            if isinstance(with_, str):
                with_ = self.source(with_, ("pre", raw), f"{where}.with")
                if with_ is None:
                    continue
            elif isinstance(with_, FromValue):
                with_ = self.source(with_.from_.site, ("pre", raw), f"{where}.with.from")
                if with_ is None:
                    continue
            self.plan.skips[raw] = [SkipAction(raw, with_, where, op.steps)]

    def check_skips(self) -> None:
        uses = [(a.target, a.where) for acts in self.plan.actions.values() for a in acts]
        if self.plan.loss:
            uses.append((self.plan.loss.target, self.plan.loss.where))
        for raw, (sk,) in self.plan.skips.items():
            for tgt, where in uses + self.source_uses:
                if tgt.module.startswith(raw + "."):
                    self.fail(
                        where,
                        f"'{tgt.label}' is never computed: its module is inside '{raw}', "
                        f"which {sk.where} skips",
                    )

    def check_columns(self) -> None:
        seen: dict[str, str] = {}
        for s in self.plan.saves:
            names = [s.column]
            if isinstance(s.reduce, TopK):
                names = [f"{s.column}_ids", f"{s.column}_values"]
            if isinstance(s.reduce, TopK) or s.reduce == "argmax":  # ids: strings may go along
                names.append(strings_name(names[0]))
            for name in names:
                if name in self.reserved:
                    self.fail(
                        s.where,
                        f"column '{name}' is an identity column, sweep axis or data.keep "
                        "column; pick another `as`",
                    )
                elif name in seen:
                    self.fail(
                        s.where,
                        f"column '{name}' is also written by {seen[name]}; "
                        "give one of them another `as`",
                    )
                seen.setdefault(name, s.where)


def _wild_values(pattern_site: str, label: str) -> str:
    pat = parse_value_site(pattern_site).module.split(".")
    got = parse_value_site(label).module.split(".")
    return ".".join(g for p, g in zip(pat, got) if p == "*" or ":" in p)


def resolve_variant(
    spec: Spec, loaded: LoadedModel, tree: ModuleTree, variant: Variant
) -> HookPlan:
    """The hook plan for one sweep variant of ``spec``; raises :class:`PlanError` with every
    problem."""
    return _Resolver(spec, loaded, tree, variant).resolve()
