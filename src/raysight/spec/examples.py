"""The example specs that ship in the package (raysight.examples, the repository's specs/):
list them, show one, or copy them with their data files to a directory where they run as the
README shows (``raysight run specs/quickstart.yaml``: their data paths are relative to it)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from ..errors import RaysightError

__all__ = ["Example", "ExampleError", "copy_examples", "examples"]


class ExampleError(RaysightError):
    """An unknown example name, or a copy that would overwrite a different file."""


@dataclass(frozen=True)
class Example:
    name: str
    """The file name without .yaml (quickstart)."""
    summary: str
    """The header comment's first sentence or line."""
    text: str
    """The whole spec file."""


def examples() -> list[Example]:
    """Every example spec, by name."""
    out = []
    for f in sorted(_root().iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            text = f.read_text()
            out.append(Example(f.name.removesuffix(".yaml"), _summary(text), text))
    return out


def copy_examples(
    dest: str | Path, names: list[str] | None = None, force: bool = False
) -> list[Path]:
    """Copy ``names`` (default: all) and the data files into ``dest``/specs; returns the files
    written. A file already there with other contents is left alone and reported (every one at
    once) unless ``force``; an identical one is skipped."""
    known = [e.name for e in examples()]
    wanted = [n.removesuffix(".yaml") for n in names or known]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ExampleError(
            f"no example {', '.join(map(repr, unknown))}; the examples are {', '.join(known)}"
        )
    target, root = Path(dest) / "specs", _root()
    pairs = [(target / f"{n}.yaml", root / f"{n}.yaml") for n in wanted]
    # every data file: the specs name them relative to the directory they run in
    data = [f for f in root.joinpath("data").iterdir() if f.is_file() and f.name[0] not in "_."]
    pairs += [(target / "data" / f.name, f) for f in sorted(data, key=lambda f: f.name)]
    clash = [str(t) for t, src in pairs if t.exists() and t.read_bytes() != src.read_bytes()]
    if clash and not force:
        raise ExampleError(
            f"{len(clash)} file(s) already exist with other contents: {', '.join(clash)}; "
            "pass --force to overwrite them"
        )
    written = []
    for t, src in pairs:
        if t.exists() and t.read_bytes() == src.read_bytes():
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        with as_file(src) as path:
            shutil.copyfile(path, t)
        written.append(t)
    return written


def _root():
    return files("raysight.examples")


def _summary(text: str) -> str:
    """The header's first sentence (the comment lines before the first indented command)."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("#   "):
            break
        header.append(line.removeprefix("#").strip())
    return " ".join(header).split(". ")[0].rstrip(".")
