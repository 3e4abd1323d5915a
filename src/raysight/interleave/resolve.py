"""Resolve a spec's ops against a model: expand patterns and standardized names, order the ops by
the model's execution, and check every reference — collecting every problem, not the first.

The execution order comes from one forward pass of the meta-device model (no weights), recorded
as pre/post events per module. Ops on one site keep their list order (edits first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.loading import LoadedModel, meta_safe
from ..spec.models import CacheOp, FromValue, SaveOp, SetOp, SkipOp, Spec, TopK
from ..spec.sites import SiteError, expand_module_pattern, parse_module_site, parse_value_site

__all__ = [
    "HookPlan",
    "ModuleTree",
    "PlanError",
    "SaveAction",
    "SetAction",
    "SkipAction",
    "Target",
    "resolve",
    "sample_inputs",
    "trace_tree",
]


class PlanError(ValueError):
    """The spec does not fit the model; ``problems`` lists each with the op it comes from."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        n = len(problems)
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} with the spec on this model:\n{body}")


@dataclass
class ModuleTree:
    children: dict[str, list[str]]
    events: list[tuple[str, str]]  # ("pre" | "post", module) in execution order
    calls: dict[str, int]
    tuple_outputs: dict[str, int]  # module -> tuple length, for modules returning tuples

    def event_index(self, kind: str, module: str) -> int | None:
        try:
            return self.events.index((kind, module))
        except ValueError:
            return None


@dataclass(frozen=True)
class Target:
    module: str  # raw, concrete
    attr: str  # output | input | inputs
    primary: bool  # standardized name: a tuple output means its element 0
    index: tuple
    label: str  # the concrete site as the user's namespace writes it

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


@dataclass
class SetAction:
    target: Target
    value: Any  # a spec value, or a Target for `from`
    mode: str
    positions: list[int] | None
    where: str


@dataclass
class SkipAction:
    module: str
    with_: Any  # Target, a spec value, or None (identity)
    where: str


@dataclass
class HookPlan:
    actions: dict[tuple[str, str], list[SaveAction | SetAction]] = field(default_factory=dict)
    skips: dict[str, SkipAction] = field(default_factory=dict)
    sources: set[tuple[str, str]] = field(default_factory=set)  # (attr, module) values kept
    saves: list[SaveAction] = field(default_factory=list)
    stop_event: tuple[str, str] | None = None
    tuple_outputs: dict[str, int] = field(default_factory=dict)

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


def sample_inputs(loaded: LoadedModel, sample: Any, length: int) -> dict[str, torch.Tensor]:
    """Forward inputs for one unpadded row: ``length`` token ids, or the sample tensor."""
    dev = loaded.device
    if loaded.kind == "tensor":
        return {"input": torch.as_tensor(sample, dtype=torch.float32).to(dev)[None]}
    ids = torch.zeros((1, length), dtype=torch.long, device=dev)
    inputs = {"input_ids": ids}
    if loaded.kind == "causal":
        inputs["position_ids"] = torch.arange(length, device=dev)[None]
    return inputs


def trace_tree(loaded: LoadedModel, sample: Any = None) -> ModuleTree:
    """Record children, call order and tuple outputs with one meta-device forward."""
    module = loaded.module
    children: dict[str, list[str]] = {}
    for name, mod in module.named_modules():
        children[name] = [k for k, _ in mod.named_children()]
    events: list[tuple[str, str]] = []
    calls: dict[str, int] = {}
    tuples: dict[str, int] = {}
    handles = []

    def pre(name: str):
        def hook(mod, args):
            events.append(("pre", name))
            calls[name] = calls.get(name, 0) + 1

        return hook

    def post(name: str):
        def hook(mod, args, out):
            events.append(("post", name))
            if isinstance(out, tuple) and type(out) is tuple:
                tuples[name] = len(out)

        return hook

    try:
        for name, mod in module.named_modules():
            if name:
                handles.append(mod.register_forward_pre_hook(pre(name)))
                handles.append(mod.register_forward_hook(post(name)))
        inputs = sample_inputs(loaded, sample, 6)
        with torch.inference_mode(), meta_safe(loaded):
            if loaded.kind == "tensor":
                module(inputs["input"])
            else:
                module(**inputs)
    finally:
        for h in handles:
            h.remove()
    return ModuleTree(children, events, calls, tuples)


def _expand(pattern: str, loaded: LoadedModel, tree: ModuleTree) -> list[tuple[str, str, bool]]:
    """(raw path, user-facing path, standardized) for each module a pattern names."""
    raw, standard = loaded.names.translate(pattern)
    found = expand_module_pattern(raw, tree.children)
    raw_parts, user_parts = raw.split("."), pattern.split(".")
    wild = [i for i, p in enumerate(raw_parts) if p == "*" or ":" in p]
    user_wild = [i for i, p in enumerate(user_parts) if p == "*" or ":" in p]
    out = []
    for path in found:
        parts = path.split(".")
        shown = list(user_parts)
        for ri, ui in zip(wild, user_wild):
            shown[ui] = parts[ri]
        out.append((path, ".".join(shown), standard))
    return out


