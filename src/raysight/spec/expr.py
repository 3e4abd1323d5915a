"""Expressions: computation as data, checked before anything runs.

An expression is a line of Python *syntax* (``ablate(x, d)``, ``cosine(x, d)``,
``log_softmax(x)[..., tok(' Paris')]``) parsed by Python's own parser into an AST, and accepted
only if every node is on an explicit whitelist: numbers, arithmetic (``+ - * / ** @``),
comparisons, indexing and slicing with integer constants, and calls of the functions in
:data:`FUNCTIONS` by name. Names are ``x`` (the value the op is on) and the op's ``let``
bindings; ``at('layers.3.output')`` is another value of the same forward pass. There is no
attribute access, no other name, no keyword but ``dim`` / ``keepdim``, and nothing is ever
passed to ``eval``: the evaluator (interleave/expr.py) walks the AST itself.
Limits keep a hostile expression cheap to refuse: its length, depth and node count, the size of
integer constants and exponents; the evaluator bounds every intermediate's size. Pure Python:
no torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from .sites import SiteError, parse_value_site

__all__ = ["FUNCTIONS", "MAX_DEPTH", "MAX_LENGTH", "ExprError", "check_expr", "string_args"]

#: function -> (least, most positional arguments, keywords it takes)
FUNCTIONS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "sum": (1, 2, ("dim", "keepdim")),
    "mean": (1, 2, ("dim", "keepdim")),
    "max": (1, 2, ("dim", "keepdim")),
    "min": (1, 2, ("dim", "keepdim")),
    "norm": (1, 2, ("dim", "keepdim")),
    "softmax": (1, 2, ("dim",)),
    "log_softmax": (1, 2, ("dim",)),
    "entropy": (1, 2, ("dim",)),
    "kl": (2, 3, ("dim",)),
    "cosine": (2, 3, ("dim",)),
    "dot": (2, 3, ("dim", "keepdim")),
    "proj": (2, 2, ()),
    "ablate": (2, 2, ()),
    "normalize": (1, 2, ("dim",)),
    "clamp": (3, 3, ()),
    "where": (3, 3, ()),
    "topk": (2, 2, ()),
    "relu": (1, 1, ()),
    "gelu": (1, 1, ()),
    "tanh": (1, 1, ()),
    "sigmoid": (1, 1, ()),
    "abs": (1, 1, ()),
    "exp": (1, 1, ()),
    "log": (1, 1, ()),
    "sqrt": (1, 1, ()),
    "tok": (1, 1, ()),
    "at": (1, 1, ()),
    "encode": (2, 2, ()),
    "decode": (2, 2, ()),
    "error": (2, 2, ()),
    "setlat": (3, 3, ()),
    "argtopk": (2, 2, ()),
    "put": (3, 3, ()),
}
MAX_LENGTH = 1000
MAX_DEPTH = 32
MAX_NODES = 400
MAX_INT = 10**9
MAX_EXPONENT = 16

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.MatMult)
_CMPOPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


@dataclass
class ExprError(ValueError):
    """An expression refused, with where in its text (1-based column)."""

    message: str
    column: int | None = None

    def __str__(self) -> str:
        at = f" (at column {self.column})" if self.column else ""
        return f"{self.message}{at}"


def check_expr(text: str, names: set[str]) -> ast.Expression:
    """The parsed expression if every part is allowed; raises :class:`ExprError` otherwise.
    ``names``: the let bindings it may use besides ``x``."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("an expression must be a non-empty string")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the expression is {len(text)} characters; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"not an expression: {e.msg}", e.offset) from None
    except (RecursionError, MemoryError, ValueError):  # nesting Python's parser refuses
        raise ExprError(f"the expression nests deeper than {MAX_DEPTH} levels") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise ExprError(f"the expression has {count} parts; at most {MAX_NODES}")
    _Checker({"x", *names}).visit_node(tree.body, 0)
    return tree


