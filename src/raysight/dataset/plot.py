"""The first plot of a dataset, chosen from its manifest (``raysight plot OUT``, ``ds.plot()``):

- ``grid``: a sweep (an activation-patching grid, a layer sweep): the mean of each scalar
  column per sweep point, a heatmap over the first two axes (a line over one), per pair row;
- ``lens``: a logit lens (vocabulary ids saved at several layers): layers x prompts (or x
  positions of one row), coloured by the top token's logit and labelled with the token;
- ``top``: one column of vocabulary ids: each prompt's top tokens, coloured by their values;
- ``norms``: any other saved values: the mean L2 norm of each column (a line over layers for
  columns saved at several layers), from the first ``max_rows`` rows;
- ``text``: generation with nothing saved: the generated text per row.

Rendered with matplotlib (Agg: no display needed) to PNG, SVG or PDF, or to a self-contained
HTML page that shows the PNG and the numbers behind it.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RaysightError
from ..spec.reduce import strings_name
from ..spec.sweep import axis_values

__all__ = ["KINDS", "Chart", "PlotError", "plot"]

KINDS = ("grid", "lens", "top", "norms", "text")
_LAYER = re.compile(r"^(?P<base>.+)\.(?P<layer>\d+)$")


class PlotError(RaysightError, ValueError):
    """The dataset has nothing the asked-for plot can show; says what it has."""


@dataclass
class Chart:
    """What was drawn: the figure, and the numbers and labels behind each panel."""

    kind: str
    figure: Any
    panels: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() == ".html":
            path.write_text(_html(self))
        else:
            self.figure.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        return buf.getvalue()


def plot(ds: Any, kind: str = "auto", row: Any = None, rows: int = 8, max_rows: int = 10_000):
    """Draw ``ds`` (a raysight Dataset) as ``kind`` (auto: chosen from the manifest)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    if kind not in ("auto", *KINDS):
        raise PlotError(f"plot kind {kind!r}: choose one of auto, {', '.join(KINDS)}")
    kind = _choose(ds) if kind == "auto" else kind
    draw = {"grid": _grid, "lens": _lens, "top": _top, "norms": _norms, "text": _text}[kind]
    return draw(ds, row=row, rows=rows, max_rows=max_rows)


# ------------------------------------------------------------------ what the dataset holds
def _cols(ds: Any) -> list[dict[str, Any]]:
    return list(ds.manifest.columns)


def _width(c: dict) -> int:
    return int(np.prod([d for d in c["shape"] if isinstance(d, int)] or [1]))


def _scalars(ds: Any) -> list[str]:
    """Float columns holding one number per row (a metric reduce, a norm at one position)."""
    return [
        c["name"]
        for c in _cols(ds)
        if c["dtype"].startswith(("float", "bfloat")) and None not in c["shape"] and _width(c) == 1
    ]


def _vocab(ds: Any) -> list[dict[str, Any]]:
    return [c for c in _cols(ds) if c.get("vocab")]


