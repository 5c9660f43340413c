"""What the driver does as Tune reports how trials go: one console line per trial event, close each
trial's MLflow run, and drop the optimizer state of a trial that will not train again.

    12:03:07 t001 started: beta=0.01 dim=32                                     [0/16 done, 4 running]
    12:09:41 t003 rung at step 500: probe rollout_k4 -0.118, teacher_k1 -0.402 nats/dim
    12:09:52 t003 stopped by ASHA at step 500                                   [1/16 done, 4 running]
    12:31:20 t001 finished at step 10000: rollout_k4 -0.760, teacher_k1 -0.852 nats/dim; recon/mel 13.2
"""

from __future__ import annotations

import logging
import math
import time

import pyarrow.fs as pafs
from ray import tune

from models.spec import CHECKPOINT_OPTIMIZER
from sweep.config import TrialParams
from sweep.objective import (
    CHECKPOINT_MODEL,
    COMPLETED,
    DIVERGED,
    PROBE,
    ROLLOUT_OBJECTIVE,
    STATUS,
    STOPPED,
    TEACHER_OBJECTIVE,
    TIME_ATTR,
)
from sweep.plan import SweepPlan
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


class TrialEvents(tune.Callback):
    """The quiet console: one line per trial event (started, rung, restarted, stopped, finished with its
    objectives), each ending with the sweep's progress. Tune's own tables are for --verbose."""

    def __init__(self, plan: SweepPlan):
        self.plan, self.total = plan, plan.trial_count
        self._rungs: dict[str, set[int]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        params = TrialParams.from_config({**self.plan.fixed, **trial.config}, self.plan.preset)
        self._rungs[trial.trial_id] = set(self.plan.rungs(params.train_steps))
        label = params.label(self.plan.varied)
        self._say(trial, f"started: {label}, {params.train_steps} steps", trials, "start")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = result.get(TIME_ATTR)
        if step in self._rungs.get(trial.trial_id, ()) and STATUS not in result:
            self._say(trial, f"rung at step {step}: probe {_objectives(result, PROBE)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(trial, "failed; Tune restarts it from its last checkpoint", trials, "start")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        step, status = result.get(TIME_ATTR, "?"), result.get(STATUS)
        if status == COMPLETED:
            recon = result.get("recon/mel", math.nan)
            text = f"finished at step {step}: {_objectives(result)}; recon/mel {recon:.3g}"
        elif status == DIVERGED:
            text = f"diverged at step {step} (a non-finite loss); the sweep goes on"
        else:
            text = f"stopped by ASHA at step {step}"  # no status of its own: the summary's "stopped early"
        self._say(trial, text, trials, "end")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(trial, f"failed for good; its error: {trial.path}/error.txt", trials, "end")

    def _say(self, trial, text: str, trials=None, event: str = "") -> None:
        """Print one line; with `trials`, the progress too, counting `trial` as its event leaves it
        (Tune calls back before it updates the trial's status)."""
        line = f"{time.strftime('%H:%M:%S')} {trial} {text}"  # str(trial): its name, t<number>
        if trials is not None:
            others = [t for t in trials if t is not trial]
            done = sum(t.status in ("TERMINATED", "ERROR") for t in others) + (event == "end")
            running = sum(t.status == "RUNNING" for t in others) + (event == "start")
            line = f"{line:<84s} [{done}/{self.total} done, {running} running]"
        print(line, flush=True)  # looked up when called: Tune pickles its callbacks with its state


def _objectives(result: dict, prefix: str = "") -> str:
    values = [result.get(prefix + name) for name in (ROLLOUT_OBJECTIVE, TEACHER_OBJECTIVE)]
    shown = [f"{v:.3f}" if isinstance(v, int | float) else "?" for v in values]
    return f"rollout_k4 {shown[0]}, teacher_k1 {shown[1]} nats/dim"
