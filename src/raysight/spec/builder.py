"""Build a spec in Python with nnsight-like syntax; it records ops, it runs nothing.

>>> b = SpecBuilder(model={"path": "models/smollm2"}, data={"prompts": ["Hello"]},
...                 output={"path": "out/demo"})
>>> with b.trace() as t:
...     t.layers[5].output.save("h5", positions=[-1])
...     t.layers[7].skip(t.layers[6].output)
...     t.layers[3].mlp.output[:, -1, :] = 0
...     t.layers[2].output += file("steer.npy", scale=4.0)
...     with t.backward({"logprob": {"target": " Paris"}}):
...         t.layers[4].output.grad.save("g4")
...         t.layers[1].output.grad *= 0.5
>>> spec = b.spec()            # a validated Spec; spec round-trips through YAML

Sweeps and pairs: ``b.sweep(layer=range(30))`` names an axis; ``t.layers["{layer}"]`` and the
value ``"{alpha}"`` are its placeholders. With ``data={"pair": {"fields": ["clean", "corrupt"]}…}``,
``x.of("clean")`` is the value ``x`` of the pair's clean row:
``t.layers["{layer}"].output.set(t.layers["{layer}"].output.of("clean"), positions=["{pos}"])``.

Module paths are the same strings a YAML spec uses: ``t.layers[5].mlp`` is ``layers.5.mlp``,
``t.layers["*"]`` a wildcard, ``t.layers[2:6]`` a range, ``t.model.layers[3]`` a raw path.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from .load import SpecError, dump_spec, parse_spec
from .models import Spec
from .sites import ATTRS, Slice, format_index
from .sweep import PLACEHOLDER

__all__ = ["GradRef", "ModuleRef", "SpecBuilder", "ValueRef", "file", "noise", "topk", "zeros"]


def zeros() -> dict[str, Any]:
    """Zeros shaped like the target."""
    return {"zeros": True}


def noise(std: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Gaussian noise; each row draws from (seed, example_id)."""
    return {"noise": {"std": std, "seed": seed}}


def file(path: str, key: str | None = None, scale: float = 1.0) -> dict[str, Any]:
    """A tensor from a .npy or .safetensors file."""
    params: dict[str, Any] = {"path": str(path), "scale": scale}
    if key is not None:
        params["key"] = key
    return {"file": params}


def topk(k: int) -> dict[str, int]:
    """``reduce=topk(5)``: keep the 5 largest entries of the last dimension."""
    return {"topk": k}


def _index_text(idx: Any) -> str:
    items = idx if isinstance(idx, tuple) else (idx,)
    out = []
    for it in items:
        if isinstance(it, slice):
            out.append(Slice(it.start, it.stop, it.step))
        elif it is ... or it is None or (isinstance(it, int) and not isinstance(it, bool)):
            out.append(it)
        else:
            raise TypeError(f"index items are ints, slices, ... or None; got {it!r}")
    return format_index(tuple(out))


def _value(v: Any) -> Any:
    if isinstance(v, ValueRef):
        return {"from": {"site": v.site, **({"row": v.row} if v.row else {})}}
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and PLACEHOLDER.fullmatch(v):
        return v  # a sweep placeholder such as "{alpha}"
    if isinstance(v, dict):
        return v
    raise TypeError(
        f"cannot use {type(v).__name__} as a value: use a number, zeros(), noise(), file() "
        "or another site (t.layers[2].output)"
    )


class _Pending:
    """What ``x += v`` / ``x *= v`` leaves behind until the assignment records it."""

    def __init__(self, mode: str, value: Any):
        self.mode, self.value = mode, value


def _steps_text(steps: Any) -> int | str:
    """Generation steps as a spec writes them: 2, "1:3", "::2" or "all" (a slice or a range
    from Python)."""
    if isinstance(steps, slice):
        parts = ["" if v is None else str(v) for v in (steps.start, steps.stop, steps.step)]
        return ":".join(parts[:2] if steps.step is None else parts)
    if isinstance(steps, range):
        return f"{steps.start}:{steps.stop}" + (f":{steps.step}" if steps.step != 1 else "")
    if isinstance(steps, bool) or not isinstance(steps, (int, str)):
        raise TypeError(f"steps={steps!r}: give an int, a slice, a range, 'all' or '1:3'")
    return steps