def _lens_groups(ds: Any) -> dict[str, list[tuple[int, str]]]:
    """Vocabulary-id columns saved at several layers (`lens.0_ids`, `lens.1_ids`, ...)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for c in _vocab(ds):
        m = _LAYER.match(c["name"].removesuffix("_ids"))
        if m and c["name"].endswith("_ids"):
            groups.setdefault(m["base"], []).append((int(m["layer"]), c["name"]))
    return {b: sorted(g) for b, g in groups.items() if len(g) >= 2}


def _choose(ds: Any) -> str:
    if ds.manifest.spec.get("sweep") and _scalars(ds):
        return "grid"
    if _lens_groups(ds):
        return "lens"
    if _vocab(ds):
        return "top"
    if any(c["dtype"] != "bool" for c in _cols(ds)):
        return "norms"
    if "generated_text" in ds.schema.names:
        return "text"
    raise PlotError(f"{ds.path}: nothing to plot (no saved columns and no generated text)")


# ------------------------------------------------------------------ the kinds
def _grid(ds: Any, **_: Any) -> Chart:
    sweep = ds.manifest.spec.get("sweep") or {}
    metrics = _scalars(ds)
    if not sweep or not metrics:
        raise PlotError(f"{ds.path}: a grid needs a sweep and a scalar column; {_has(ds)}")
    axes = list(sweep)[:2]
    order = {a: axis_values(sweep[a]) for a in axes}
    names = [*axes, *(["row"] if "row" in ds.schema.names else [])]
    t = ds.table(names)
    members = t.column("row").to_pylist() if "row" in names else [None] * t.num_rows
    panels = []
    for metric in metrics[:4]:
        values = _numbers(ds.to_torch(metric))
        for member in dict.fromkeys(members):
            pick = np.array([m == member for m in members])
            coords = [np.array(t.column(a).to_pylist(), dtype=object)[pick] for a in axes]
            grid = np.full([len(order[a]) for a in axes], np.nan)
            for idx in np.ndindex(grid.shape):
                hit = np.ones(int(pick.sum()), bool)
                for a, i, c in zip(axes, idx, coords):
                    hit &= np.array([_same(x, order[a][i]) for x in c])
                if hit.any():
                    grid[idx] = values[pick][hit].mean()
            title = metric if member is None else f"{metric} (row: {member})"
            panels.append({"title": title, "axes": axes, "ticks": order, "values": grid})
    fig = _figure(len(panels))
    for ax, p in zip(fig.axes, panels):
        if len(p["axes"]) == 1:
            ticks = p["ticks"][p["axes"][0]]
            ax.plot(range(len(ticks)), p["values"], marker="o")
            ax.set_xticks(range(len(ticks)), [str(v) for v in ticks])
            ax.set_xlabel(p["axes"][0])
            ax.set_ylabel(f"mean {p['title'].split(' ')[0]}")
        else:
            a0, a1 = p["axes"]
            _heatmap(ax, p["values"], p["ticks"][a0], p["ticks"][a1], diverging=True)
            ax.set_ylabel(a0)
            ax.set_xlabel(a1)
        ax.set_title(p["title"])
    return Chart("grid", fig, panels)


def _lens(ds: Any, row: Any = None, rows: int = 8, max_rows: int = 10_000, **_: Any) -> Chart:
    groups = _lens_groups(ds)
    if not groups:
        raise PlotError(f"{ds.path}: a logit lens needs token ids at several layers; {_has(ds)}")
    base, layers = next(iter(groups.items()))
    n = min(ds.num_rows, max_rows)  # the prompts shown are chosen among the first rows
    ids = _head(ds, ["example_id"], n)
    per_layer = []  # (values, strings) per layer: each row's [positions, k] and nested strings
    for _layer, name in layers:
        vals = ds.to_torch(name.removesuffix("_ids") + "_values", rows=range(0, n))
        vals = [np.asarray(v, dtype=float).reshape(-1, np.shape(v)[-1]) for v in vals]
        per_layer.append((vals, _head(ds, [strings_name(name)], n)))
    if all(len(v) == 1 for v in per_layer[0][0]):  # one position per prompt: layers x prompts
        cells = [(i, 0) for i in sorted(range(len(ids)), key=lambda i: str(ids[i]))[:rows]]
        xlabels = _prompt_labels(ds, ids, [i for i, _ in cells])
        where = "prompts"
    else:  # one row's layers x its positions (every token, or the positions saved)
        named = [k for k, i in enumerate(ids) if row is None or str(i) == str(row)]
        if not named:
            raise PlotError(f"plot row {row!r}: no row has that example_id")
        k = named[0]
        cells = [(k, p) for p in range(len(per_layer[0][0][k]))]
        xlabels = _position_labels(ds, k, len(cells))
        where = f"row {ids[k]!r}"
    values = np.zeros((len(layers), len(cells)))
    labels = [["" for _ in cells] for _ in layers]
    for li, (vals, strings) in enumerate(per_layer):
        for j, (i, p) in enumerate(cells):
            values[li, j] = vals[i][p][0]  # topk is sorted: entry 0 is the top token
            labels[li][j] = _first(_nest(strings[i])[p])
    fig = _figure(1, wide=True)
    ax = fig.axes[0]
    ylabels = [str(layer) for layer, _ in layers]
    _heatmap(ax, values, ylabels, xlabels, text=labels)
    ax.set_ylabel("layer")
    ax.set_title(f"{base}: top token per layer, {where} (colour: its logit)")
    panel = {"title": base, "values": values, "tokens": labels, "x": xlabels}
    return Chart("lens", fig, [panel | {"y": [layer for layer, _ in layers]}])


def _nest(strings: Any) -> list:
    """A row's strings as [positions, ...] (a scalar column's one string as one position)."""
    return strings if isinstance(strings, list) else [strings]


def _position_labels(ds: Any, k: int, n: int) -> list[str]:
    """The tokens at a row's positions, where the dataset has every input token."""
    if "input_tokens" in ds.schema.names:
        tokens = _head(ds, ["input_tokens"], k + 1)[k]
        if len(tokens) == n:
            return [t.replace("\n", "\\n") for t in tokens]
    return [str(p) for p in range(n)]