class _Checker:
    def __init__(self, names: set[str]):
        self.names = names

    def fail(self, node: ast.AST, msg: str) -> None:
        raise ExprError(msg, getattr(node, "col_offset", -1) + 1)

    def visit_node(self, node: ast.AST, depth: int, index: bool = False) -> None:
        if depth > MAX_DEPTH:
            self.fail(node, f"the expression nests deeper than {MAX_DEPTH} levels")
        d = depth + 1
        if isinstance(node, ast.Constant):
            self.constant(node, index)
        elif isinstance(node, ast.Name):
            if node.id not in self.names:
                known = ", ".join(sorted(self.names))
                self.fail(node, f"unknown name {node.id!r} (names here: {known})")
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINOPS):
                self.fail(node, f"operator {type(node.op).__name__} is not allowed")
            if isinstance(node.op, ast.Pow):
                self.exponent(node.right)
            self.visit_node(node.left, d)
            self.visit_node(node.right, d)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            self.visit_node(node.operand, d, index)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1 or not isinstance(node.ops[0], _CMPOPS):
                self.fail(node, "compare two values at a time (a < b), with < <= > >= == !=")
            self.visit_node(node.left, d)
            self.visit_node(node.comparators[0], d)
        elif isinstance(node, ast.Call):
            self.call(node, d)
        elif isinstance(node, ast.Subscript):
            self.visit_node(node.value, d)
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            for item in items:
                self.index_item(item, d)
        elif isinstance(node, ast.Attribute):
            self.fail(node, f"attribute access (.{node.attr}) is not allowed; use a function")
        else:
            what = type(node).__name__
            self.fail(
                node,
                f"{what} is not allowed in an expression (numbers, x, let names, arithmetic, "
                "comparisons, indexing and the listed functions are)",
            )

    def constant(self, node: ast.Constant, index: bool) -> None:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if v is Ellipsis and index:
                return
            if v is None and index:
                return
            self.fail(node, f"constant {v!r} is not allowed here (numbers are; text only in tok())")
        if isinstance(v, int) and abs(v) > MAX_INT:
            self.fail(node, f"integer {v} is larger than {MAX_INT}")

    def exponent(self, node: ast.AST) -> None:
        n = node.operand if isinstance(node, ast.UnaryOp) else node
        if not (isinstance(n, ast.Constant) and isinstance(n.value, (int, float))):
            self.fail(node, "an exponent must be a number")
        elif abs(n.value) > MAX_EXPONENT:
            self.fail(node, f"exponent {n.value} is larger than {MAX_EXPONENT}")

    def index_item(self, node: ast.AST, depth: int) -> None:
        if isinstance(node, ast.Slice):
            for part in (node.lower, node.upper, node.step):
                if part is not None:
                    self.int_or_tok(part)
            return
        if isinstance(node, ast.Constant) and (node.value is Ellipsis or node.value is None):
            return
        self.int_or_tok(node)

    def int_or_tok(self, node: ast.AST) -> None:
        """An index: an integer constant (maybe negative), tok('text'), or a let name (a row's
        number from a data column: a per-row position)."""
        n = _negated(node)
        if isinstance(n, ast.Constant) and type(n.value) is int:
            self.constant(n, True)
            return
        if isinstance(n, ast.Name) and n.id in self.names and n.id != "x":
            return
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "tok":
            self.call(node, 0)
            return
        self.fail(
            node,
            "an index is an integer, a slice of integers, ..., None, tok('text') or a let name",
        )

    def call(self, node: ast.Call, depth: int) -> None:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            shown = name or type(node.func).__name__
            self.fail(node, f"unknown function {shown!r} (functions: {', '.join(FUNCTIONS)})")
        least, most, keywords = FUNCTIONS[name]
        if not least <= len(node.args) <= most:
            want = str(least) if least == most else f"{least} to {most}"
            self.fail(node, f"{name}() takes {want} arguments, got {len(node.args)}")
        for kw in node.keywords:
            if kw.arg not in keywords:
                allowed = ", ".join(keywords) or "none"
                self.fail(node, f"{name}() takes no keyword {kw.arg!r} (keywords: {allowed})")
            self.dim(kw.value) if kw.arg == "dim" else self.bool_constant(kw.value)
        if name == "tok":
            arg = node.args[0]
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                self.fail(node, "tok() takes a text that is one token, e.g. tok(' Paris')")
            return
        if name == "at":
            self.site(node)
            return
        if name in ("topk", "argtopk"):
            self.int_or_tok(node.args[1])
        if name in ("setlat", "put"):
            self.int_or_tok(node.args[1])
        if name in ("encode", "decode", "error") and not isinstance(node.args[0], ast.Name):
            self.fail(node, f"{name}() takes an SAE bound in let first: {name}(sae, x)")
        for arg in node.args:
            self.visit_node(arg, depth + 1)

    def site(self, node: ast.Call) -> None:
        """at('layers.3.output'): another value of the same forward, named as a site."""
        arg = node.args[0]
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            self.fail(node, "at() takes a value site in quotes, e.g. at('layers.3.output')")
        try:
            parse_value_site(arg.value)
        except SiteError as e:
            self.fail(arg, f"at(): {e}")

    def dim(self, node: ast.AST) -> None:
        n = _negated(node)
        if not (isinstance(n, ast.Constant) and type(n.value) is int and abs(n.value) <= 64):
            self.fail(node, "dim is an integer (-1 is the last dimension)")

    def bool_constant(self, node: ast.AST) -> None:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, bool)):
            self.fail(node, "keepdim is True or False")


def _negated(node: ast.AST) -> ast.AST:
    """The operand of a unary minus (``-1`` parses as one), else the node."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return node.operand
    return node


def string_args(tree: ast.Expression, func: str) -> list[str]:
    """The texts a checked expression passes to ``func`` (tok's tokens, at's sites)."""
    return [
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == func
    ]