class _Resolver:
    def __init__(self, spec: Spec, loaded: LoadedModel, tree: ModuleTree):
        self.spec, self.loaded, self.tree = spec, loaded, tree
        self.problems: list[str] = []
        self.plan = HookPlan(tuple_outputs=dict(tree.tuple_outputs))
        self.source_uses: list[tuple[Target, str]] = []

    #: identity columns every dataset has (plan.identity_fields); saves may not take their names
    RESERVED = ("example_id", "n_tokens", "input_ids", "text", "position", "token_id")

    def fail(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def targets(self, site: str, where: str) -> list[Target]:
        try:
            s = parse_value_site(site)
            found = _expand(s.module, self.loaded, self.tree)
        except (SiteError, KeyError) as e:
            self.fail(where, str(e).strip("\"'"))
            return []
        out = []
        for raw, shown, standard in found:
            if self.tree.calls.get(raw, 0) == 0:
                self.fail(where, f"module '{raw}' is not called in a forward pass")
                continue
            if self.tree.calls[raw] > 1:
                self.fail(
                    where,
                    f"module '{raw}' runs {self.tree.calls[raw]} times per forward; "
                    "ops on modules called more than once are not supported",
                )
                continue
            label = str(s.with_module(shown)) if s.module != "logits" else "logits"
            out.append(Target(raw, s.attr or "output", standard, s.index, label))
        return out

    def modules(self, pattern: str, where: str) -> list[tuple[str, str]]:
        try:
            parse_module_site(pattern)
            return [(raw, shown) for raw, shown, _ in _expand(pattern, self.loaded, self.tree)]
        except (SiteError, KeyError) as e:
            self.fail(where, str(e).strip("\"'"))
            return []

    def add(self, action: SaveAction | SetAction) -> None:
        self.plan.actions.setdefault(action.target.key, []).append(action)

    def source(self, site: str, target_event: tuple[str, str], where: str) -> Target | None:
        found = self.targets(site, where)
        if len(found) != 1:
            if found:
                self.fail(where, f"'{site}' names {len(found)} sites; a source must name one")
            return None
        src = found[0]
        si = self.tree.event_index(*src.event)
        ti = self.tree.event_index(*target_event)
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

    def resolve(self) -> HookPlan:
        for i, op in enumerate(self.spec.edits):
            self.op(op, f"edits.{i}")
        for i, op in enumerate(self.spec.ops):
            self.op(op, f"ops.{i}")
        self.check_skips()
        self.check_columns()
        saves = [self.tree.event_index(*s.target.event) for s in self.plan.saves]
        if saves and None not in saves:
            self.plan.stop_event = self.tree.events[max(saves)]
        if self.problems:
            raise PlanError(self.problems)
        return self.plan

    def op(self, op: Any, where: str) -> None:
        if isinstance(op, SaveOp):
            self.save(op, where)
        elif isinstance(op, CacheOp):
            for raw, shown in self.modules(op.cache, where):
                name = f"{op.as_}.{shown}" if op.as_ else shown
                tgt = Target(raw, "output", self.loaded.names.translate(op.cache)[1], (), shown)
                self.saves_add(SaveAction(tgt, name, op.positions, [], None, op.dtype, where))
        elif isinstance(op, SetOp):
            if op.positions is not None and "[" in op.set:
                self.fail(where, "use positions or an index selector on a set, not both")
            for tgt in self.targets(op.set, f"{where}.set"):
                value = op.value
                if isinstance(value, FromValue):
                    value = self.source(value.from_.site, tgt.event, f"{where}.value.from")
                    if value is None:
                        continue
                self.add(SetAction(tgt, value, op.mode, op.positions, where))
        elif isinstance(op, SkipOp):
            self.skip(op, where)

    def save(self, op: SaveOp, where: str) -> None:
        found = self.targets(op.save, f"{where}.save")
        pattern = parse_value_site(op.save).is_pattern
        apply = []
        for m in op.apply:
            mods = self.modules(m, f"{where}.apply")
            if len(mods) > 1:
                self.fail(f"{where}.apply", f"'{m}' names {len(mods)} modules; name one")
            apply += [raw for raw, _ in mods[:1]]
        for tgt in found:
            if op.as_ and pattern:
                name = f"{op.as_}.{_wild_values(op.save, tgt.label)}"
            else:
                name = op.as_ or tgt.label
            self.saves_add(SaveAction(tgt, name, op.positions, apply, op.reduce, op.dtype, where))

    def saves_add(self, action: SaveAction) -> None:
        self.plan.saves.append(action)
        self.add(action)

    def skip(self, op: SkipOp, where: str) -> None:
        for raw, _shown in self.modules(op.skip, f"{where}.skip"):
            if raw in self.plan.skips:
                self.fail(where, f"'{raw}' is already skipped by {self.plan.skips[raw].where}")
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
            self.plan.skips[raw] = SkipAction(raw, with_, where)

    def check_skips(self) -> None:
        uses = [(a.target, a.where) for acts in self.plan.actions.values() for a in acts]
        for raw, sk in self.plan.skips.items():
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
            names = [f"{s.column}_ids", f"{s.column}_values"]
            for name in names if isinstance(s.reduce, TopK) else [s.column]:
                if name in self.RESERVED:
                    self.fail(s.where, f"column '{name}' is an identity column; pick another `as`")
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


def resolve(spec: Spec, loaded: LoadedModel, tree: ModuleTree) -> HookPlan:
    """The hook plan for ``spec`` on this model; raises :class:`PlanError` with every problem."""
    return _Resolver(spec, loaded, tree).resolve()