def _top(ds: Any, rows: int = 8, max_rows: int = 10_000, **_: Any) -> Chart:
    cols = _vocab(ds)
    if not cols:
        raise PlotError(f"{ds.path}: no column of token ids; {_has(ds)}")
    name = cols[0]["name"]
    n = min(ds.num_rows, max_rows)  # the prompts shown are chosen among the first rows
    ids = _head(ds, ["example_id"], n)
    keep = sorted(range(len(ids)), key=lambda i: str(ids[i]))[:rows]
    strings = _head(ds, [strings_name(name)], n)
    tokens = [_flat_strings(strings[i]) for i in keep]
    k = max(len(t) for t in tokens)
    values = np.zeros((len(keep), k))
    partner = name.removesuffix("_ids") + "_values"
    if name.endswith("_ids") and partner in ds.columns:
        vals = ds.to_torch(partner, rows=range(0, n))
        for j, i in enumerate(keep):
            row = np.asarray(vals[i], dtype=float).reshape(-1)[:k]
            values[j, : len(row)] = row
    labels = [t + [""] * (k - len(t)) for t in tokens]
    fig = _figure(1, wide=True)
    ax = fig.axes[0]
    ylabels = _prompt_labels(ds, ids, keep)
    _heatmap(ax, values, ylabels, [str(r + 1) for r in range(k)], text=labels)
    ax.set_xlabel("rank")
    ax.set_title(f"{name.removesuffix('_ids')}: top tokens (colour: value)")
    return Chart("top", fig, [{"title": name, "values": values, "tokens": labels, "y": ylabels}])


def _norms(ds: Any, max_rows: int = 10_000, **_: Any) -> Chart:
    ranked = {c["name"].removesuffix("_ids") + "_values" for c in _vocab(ds)}  # topk values
    cols = [
        c
        for c in _cols(ds)
        if c["dtype"] != "bool" and not c.get("vocab") and c["name"] not in ranked
    ]
    if not cols:
        raise PlotError(f"{ds.path}: no saved values; {_has(ds)}")
    n = min(ds.num_rows, max_rows)
    means = {}
    for c in cols:
        data = ds.to_torch(c["name"], rows=range(0, n))
        rows = data if isinstance(data, list) else [data]
        shape = c["shape"]  # per row; None is the token dimension: a scalar per token
        last = shape[-1] if shape and isinstance(shape[-1], int) else 1
        keys = None in shape[1:]  # attention weights: the last dimension is the keys
        per = [np.asarray(r.float().reshape(-1, r.shape[-1] if keys else last)) for r in rows]
        flat = np.concatenate(per) if per else np.zeros((0, 1))
        means[c["name"]] = float(np.linalg.norm(flat, axis=-1).mean()) if len(flat) else np.nan
    by_base: dict[str, list[tuple[int, float, str]]] = {}
    for name, v in means.items():
        m = _LAYER.match(name)
        key = m["base"] if m else name
        by_base.setdefault(key, []).append((int(m["layer"]) if m else -1, v, name))
    # a column saved at several layers is a line over them; the others are bars
    groups = {b: sorted((la, v) for la, v, _ in g) for b, g in by_base.items() if len(g) >= 2}
    singles = {name: v for g in by_base.values() if len(g) < 2 for _, v, name in g}
    panels = []
    fig = _figure(int(bool(groups)) + int(bool(singles)))
    axes = iter(fig.axes)
    if groups:
        ax = next(axes)
        for b, g in groups.items():
            ax.plot([layer for layer, _ in g], [v for _, v in g], marker="o", label=b)
            panels.append({"title": b, "x": [layer for layer, _ in g], "values": [v for _, v in g]})
        ax.set_xlabel("layer")
        ax.set_ylabel("mean L2 norm")
        ax.legend()
    if singles:
        ax = next(axes)
        ax.bar(range(len(singles)), list(singles.values()))
        ax.set_xticks(range(len(singles)), list(singles), rotation=30, ha="right")
        ax.set_ylabel("mean L2 norm")
        panels.append({"title": "columns", "x": list(singles), "values": list(singles.values())})
    fig.suptitle(f"mean L2 norm over the last dimension, first {n:,} rows")
    return Chart("norms", fig, panels)


