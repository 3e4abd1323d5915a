"""Evaluate a checked expression (spec/expr.py) on one row's tensor, by walking its AST.

Every name and function maps to one torch operation written out here; nothing reaches ``eval``.
An operation whose result would be larger than :data:`MAX_ELEMENTS` (a broadcast or matmul of
two large values) is refused before it allocates. Token texts (``tok(' Paris')``) are resolved to
ids once, when the spec is planned (HookPlan.expr_tokens).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from ..spec.expr import check_expr, string_args
from ..spec.models import ExprValue, FileValue
from ..spec.values import DatasetValue, NumberField, SaeBinding
from .sae import Sae, SaeError, load_sae
from .values import load_tensor_file

__all__ = ["MAX_ELEMENTS", "ExprRunError", "at_sites", "evaluate", "token_texts"]

#: the most elements any intermediate of one row's expression may have (256 MiB of float32)
MAX_ELEMENTS = 2**26


class ExprRunError(ValueError):
    """An expression that does not fit its values (shapes, indices)."""


@lru_cache(maxsize=256)
def _parsed(text: str, names: frozenset[str]) -> ast.Expression:
    return check_expr(text, set(names))


def token_texts(value: ExprValue) -> list[str]:
    """The texts an expression looks up with tok()."""
    return _string_args(value, "tok")


def at_sites(value: ExprValue) -> list[str]:
    """The sites an expression reads with at()."""
    return _string_args(value, "at")


def _string_args(value: ExprValue, func: str) -> list[str]:
    return string_args(_parsed(value.expr, frozenset(value.let)), func)


def evaluate(
    value: ExprValue,
    x: torch.Tensor,
    tokens: dict[str, int],
    example_id: Any = None,
    at: dict[str, torch.Tensor] | None = None,
    numbers: dict[str, float] | None = None,
) -> torch.Tensor:
    """The expression's value for one row's ``x`` (``example_id``: the row's, for a let bound to
    an earlier run's row; ``at``: the row's value of each site it reads; ``numbers``: the row's
    data columns a let names); raises ExprRunError."""
    env: dict[str, Any] = {"x": x}
    for name, bound in value.let.items():
        if isinstance(bound, DatasetValue):
            from .runs import dataset_value

            env[name] = dataset_value(bound, x, example_id)
        elif isinstance(bound, SaeBinding):
            env[name] = load_sae(bound).to(x)
        elif isinstance(bound, NumberField):
            if bound.field not in (numbers or {}):
                raise ExprRunError(f"let {name}: this row has no number from field {bound.field!r}")
            env[name] = torch.tensor(numbers[bound.field], dtype=x.dtype, device=x.device)
        elif isinstance(bound, FileValue):
            t = load_tensor_file(bound.file.path, bound.file.key).to(torch.float32)
            env[name] = (t * bound.file.scale).to(x.dtype).to(x.device)
        else:
            env[name] = torch.tensor(bound, dtype=x.dtype, device=x.device)
    tree = _parsed(value.expr, frozenset(value.let))
    try:
        out = _Eval(env, tokens, at or {}).run(tree.body)
    except (ExprRunError, SaeError, RuntimeError, IndexError, TypeError, ValueError) as e:
        shown = value.expr if len(value.expr) <= 60 else value.expr[:57] + "..."
        raise ExprRunError(f"expr {shown!r}: {e}") from None
    if not torch.is_tensor(out):
        out = torch.tensor(out, dtype=x.dtype, device=x.device)
    return out


def _as_index(v: Any) -> Any:
    """A position or latent given by a let name (a row's number): a whole number."""
    if not torch.is_tensor(v):
        return v
    if v.device.type == "meta":  # planning: any position of the probe's rows will do
        return 0
    if v.numel() != 1 or float(v) != int(float(v)):
        raise ExprRunError(f"an index must be a whole number, got {v.tolist()}")
    return int(float(v))


def _guard(shape: torch.Size, what: str) -> None:
    n = shape.numel()
    if n > MAX_ELEMENTS:
        raise ExprRunError(
            f"{what} would make a value of shape {list(shape)} ({n:,} elements per row); at "
            f"most {MAX_ELEMENTS:,}"
        )


def _meta(t: Any) -> Any:
    return torch.empty(t.shape, device="meta", dtype=t.dtype) if torch.is_tensor(t) else t


def _shape(t: Any) -> torch.Size:
    return t.shape if torch.is_tensor(t) else torch.Size()


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _setlat(z: torch.Tensor, i: int, v: Any) -> torch.Tensor:
    """z with latent i (the last dimension) set to v: clamp a feature, or zero it."""
    out = z.clone()
    out[..., i] = v
    return out


def _put(x: torch.Tensor, i: int, v: Any) -> torch.Tensor:
    """x with its row i (the first dimension: a token) set to v."""
    out = x.clone()
    out[i] = v
    return out


def _proj(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    u = _unit(d.to(x.dtype))
    return (x * u).sum(-1, keepdim=True) * u


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
    ast.MatMult: lambda a, b: a @ b,
}
_CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
}