class _Recorder:
    def __init__(self, allowed: tuple[str, ...]):
        self.ops: list[dict[str, Any]] = []
        self.allowed = allowed
        self.backward: dict[str, Any] | None = None
        self.steps: int | str | None = None  # inside `with t.iter[...]`: the ops' steps

    def add(self, op: dict[str, Any]) -> None:
        kind = next(iter(op))
        if kind not in self.allowed:
            raise TypeError(f"{kind} is not allowed here (only {', '.join(self.allowed)})")
        if "steps" in op:
            op["steps"] = _steps_text(op["steps"])
        elif self.steps is not None and kind != "grad":
            op["steps"] = self.steps
        self.ops.append(op)

    def set(
        self, site: str, value: Any, positions: list[int] | None = None, steps: Any = None
    ) -> None:
        mode = "replace"
        if isinstance(value, _Pending):
            mode, value = value.mode, value.value
        op: dict[str, Any] = {"set": site, "value": _value(value), "mode": mode}
        if positions is not None:
            op["positions"] = positions if isinstance(positions, dict) else list(positions)
        if steps is not None:
            op["steps"] = steps
        self.add(op)


class ValueRef:
    """A value site (``….output``, ``….input``, ``….inputs``), possibly indexed."""

    def __init__(self, rec: _Recorder, site: str, row: str | None = None):
        self._rec, self.site, self.row = rec, site, row

    def __getitem__(self, idx: Any) -> ValueRef:
        return ValueRef(self._rec, self.site + _index_text(idx), self.row)

    def of(self, row: str) -> ValueRef:
        """This value in the pair's ``row`` (a data.pair field), as a source for a set."""
        return ValueRef(self._rec, self.site, row)

    def __setitem__(self, idx: Any, value: Any) -> None:
        self._rec.set(self.site + _index_text(idx), value)

    def __iadd__(self, value: Any) -> _Pending:
        return _Pending("add", value)

    def __imul__(self, value: Any) -> _Pending:
        return _Pending("scale", value)

    def save(
        self,
        name: str | None = None,
        *,
        positions: list[int] | None = None,
        apply: list[Any] | None = None,
        reduce: str | dict[str, int] | None = None,
        dtype: str | None = None,
        steps: Any = None,
        special_tokens: str | None = None,
    ) -> ValueRef:
        """Save this value (nnsight's ``.save()``), optionally through modules and a reduction;
        ``steps`` under ``generate``: 2, slice(1, None), "all"...; ``special_tokens="drop"``:
        the row's text tokens only."""
        op: dict[str, Any] = {"save": self.site}
        for key, val in (
            ("as", name),
            ("positions", positions),
            ("reduce", reduce),
            ("dtype", dtype),
            ("steps", steps),
            ("special_tokens", special_tokens),
        ):
            if val is not None:
                op[key] = list(val) if key == "positions" and not isinstance(val, dict) else val
        if apply:
            op["apply"] = [
                m.path if isinstance(m, ModuleRef) else m if isinstance(m, dict) else str(m)
                for m in apply
            ]
        self._rec.add(op)
        return self

    def set(
        self,
        value: Any,
        *,
        mode: str = "replace",
        positions: list[int] | None = None,
        steps: Any = None,
    ) -> None:
        """Write a value here; ``mode`` is replace, add or scale."""
        pending = value if mode == "replace" else _Pending(mode, value)
        self._rec.set(self.site, pending, positions, steps)

    @property
    def grad(self) -> GradRef:
        """This value's gradient of the backward loss (nnsight's ``x.grad``)."""
        return GradRef(self._rec, self.site)

    @grad.setter
    def grad(self, value: Any) -> None:
        self.grad.set(value)

    def __repr__(self) -> str:
        return f"ValueRef({self.site!r})"