def _text(ds: Any, rows: int = 8, **_: Any) -> Chart:
    if "generated_text" not in ds.schema.names:
        raise PlotError(f"{ds.path}: no generated text; {_has(ds)}")
    names = [n for n in ("example_id", "row", "generated_text") if n in ds.schema.names]
    t = ds.table(names, rows=range(0, rows)).to_pylist()
    cells = [
        [str(r.get("example_id")), str(r.get("row", "")), repr(r["generated_text"])] for r in t
    ]
    fig = _figure(1, wide=True)
    ax = fig.axes[0]
    ax.axis("off")
    ax.table(cellText=cells, colLabels=["example_id", "row", "generated"], loc="center")
    ax.set_title("generated text")
    return Chart("text", fig, [{"title": "generated", "cells": cells}])


# ------------------------------------------------------------------ drawing helpers
def _figure(panels: int, wide: bool = False):
    from matplotlib.figure import Figure

    cols = min(max(panels, 1), 2)
    rows = -(-max(panels, 1) // cols)
    fig = Figure(figsize=((10 if wide else 5.5) * cols, 4.5 * rows))
    for i in range(max(panels, 1)):
        fig.add_subplot(rows, cols, i + 1)
    return fig


def _heatmap(ax, values, ylabels, xlabels, text=None, diverging=False) -> None:
    vmax = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    kw = {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax} if diverging else {"cmap": "viridis"}
    im = ax.imshow(values, aspect="auto", **kw)
    ax.figure.colorbar(im, ax=ax)
    ax.set_yticks(range(len(ylabels)), [str(y) for y in ylabels])
    ax.set_xticks(range(len(xlabels)), [str(x) for x in xlabels], rotation=30, ha="right")
    small = values.size <= 400
    for (i, j), v in np.ndenumerate(values):
        label = text[i][j] if text is not None else (f"{v:.2g}" if small and np.isfinite(v) else "")
        if label:
            ax.text(
                j,
                i,
                label.replace("\n", "\\n"),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if not diverging else "black",
            )


def _numbers(data: Any) -> np.ndarray:
    if isinstance(data, list):
        return np.array([float(np.asarray(r, dtype=float).reshape(-1)[0]) for r in data])
    return np.asarray(data.float().reshape(len(data), -1)[:, 0])


def _same(x: Any, y: Any) -> bool:
    return x == y or str(x) == str(y)


def _first(nested: Any) -> str:
    while isinstance(nested, list):
        nested = nested[0] if nested else ""
    return str(nested)


def _flat_strings(nested: Any) -> list[str]:
    """A row's token strings, the first entry of every dimension but the last."""
    if not isinstance(nested, list):
        return [str(nested)]
    while nested and isinstance(nested[0], list):
        nested = nested[0]
    return [str(s) for s in nested]


def _prompt_labels(ds: Any, ids: list, keep: list[int]) -> list[str]:
    """Each kept row's id, and the end of its prompt where the dataset has its tokens."""
    if "input_tokens" not in ds.schema.names:
        return [str(ids[i]) for i in keep]
    tokens = _head(ds, ["input_tokens"], max(keep) + 1) if keep else []
    return [f"{ids[i]}: …" + "".join(tokens[i][-3:]).replace("\n", "\\n") for i in keep]


def _head(ds: Any, columns: list[str], n: int) -> list:
    """The first ``n`` rows of one column, as Python values (read batch by batch: a plot of
    the first rows never loads a whole column)."""
    return ds.table(columns, rows=range(0, n)).column(0).to_pylist()


def _has(ds: Any) -> str:
    return f"its columns are {', '.join(ds.columns) or '(none)'}"


def _html(chart: Chart) -> str:
    png = base64.b64encode(chart._repr_png_()).decode()
    parts = [
        f"<h2>raysight plot: {html.escape(chart.kind)}</h2>",
        f'<img src="data:image/png;base64,{png}">',
    ]
    for p in chart.panels:
        parts.append(f"<h3>{html.escape(str(p.get('title', '')))}</h3>")
        values = np.atleast_2d(np.asarray(p.get("values", []), dtype=object))
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>"
            for r in values
        )
        parts.append(f"<table border=1>{rows}</table>")
    return "<!doctype html><meta charset=utf-8><body>" + "".join(parts) + "</body>"


def _cell(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)
