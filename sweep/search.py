"""How trials are chosen and stopped: the search space Tune samples, Optuna's multi-objective TPE (or the
grid) under the reconstruction constraint, and ASHA on the probes' k=4 rollout (docs/science.md §5).

    tuner = tune.Tuner(trainable, param_space=param_space(plan),
                       tune_config=tune.TuneConfig(search_alg=searcher(plan), scheduler=scheduler(plan)))
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweep import spaces
from sweep.config import ASHA_REDUCTION
from sweep.objective import (
    CONSTRAINT,
    OBJECTIVE_MODES,
    OBJECTIVES,
    PROBE,
    SCHEDULER_METRIC,
    SCHEDULER_MODE,
    STATUS,
    SURROGATE,
    TEACHER_OBJECTIVE,
    TIME_ATTR,
)
from sweep.plan import SweepPlan


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that hands Optuna the recon constraint, never a non-finite objective, and a trial
    ASHA stopped as PRUNED.

    Optuna 5 reads constraints from `trial.set_constraint` (the sampler-level constraints_func is
    deprecated); OptunaSearch's ask/tell has no place for them, so they are set on the trial just
    before it is told. Non-finite values would leave the study's trial RUNNING (OptunaSearch logs
    and swallows tell's error), so they become the surrogate here as a last guard. A stopped trial's
    last result holds probe values only (no `status`): Optuna learns it as PRUNED, with the step it
    was stopped at and its probe values as user attributes, never as a COMPLETE trial.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if error:
            result = None  # a list of Nones would be told as COMPLETE and fail there: FAIL it is
        if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            ot_trial = self._ot_trials[trial_id]
            if result.get(STATUS) is None:
                for key in (TIME_ATTR, SCHEDULER_METRIC, PROBE + TEACHER_OBJECTIVE):
                    if isinstance(result.get(key), int | float):
                        ot_trial.set_user_attr(key, float(result[key]))
                result = None  # OptunaSearch tells a trial without values as PRUNED
            else:
                result = dict(result)
                for name in OBJECTIVES:
                    value = result.get(name)
                    if value is not None and not math.isfinite(value):
                        result[name] = SURROGATE
                if CONSTRAINT in result and all(result.get(name) is not None for name in OBJECTIVES):
                    ot_trial.set_constraint("recon_mel", float(result[CONSTRAINT]))
        super().on_trial_complete(trial_id, result, error)


class OrderedGrid(Searcher):
    """A grid sweep's points in the order spaces.grid_points gives them (longest trials first, the
    compiled step's shapes in turn), one per trial; Tune's own grid_search would vary beta fastest.
    Its state (the points, how many were handed out) is saved with Tune's, so --resume goes on."""

    def __init__(self, points: list[dict]):
        super().__init__()
        self.points, self.handed_out = [dict(p) for p in points], 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the points are the space; the scheduler has the metric

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.handed_out >= len(self.points):
            return Searcher.FINISHED
        self.handed_out += 1
        return dict(self.points[self.handed_out - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def get_state(self) -> dict:
        return {"points": self.points, "handed_out": self.handed_out}

    def set_state(self, state: dict) -> None:
        self.points, self.handed_out = state["points"], state["handed_out"]

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))


def param_space(plan: SweepPlan) -> dict:
    """Tune's param space: the plan's named space for Optuna; none for a grid (OrderedGrid hands out
    its points)."""
    return {} if plan.search == "grid" else spaces.SPACES[plan.space](plan.search)


def searcher(plan: SweepPlan):
    if plan.search == "grid":
        return OrderedGrid(spaces.grid_points(plan.space, plan.num_samples, plan.fixed))
    import optuna

    storage = optuna.storages.RDBStorage(plan.optuna_uri)
    return ConstrainedOptunaSearch(
        metric=list(OBJECTIVES),
        mode=list(OBJECTIVE_MODES),
        points_to_evaluate=[spaces.baseline_point(plan.space)],
        study_name=plan.experiment,
        storage=storage,
        seed=plan.seed,
    )


def scheduler(plan: SweepPlan):
    if plan.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=SCHEDULER_METRIC,
        mode=SCHEDULER_MODE,
        max_t=plan.max_train_steps(),
        grace_period=plan.preset.probe_first,
        reduction_factor=ASHA_REDUCTION,
    )


def load_study(plan: SweepPlan):
    """The sweep's Optuna study (None for a grid)."""
    if plan.search != "optuna":
        return None
    import optuna

    return optuna.load_study(study_name=plan.experiment, storage=plan.optuna_uri)