class GradRef:
    """The gradient of a value site: save it, set it (``g[:] = 0``, ``x.grad *= 0.5``) or save
    an attribution (activation × gradient)."""

    def __init__(self, rec: _Recorder, site: str):
        self._rec, self.site = rec, site

    def _add(self, op: dict[str, Any], **extra: Any) -> None:
        op.update(
            {
                k: list(v) if k == "positions" and not isinstance(v, dict) else v
                for k, v in extra.items()
                if v is not None
            }
        )
        self._rec.add(op)

    def save(
        self,
        name: str | None = None,
        *,
        positions: list[int] | None = None,
        dtype: str | None = None,
    ) -> GradRef:
        """Save the gradient."""
        self._add({"grad": self.site}, **{"as": name, "positions": positions, "dtype": dtype})
        return self

    def attribution(self, name: str | None = None, *, positions: list[int] | None = None) -> None:
        """Save activation × gradient summed over the last dimension, per position."""
        self._add({"grad": self.site, "attribution": True}, **{"as": name, "positions": positions})

    def set(self, value: Any, *, mode: str = "replace", positions: list[int] | None = None) -> None:
        """Replace, add to or scale the gradient before it flows further back."""
        if isinstance(value, _Pending):
            mode, value = value.mode, value.value
        self._add({"grad": self.site, "value": _value(value), "mode": mode}, positions=positions)

    def __getitem__(self, idx: Any) -> GradRef:
        return GradRef(self._rec, self.site + _index_text(idx))

    def __setitem__(self, idx: Any, value: Any) -> None:
        self[idx].set(value)

    def __iadd__(self, value: Any) -> _Pending:
        return _Pending("add", value)

    def __imul__(self, value: Any) -> _Pending:
        return _Pending("scale", value)


class ModuleRef:
    """A module path; attribute access and indexing walk the module tree."""

    def __init__(self, rec: _Recorder, path: str):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "path", path)

    def _child(self, part: str) -> ModuleRef:
        return ModuleRef(self._rec, f"{self.path}.{part}" if self.path else part)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ATTRS:
            if not self.path:
                raise AttributeError(f"the root has no .{name}; name a module first")
            return ValueRef(self._rec, f"{self.path}.{name}")
        if name == "logits" and not self.path:  # the LM head's output, a value (spec: logits)
            return ValueRef(self._rec, "logits")
        return self._child(name)

    def __getitem__(self, idx: int | str | slice) -> ModuleRef:
        if isinstance(idx, slice):
            if idx.step not in (None, 1):
                raise TypeError("module ranges take no step")
            lo = "" if idx.start is None else idx.start
            hi = "" if idx.stop is None else idx.stop
            return self._child(f"{lo}:{hi}")
        return self._child(str(idx))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in ATTRS:
            raise AttributeError(f"cannot set {name!r}; set .output, .input or .inputs")
        self._rec.set(f"{self.path}.{name}", value)

    def skip(self, with_: Any = None, *, steps: Any = None) -> None:
        """Do not run this module; its output is ``with_`` (default: its input, unchanged)."""
        op: dict[str, Any] = {"skip": self.path}
        if isinstance(with_, ValueRef):
            op["with"] = with_.site
        elif with_ is not None:
            op["with"] = _value(with_)
        if steps is not None:
            op["steps"] = steps
        self._rec.add(op)

    def __call__(self, *a: Any, **k: Any) -> Any:
        raise TypeError(
            "modules are not called inside a builder trace; use "
            "value.save(apply=[t.final_norm, t.lm_head]) for module calls such as the logit lens"
        )

    def __repr__(self) -> str:
        return f"ModuleRef({self.path!r})"


class _Steps:
    """``with t.iter[1:]:`` (nnsight's tracer.iter): the ops recorded inside apply at those
    generation steps."""

    def __init__(self, rec: _Recorder):
        self._rec = rec

    @contextmanager
    def __getitem__(self, steps: Any):
        before, self._rec.steps = self._rec.steps, _steps_text(steps)
        try:
            yield
        finally:
            self._rec.steps = before


class _Trace(ModuleRef):
    @property
    def iter(self) -> _Steps:
        return _Steps(self._rec)

    @contextmanager
    def backward(self, loss: dict[str, Any]):
        """Declare the loss (``{"logprob": {"target": " Paris"}}``, ``{"sum": site}``…); grad
        ops go inside, as nnsight's ``with loss.backward():``."""
        if self._rec.backward is not None:
            raise TypeError("a spec has one backward section")
        self._rec.backward = {"loss": loss}
        yield self

    def cache(
        self, modules: str, *, name: str | None = None, positions: list[int] | None = None
    ) -> None:
        """Save the output of every module matching ``modules`` (nnsight's tracer.cache())."""
        op: dict[str, Any] = {"cache": modules}
        if name is not None:
            op["as"] = name
        if positions is not None:
            op["positions"] = positions if isinstance(positions, dict) else list(positions)
        self._rec.add(op)


