"""Load: a 64-trial sweep of tiny trials completes, and the driver's memory stays flat (`pytest -m load`)."""

import time

import pytest
from helpers import launch, trial_reports
from mlflow import MlflowClient

from sweep.tracking import ROLE_TAG


def _rss(pid: int) -> int:
    """Resident memory of `pid` in bytes (Linux /proc; CI and the GPU machines are Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _finished(experiment_dir) -> int:
    return sum(
        bool(rows) and rows[-1].get("status") == "completed"
        for rows in trial_reports(experiment_dir).values()
    )


@pytest.mark.load
def test_64_trials_complete_and_driver_memory_stays_flat(tmp_path):
    args = ("--space", "beta_dim", "--preset", "tiny", "--num-samples", "64")
    driver = launch(tmp_path, *args, "--experiment", "load", "--no-dashboard")
    experiment = tmp_path / "sweep-results" / "load"
    rss, started = {}, time.monotonic()
    while driver.poll() is None:
        done = _finished(experiment)
        try:
            rss[done] = max(rss.get(done, 0), _rss(driver.pid))
        except (FileNotFoundError, StopIteration):  # the driver just exited
            break
        time.sleep(0.5)
    wall = time.monotonic() - started
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
    at_8 = min(v for k, v in rss.items() if k >= 8)
    at_64 = max(v for k, v in rss.items() if k >= 63)
    growth_mb = (at_64 - at_8) / 2**20
    print(
        f"64 trials in {wall:.0f} s; driver RSS {at_8 / 2**20:.0f} MB at trial 8, "
        f"{at_64 / 2**20:.0f} MB at trial 64"
    )
    assert growth_mb < 200, f"driver memory grew {growth_mb:.0f} MB from trial 8 to 64"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("load").experiment_id],
        f"tags.`{ROLE_TAG}` = 'trial'",
        max_results=1000,
    )
    assert len(runs) == 64 and all(r.info.status == "FINISHED" for r in runs)
