"""What the driver does as Tune reports how trials go: close each trial's MLflow run and drop the
optimizer state of a trial that will not train again.
"""

from __future__ import annotations

import logging

import pyarrow.fs as pafs
from ray import tune

from models.training import CHECKPOINT_OPTIMIZER
from sweep.objective import CHECKPOINT_MODEL, COMPLETED, STATUS, STOPPED
from sweep.tracking import SweepTracking, end_trial_run

log = logging.getLogger(__name__)


class TrialLifecycle(tune.Callback):
    """In the driver, as Tune records how each trial ended: closes its MLflow child run, and drops the
    optimizer state from the last checkpoint of a trial that will not train again (stopped by ASHA,
    diverged): its weights are what it keeps. (An errored trial keeps it: --resume retries it.)"""

    def __init__(self, tracking: SweepTracking, keep_optimizer: bool = False):
        self.tracking, self.keep_optimizer = tracking, keep_optimizer

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = (trial.last_result or {}).get(STATUS) or STOPPED
        if status != COMPLETED and not self.keep_optimizer:
            drop_optimizer_state(trial.checkpoint)
        self._end(trial.trial_id, status)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial.trial_id, "error")

    def _end(self, trial_id: str, status: str) -> None:
        try:
            end_trial_run(self.tracking, trial_id, status)
        except Exception as err:  # MLflow away: the sweep goes on; _finish tries again at the end
            log.warning("could not close the MLflow run of trial %s: %s", trial_id, err)


def drop_optimizer_state(checkpoint: tune.Checkpoint | None) -> None:
    """Delete optimizer.pt (2/3 of a resumable checkpoint) from `checkpoint`, wherever it is stored."""
    if checkpoint is None:
        return
    path = f"{checkpoint.path}/{CHECKPOINT_MODEL}/{CHECKPOINT_OPTIMIZER}"
    if checkpoint.filesystem.get_file_info(path).type == pafs.FileType.File:
        checkpoint.filesystem.delete_file(path)
