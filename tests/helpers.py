"""Helpers for the tests that drive whole sweeps in their own processes (a driver to kill, a node to lose)."""

import subprocess
import sys
from pathlib import Path

from sweep.sync import trial_reports

__all__ = ["launch", "launch_command", "trial_reports"]


def launch_command(*args: str) -> list[str]:
    """`python -m sweep.launch ARGS` with this interpreter."""
    return [sys.executable, "-m", "sweep.launch", *args]


def launch(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start a sweep driver in `cwd`; its console goes to cwd/driver.log."""
    log = open(cwd / "driver.log", "w")
    return subprocess.Popen(launch_command(*args), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
