"""What the searcher and the scheduler optimise (docs/science.md §5), defined once (ray#35909), and the
other keys of a trial's reports and checkpoints.

    values = objective_values(metrics, dim=32, max_recon_mel=4.0)
    values["objective/rollout_k4"]    # rollout/k4 / D, or SURROGATE when not finite: what Optuna sees
    values["rollout/k4_per_dim"]      # the raw value per dimension, inf / nan as they are
    probe_values(battery_metrics, dim=32)  # the same at an ASHA rung, each name under probe/

Both objectives are delta-NLLs per latent dimension (nats/dim; lower is better) so that bottleneck
sizes compare fairly: summed NLLs grow with D. Non-finite values never reach a searcher or a
scheduler (ray#11670, optuna#2169, and OptunaSearch leaves NaN-told trials RUNNING): they get
`SURROGATE`, worse than any real value, and the raw value is logged beside it. Reconstruction is a
constraint, `recon/mel - max_recon_mel <= 0` (feasible), handed to Optuna with `set_constraint`.

`objective/*` is measured by a trial's final battery only (earlier reports carry the surrogate as a
placeholder, since Tune wants the searcher's metrics in every result). ASHA decides on the cheap
battery run at its rungs, reported as `probe/objective/rollout_k4`; a trial it stops ends with probe
values only, and is PRUNED for Optuna, never a point of the Pareto front.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ROLLOUT_OBJECTIVE = "objective/rollout_k4"
TEACHER_OBJECTIVE = "objective/teacher_k1"
OBJECTIVES = (ROLLOUT_OBJECTIVE, TEACHER_OBJECTIVE)
OBJECTIVE_MODES = ("min", "min")
PROBE = "probe/"  # the cheap battery at ASHA's rungs: its values are named apart from the final battery's
SCHEDULER_METRIC = PROBE + ROLLOUT_OBJECTIVE  # ASHA stops on the cheap battery's k=4 rollout
SCHEDULER_MODE = "min"
TIME_ATTR = "step"  # VAE optimiser steps done: ASHA's clock, reported with every result
CONSTRAINT = "constraint/recon_mel"
MEASURED = "probe/measured"  # 0 until the first cheap battery has run, then 1
STATUS = "status"  # in a trial's last result only: how it ended
COMPLETED, DIVERGED = "completed", "diverged"  # reported by the trial itself
STOPPED = "stopped early"  # a trial that ended without a status of its own: ASHA stopped it
SURROGATE = 1000.0  # nats per dimension: worse than any finite delta-NLL a trial can reach

_SOURCES = {ROLLOUT_OBJECTIVE: ("rollout/k4", "rollout/finite/k4"), TEACHER_OBJECTIVE: ("teacher/k1", None)}
WALL = "time/wall"  # epoch seconds of each report: sweep.bench aligns trials' step counts on it
CHECKPOINT_STEP = "checkpoint/step"  # in a report that carries a checkpoint: the step that checkpoint holds
STARTED = "time/started"  # epoch seconds at which the trial's code began (every report): sweep.bench
NODE_ID = "node_id"  # the Ray node of each report
CHECKPOINT_MODEL = "vae"  # in each checkpoint: models.training's weights.pt (+ optimizer.pt), meta.json
CHECKPOINT_PROBE = "objectives.json"  # in each checkpoint: the latest probe values, for a restored trial


def objective_values(metrics: Mapping[str, float], dim: int, max_recon_mel: float | None = None) -> dict:
    """The searcher's finite objectives, the raw per-dimension values, and the recon constraint."""
    out: dict[str, float] = {}
    for objective, (key, finite_key) in _SOURCES.items():
        raw = float(metrics.get(key, math.nan)) / dim
        out[f"{key}_per_dim"] = raw
        finite = math.isfinite(raw) and (finite_key is None or bool(metrics.get(finite_key, 1.0)))
        out[objective] = min(raw, SURROGATE) if finite else SURROGATE
    if max_recon_mel is not None:
        out[CONSTRAINT] = constraint_value(metrics.get("recon/mel", math.nan), max_recon_mel)
    return out


def constraint_value(recon_mel: float, max_recon_mel: float) -> float:
    """Feasible when <= 0; a non-finite reconstruction is infeasible (SURROGATE), never NaN."""
    value = float(recon_mel) - max_recon_mel
    return value if math.isfinite(value) else SURROGATE


def probe_values(metrics: Mapping[str, float], dim: int) -> dict:
    """The cheap battery's objectives and raw values, every name under `probe/`: a probe value is
    never read as a final one (a trial ASHA stops has only these)."""
    values = objective_values(metrics, dim)
    raw = {k: v for k, v in metrics.items() if k.startswith(("rollout/k", "teacher/k"))}
    return {MEASURED: 1.0, **{PROBE + k: v for k, v in {**raw, **values}.items()}}


def pending() -> dict:
    """The searcher's metrics in every report before the final one: Tune refuses a result without them
    (tune_controller._validate_result_metrics). The surrogate, as a placeholder: a report without a
    status is never read as a trial's value (the searcher prunes a trial that ends on one)."""
    return dict.fromkeys(OBJECTIVES, SURROGATE)


def unmeasured() -> dict:
    """What every report carries before the first cheap battery: ASHA needs its metric in each result."""
    return {MEASURED: 0.0, SCHEDULER_METRIC: SURROGATE}
