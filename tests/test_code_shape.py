"""The package stays readable: no module over 400 lines, no import cycle between modules
(function-local imports included: they only hide a cycle). `python experiments/code_shape.py`
prints the figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shape():
    spec = importlib.util.spec_from_file_location("code_shape", REPO / "experiments/code_shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_is_over_400_lines_and_no_imports_cycle():
    shape = _shape()
    rows, cycles = shape.survey(REPO / "geoguess")
    long = {r["module"]: r["lines"] for r in rows if r["lines"] > shape.MAX_LINES}
    assert long == {}
    assert cycles == []


def test_the_survey_sees_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("\n" * 401)
    rows, cycles = _shape().survey(package)
    assert cycles == [["pkg.a", "pkg.b"]]
    assert {r["module"]: r["local_imports"] for r in rows}["pkg.b"] == 1
    assert {r["module"]: r["lines"] for r in rows}["pkg.c"] == 401