def _factory_path(fn: Any) -> str:
    """The import path (``pkg.module:name``) of a callable that an actor can import again."""
    mod, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not mod or not name or "<" in name:
        raise TypeError(
            f"model={fn!r}: a model factory must be a module-level function or class "
            "(an actor imports it again by name), not a lambda or a local function"
        )
    return f"{mod}:{name}"


class SpecBuilder:
    """Collects sections and recorded ops, and validates them into a :class:`Spec`.

    ``model`` is a path, a ``model:`` section, or a callable that returns a ``torch.nn.Module``.
    A callable is code the caller already holds, so handing it over is the opt-in to run it
    (as ``allow_code=True`` is for a ``model.factory`` named in a dict).
    """

    def __init__(
        self,
        model: dict[str, Any] | str | Any,
        data: dict[str, Any] | list[str],
        output: dict[str, Any] | str,
        execution: dict[str, Any] | None = None,
        *,
        allow_code: bool = False,
    ):
        self.allow_code = allow_code
        if isinstance(model, str):
            self.model = {"path": model}
        elif isinstance(model, dict):
            self.model = dict(model)
        elif callable(model):
            self.model = {"factory": _factory_path(model)}
            self.allow_code = True
        else:
            raise TypeError(f"model={model!r}: give a path, a model section or a factory")
        self.data = {"prompts": list(data)} if isinstance(data, list) else dict(data)
        self.output = {"path": output} if isinstance(output, str) else dict(output)
        self.execution = dict(execution or {})
        self._sweep: dict[str, Any] = {}
        self._generate: dict[str, Any] | None = None
        self._ops = _Recorder(("save", "set", "skip", "cache", "grad"))
        self._edits = _Recorder(("set", "skip"))

    def sweep(self, **axes: range | list[Any]) -> SpecBuilder:
        """Sweep axes (``layer=range(30)``, ``pos=[-1, -2]``); their product is the variants."""
        for name, values in axes.items():
            if isinstance(values, range):
                self._sweep[name] = f"{values.start}:{values.stop}:{values.step}"
            else:
                self._sweep[name] = list(values)
        return self

    def generate(self, max_new_tokens: int, **options: Any) -> SpecBuilder:
        """Generate ``max_new_tokens`` per row (the ``generate:`` section: do_sample,
        temperature, top_k, top_p, seed, stop...); ops take ``steps=`` or ``with t.iter[1:]:``."""
        self._generate = {"max_new_tokens": max_new_tokens, **options}
        return self

    @contextmanager
    def trace(self):
        """Record ops: ``with b.trace() as t: t.layers[3].output.save()``.

        Each trace starts afresh and replaces the ops of an earlier one, as each nnsight trace
        is its own: re-running a notebook cell must not apply a ``+=`` twice."""
        self._ops = _Recorder(self._ops.allowed)
        yield _Trace(self._ops, "")

    @contextmanager
    def edit(self):
        """Record edits, applied to every row before the ops (nnsight's model.edit()); like a
        trace, each ``edit()`` block replaces the edits of an earlier one."""
        self._edits = _Recorder(self._edits.allowed)
        yield _Trace(self._edits, "")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": 1, "model": self.model, "data": self.data}
        if self._sweep:
            d["sweep"] = dict(self._sweep)
        if self._generate is not None:
            d["generate"] = dict(self._generate)
        if self._edits.ops:
            d["edits"] = list(self._edits.ops)
        d["ops"] = list(self._ops.ops)
        if self._ops.backward is not None:
            d["backward"] = self._ops.backward
        d["output"] = self.output
        if self.execution:
            d["execution"] = self.execution
        return d

    def spec(self) -> Spec:
        """The validated spec (raises SpecError listing every problem)."""
        return parse_spec(self.to_dict(), source="builder", allow_code=self.allow_code)

    def to_yaml(self) -> str:
        return dump_spec(self.spec())

    def __repr__(self) -> str:
        ops = len(self._ops.ops) + len(self._edits.ops)
        return f"SpecBuilder(model={self.model}, {ops} op(s), output={self.output.get('path')!r})"

    def _repr_html_(self) -> str:
        """In a notebook: the spec as YAML, or every problem it has (the spec alone; the
        model's sites are checked by ``raysight.validate(b)`` and ``raysight.plan(b)``)."""
        import html

        try:
            body = self.to_yaml()
        except SpecError as e:
            body = str(e)
        return f"<pre>{html.escape(body)}</pre>"