def _reduce(fn: Callable) -> Callable:
    def run(x, dim=-1, keepdim=False):
        return fn(x, dim=dim, keepdim=keepdim)

    return run


_FUNCS: dict[str, Callable[..., Any]] = {
    "sum": _reduce(torch.sum),
    "mean": _reduce(lambda x, **k: torch.mean(x.float(), **k).to(x.dtype)),
    "max": _reduce(lambda x, **k: torch.amax(x, **k)),
    "min": _reduce(lambda x, **k: torch.amin(x, **k)),
    "norm": _reduce(lambda x, **k: torch.linalg.vector_norm(x.float(), **k).to(x.dtype)),
    "softmax": lambda x, dim=-1: torch.softmax(x.float(), dim).to(x.dtype),
    "log_softmax": lambda x, dim=-1: torch.log_softmax(x.float(), dim).to(x.dtype),
    "entropy": lambda x, dim=-1: (
        -(torch.softmax(x.float(), dim) * torch.log_softmax(x.float(), dim)).sum(dim)
    ),
    "kl": lambda p, q, dim=-1: (
        torch.softmax(p.float(), dim)
        * (torch.log_softmax(p.float(), dim) - torch.log_softmax(q.float(), dim))
    ).sum(dim),
    "cosine": lambda a, b, dim=-1: F.cosine_similarity(a.float(), b.float(), dim=dim),
    "dot": lambda a, b, dim=-1, keepdim=False: (a * b).sum(dim, keepdim=keepdim),
    "proj": _proj,
    "ablate": lambda x, d: x - _proj(x, d),
    "normalize": lambda x, dim=-1: F.normalize(x, dim=dim),
    "clamp": lambda x, lo, hi: torch.clamp(x, lo, hi),
    "where": lambda c, a, b: torch.where(torch.as_tensor(c).bool(), a, b),
    "topk": lambda x, k: torch.topk(x, k, dim=-1).values,
    "argtopk": lambda x, k: torch.topk(x, k, dim=-1).indices,
    "setlat": _setlat,
    "put": _put,
    "relu": torch.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "abs": torch.abs,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
}


class _Eval:
    def __init__(self, env: dict[str, Any], tokens: dict[str, int], at: dict[str, Any]):
        self.env, self.tokens, self.at = env, tokens, at

    def run(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.env[node.id]
        if isinstance(node, ast.UnaryOp):
            v = self.run(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = self.run(node.left), self.run(node.right)
            op = _BINOPS[type(node.op)]
            if torch.is_tensor(a) or torch.is_tensor(b):
                _guard(_shape(op(_meta(a), _meta(b))), "an operator")
            return op(a, b)
        if isinstance(node, ast.Compare):
            return _CMP[type(node.ops[0])](self.run(node.left), self.run(node.comparators[0]))
        if isinstance(node, ast.Subscript):
            return self.run(node.value)[self.index(node.slice)]
        if isinstance(node, ast.Call):
            return self.call(node)
        raise ExprRunError(f"{type(node).__name__} cannot be evaluated")  # the checker refuses it

    def call(self, node: ast.Call) -> Any:
        name = node.func.id
        if name == "tok":
            return self.tokens[node.args[0].value]
        if name == "at":
            if node.args[0].value not in self.at:
                raise ExprRunError(f"at({node.args[0].value!r}) is not available here")
            return self.at[node.args[0].value]
        args = [self.run(a) for a in node.args]
        kwargs = {kw.arg: self.run(kw.value) for kw in node.keywords}
        if name in ("setlat", "put", "argtopk", "topk"):
            args[1] = _as_index(args[1])
        if name in ("encode", "decode", "error"):
            if not isinstance(args[0], Sae) or not torch.is_tensor(args[1]):
                raise ExprRunError(f"{name}() takes an SAE bound in let and a tensor")
            _guard(torch.Size([*args[1].shape[:-1], args[0].W_enc.shape[1]]), name)
            return getattr(args[0], name)(args[1])
        if isinstance(args[0], Sae) or any(isinstance(a, Sae) for a in args[1:]):
            raise ExprRunError(f"{name}() takes tensors; an SAE goes to encode, decode or error")
        if name == "where":
            _guard(torch.broadcast_shapes(*(_shape(a) for a in args)), name)
        if name in ("topk", "argtopk") and torch.is_tensor(args[0]) and args[1] > args[0].shape[-1]:
            raise ExprRunError(f"topk: k={args[1]} is more than the last dimension's size")
        if name in ("proj", "ablate", "cosine", "dot", "kl"):
            if not all(torch.is_tensor(a) for a in args[:2]):
                raise ExprRunError(f"{name}() takes two tensors")
            _guard(torch.broadcast_shapes(*(_shape(a) for a in args[:2])), name)
        return _FUNCS[name](*args, **kwargs)

    def index(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Tuple):
            return tuple(self.index(e) for e in node.elts)
        if isinstance(node, (ast.Name, ast.UnaryOp)):  # a let name: a row's position
            return _as_index(self.run(node))
        if isinstance(node, ast.Slice):
            parts = [
                None if p is None else self.run(p) for p in (node.lower, node.upper, node.step)
            ]
            return slice(*parts)
        return self.run(node)
