"""The package stays readable: no module over 400 lines, no import cycle between modules
(function-local imports included: they only hide a cycle), and every function-local import says
why it is local. `python experiments/code_shape.py` prints the figures."""

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


def test_every_function_local_import_says_why():
    rows, _ = _shape().survey(REPO / "geoguess")
    uncommented = {r["module"]: r["uncommented_imports"] for r in rows if r["uncommented_imports"]}
    assert uncommented == {}


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


def test_the_survey_sees_a_local_import_that_says_nothing(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "def bare():\n"
        '    """A docstring is no reason."""\n'
        "    x = 1\n"
        "    import json\n"
        "\n"
        "\n"
        "def above():\n"
        "    # json loads here, not at the top: start-up.\n"
        "    import json\n"
        "\n"
        "\n"
        "def on_the_line():\n"
        "    import json  # here: start-up\n"
        "\n"
        "\n"
        "def opening():\n"
        '    """Doc."""\n'
        "    # both load here, not at the top: start-up.\n"
        "    x = 1\n"
        "    y = 2\n"
        "    z = 3\n"
        "    import csv\n"
        "    import json\n"
        "\n"
        "\n"
        "def nested():\n"
        "    def inner():\n"
        "        # this comment opens inner(), not nested()\n"
        "        import json\n"
        "    x = 1\n"
        "    y = 2\n"
        "    text = '# a hash in a string is no comment'\n"
        "    import csv\n"
    )
    rows, _ = _shape().survey(package)
    row = {r["module"]: r for r in rows}["pkg.a"]
    assert row["local_imports"] == 7
    assert row["uncommented_imports"] == [4, 33]
