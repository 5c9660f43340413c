"""Helpers for the tests that drive whole sweeps in their own processes (a driver to kill, a node to lose)."""

import subprocess
import sys
import time
from pathlib import Path

from sweep.sync import trial_reports

__all__ = [
    "check_trial_folder", "folder_bytes", "launch", "launch_command", "prepare_fails_once_a_trial_started",
    "trial_reports",
]  # fmt: skip


def launch_command(*args: str) -> list[str]:
    """`python -m sweep.launch ARGS` with this interpreter."""
    return [sys.executable, "-m", "sweep.launch", *args]


def launch(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start a sweep driver in `cwd`; its console goes to cwd/driver.log."""
    log = open(cwd / "driver.log", "w")
    return subprocess.Popen(launch_command(*args), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)


EVALUATION_FILES = ("report.md", "recon.json", "tables/rollout.csv", "tables/injection.csv",
                    "tables/injection_curves.csv", "tables/audio_levels.csv",
                    "plots/injection.png")  # fmt: skip
WAV_KINDS = ("orig", "recon", "roll01", "roll02", "roll04", "roll08", "roll16")


def check_trial_folder(folder: Path) -> str:
    """Assert that a trial's folder in Tune's storage holds what its end calls for; returns its status.

    Every trial: its reports (result.json) and one checkpoint, holding weights and no optimizer state
    (training is over). A completed trial also: its evaluation files and WAVs under evaluation/."""
    rows = trial_reports(folder.parent)[folder.name]
    status = rows[-1].get("status") or "stopped early"
    checkpoints = sorted(folder.glob("checkpoint_*"))
    assert len(checkpoints) == 1, (folder, checkpoints)
    model = checkpoints[0] / "vae"
    assert (model / "weights.pt").is_file() and (model / "meta.json").is_file(), model
    assert not (model / "optimizer.pt").exists(), f"{model}: a finished trial keeps no optimizer state"
    evaluation = folder / "evaluation"
    if status == "completed":
        for name in EVALUATION_FILES:
            assert (evaluation / name).is_file(), evaluation / name
        wavs = {p.stem.rsplit("_", 1)[1] for p in (evaluation / "audio").glob("*.wav")}
        assert wavs == set(WAV_KINDS), (folder, wavs)
    else:
        assert not evaluation.exists(), f"{folder}: a {status} trial has no final evaluation"
    return status


def folder_bytes(folder: Path, skip: str | None = None) -> int:
    """Bytes under `folder`, leaving out its subfolder `skip`."""
    return sum(p.stat().st_size for p in folder.rglob("*")
               if p.is_file() and not (skip and p.relative_to(folder).parts[0] == skip))  # fmt: skip


def prepare_fails_once_a_trial_started(plan):
    """A stand-in for sweep.prepare.prepare_sweep (sweep.driver.PREPARE, run in the driver's preparing
    process, which imports it by name): once a trial has started, fail as a one-speaker corpus does."""
    from sweep.data import DataError

    while not list((Path(plan.storage) / plan.experiment).glob("t00*")):
        time.sleep(0.2)
    raise DataError("data folder x: a speaker-disjoint split needs at least 2 speakers, found 1")
