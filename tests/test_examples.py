"""The example specs ship in the package (raysight.examples) and `raysight examples` lists,
prints and copies them to a directory where they run as written."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from raysight.cli import main
from raysight.spec.examples import ExampleError, copy_examples, examples

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))


def test_the_package_list_names_every_package_under_src():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")} | {
        "raysight.examples",
        "raysight.examples.data",
    }
    assert sorted(listed) == sorted(found)


def test_the_wheel_carries_every_example_and_data_file(tmp_path):
    import setuptools

    # the installed setuptools when it is new enough for pyproject (quick), else pip fetches one
    new_enough = int(setuptools.__version__.split(".")[0]) >= 77
    isolation = ["--no-build-isolation"] if new_enough else []
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("raysight-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stem in SPECS:
        assert f"raysight/examples/{stem}.yaml" in names
    for f in (ROOT / "specs" / "data").iterdir():
        assert f"raysight/examples/data/{f.name}" in names


def test_examples_are_listed_printed_and_copied_where_they_validate(tmp_path, capsys, monkeypatch):
    assert [e.name for e in examples()] == SPECS
    assert main(["examples"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{stem} " in listing for stem in SPECS)
    assert main(["examples", "noise"]) == 0
    assert capsys.readouterr().out == (ROOT / "specs" / "noise.yaml").read_text()

    assert main(["examples", "--copy", str(tmp_path)]) == 0
    for stem in SPECS:
        copied = tmp_path / "specs" / f"{stem}.yaml"
        assert copied.read_bytes() == (ROOT / "specs" / f"{stem}.yaml").read_bytes()
    for f in (ROOT / "specs" / "data").iterdir():
        assert (tmp_path / "specs" / "data" / f.name).read_bytes() == f.read_bytes()
    monkeypatch.chdir(tmp_path)  # the copies name their data files relative to this directory
    capsys.readouterr()
    assert main(["validate", "--no-model", "specs/steering.yaml"]) == 0


def test_a_copy_never_overwrites_a_changed_file_unless_forced(tmp_path, capsys):
    data = [f for f in (ROOT / "specs" / "data").iterdir() if not f.name.startswith(("_", "."))]
    assert len(copy_examples(tmp_path, ["quickstart"])) == 1 + len(
        data
    )  # the spec, every data file
    assert copy_examples(tmp_path, ["quickstart.yaml"]) == []  # identical: skipped
    mine = tmp_path / "specs" / "quickstart.yaml"
    mine.write_text("# my edits\n")
    with pytest.raises(ExampleError, match=r"quickstart\.yaml; pass --force"):
        copy_examples(tmp_path, ["quickstart", "noise"])
    assert mine.read_text() == "# my edits\n"
    assert not (tmp_path / "specs" / "noise.yaml").exists()  # nothing written: all or none
    assert main(["examples", "--copy", str(tmp_path), "--force", "quickstart"]) == 0
    assert mine.read_bytes() == (ROOT / "specs" / "quickstart.yaml").read_bytes()
    assert main(["examples", "nope", "quickstart", "nada"]) == 2
    assert "no example 'nope', 'nada'" in capsys.readouterr().err
