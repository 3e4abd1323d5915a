"""From a site's text to the concrete values it names on one model: patterns and standardized
names expanded to raw modules, ``root`` (the model itself), a layer's ``resid_mid`` (the
standardized value that holds it), and the call of a module run more than once per forward."""

from __future__ import annotations

from ..models.loading import LoadedModel
from ..spec.sites import ROOT, Site, SiteError, expand_module_pattern, parse_value_site
from .actions import Target
from .tree import ModuleTree

__all__ = ["expand", "find_targets"]


def expand(pattern: str, loaded: LoadedModel, tree: ModuleTree) -> list[tuple[str, str, bool]]:
    """(raw path, user-facing path, standardized) for each module a pattern names."""
    if pattern == ROOT:  # the model itself, on any model: its output's primary value leads
        return [("", ROOT, True)]
    raw, standard = loaded.names.translate(pattern)
    if raw == "":  # a standardized name for what the model returns (Gemma 2's logits)
        return [("", pattern, standard)]
    try:
        found = expand_module_pattern(raw, tree.children)
    except SiteError:  # a near miss of a standardized name says so first
        hint = loaded.names.suggest(pattern)
        if hint is None:
            raise
        raise SiteError(hint) from None
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


def find_targets(
    site: str, loaded: LoadedModel, tree: ModuleTree, call: int | None, write: bool
) -> tuple[list[Target], list[str]]:
    """The targets ``site`` names, and what is wrong with it (``write``: for a set or a
    gradient, which a read-only value refuses)."""
    try:
        s = named = parse_value_site(site)
        if s.attr is None:  # layers.N.resid_mid: the standardized value holding it
            base, name = s.module.rsplit(".", 1)
            part, attr = loaded.names.derived(name, site)
            if write:
                raise KeyError(
                    f"{site} is read-only: it is the value of layers.N.{part}.{attr}, and "
                    "what is written there does not reach the residual stream; write "
                    "layers.N.attn.output (or layers.N.input) instead"
                )
            s = Site(f"{base}.{part}", attr, s.index)
        found = expand(s.module, loaded, tree)
    except (SiteError, KeyError) as e:
        return [], [str(e).strip("\"'")]
    out, problems = [], []
    for raw, shown, standard in found:
        n = tree.calls.get(raw, 0)
        if n == 0:
            problems.append(f"module '{raw}' is not called in a forward pass")
            continue
        if (n > 1 and call is None) or (call or 0) >= n:
            what = "choose one with `call: 0`" + (f" to `{n - 1}`" if n > 2 else " or `1`")
            problems.append(
                f"module '{raw}' runs {n} time{'s' if n > 1 else ''} per forward; "
                + (what if n > 1 else f"call {call} is out of range")
            )
            continue
        label = str(s.with_module(shown)) if s.module != "logits" else "logits"
        if named is not s:  # the user's name for it: layers.3.resid_mid
            label = label.replace(f".{part}.{attr}", f".{name}", 1)
        label += f".call{call}" if n > 1 else ""
        out.append(
            Target(raw, s.attr or "output", standard, s.index, label, call if n > 1 else None)
        )
    return out, problems
