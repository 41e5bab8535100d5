"""`--help` answers without loading torch: the commands keep their heavy imports inside the
functions that need them (each saying so), so asking a command what it takes is quick."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.cli import command_env

# geoguess.train is not here: it imports Lightning at the top, which loads torch.
LIGHT_COMMANDS = ["geoguess.predict", "geoguess.serve", "geoguess.bench", "geoguess.data.validate"]


def imported_modules(importtime_log: str) -> set[str]:
    """The module names of `python -X importtime`'s report (`import time: a | b | name`)."""
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)\s*$", importtime_log, re.M)
    return set(found)


@pytest.mark.parametrize("command", LIGHT_COMMANDS)
def test_help_answers_without_importing_torch(command, tmp_path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", command, "--help"],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Powered by Hydra" in done.stdout
    modules = imported_modules(done.stderr)
    assert "omegaconf" in modules  # the report was read: the command did import things
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}
