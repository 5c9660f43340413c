"""Where trials meet: the sweep's summary table, plots, parameter importances and the verdict.

    frame = results_frame(result_grid, varied=("beta", "dim"), preset=preset)
    summary = summarise(frame, study)          # markdown, verdict, importances
    log_summary(tracking, frame, summary, folder)

The summary is built from what trials reported to Tune (the results in its storage), so it needs
nothing from MLflow and can be rebuilt after the fact. It is logged to the sweep's parent run:
`summary.csv`, `summary.md`, `plots/rollout_vs_h.png`, `plots/pareto.png`, `importances.json`,
`verdict.md`; MLflow compares metrics across runs, but not artifacts (mlflow#2696), so this is
where trials are read side by side.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from evaluation.report import decision_gate, metrics_report
from sweep.artifacts import plot_pareto, plot_rollout_vs_horizon
from sweep.config import Preset, TrialParams
from sweep.objective import CONSTRAINT, OBJECTIVES, ROLLOUT_OBJECTIVE, TEACHER_OBJECTIVE
from sweep.tracking import SweepTracking
from sweep.trainable import STATUS

log = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 4
SUMMARY_COLUMNS = [
    "label",
    "status",
    "step",
    "teacher/k1",
    "rollout/k1",
    "rollout/k2",
    "rollout/k4",
    "rollout/k8",
    "rollout/horizon",
    ROLLOUT_OBJECTIVE,
    TEACHER_OBJECTIVE,
    "recon/mel",
    "recon/l1",
    "feasible",
    "pareto",
]


@dataclass
class Summary:
    table: str  # markdown
    verdict: str
    best_reports: list[str]  # seed-shaped tables of the best trials
    importances: dict | str  # param -> importance, or why there are none


def results_frame(
    grid, varied: tuple[str, ...], preset: Preset, seed: int = 0, fixed: dict | None = None
) -> pd.DataFrame:
    """One row per trial: its parameters, status, and the last metrics it reported."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        params = TrialParams.from_config(
            {**(fixed or {}), **{k: v for k, v in (result.config or {}).items() if k in varied}}, preset, seed
        )
        status = metrics.get(STATUS) or ("error" if result.error else "stopped early")
        rows.append(
            {
                **metrics,
                **params.to_dict(),
                "label": params.label(varied),
                "status": status,
                "trial_id": metrics.get("trial_id", ""),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column in SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = math.nan
    for column in ("step", "rollout/horizon"):
        frame[column] = frame[column].astype("Int64")  # counts print as counts; missing stays <NA>
    frame["feasible"] = frame.get(CONSTRAINT, pd.Series(math.nan, index=frame.index)).le(0.0)
    frame["pareto"] = pareto_mask(frame[list(OBJECTIVES)].to_numpy(dtype=float))
    return frame.sort_values([ROLLOUT_OBJECTIVE, TEACHER_OBJECTIVE]).reset_index(drop=True)


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows no other row dominates (all objectives minimised; NaN rows are never on the front)."""
    ok = np.isfinite(values).all(axis=1)
    front = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(ok):
        others = values[ok]
        dominated = ((others <= values[i]).all(axis=1) & (others < values[i]).any(axis=1)).any()
        front[i] = not dominated
    return front


def summarise(frame: pd.DataFrame, study=None, best: int = 2) -> Summary:
    completed = frame[frame["status"] == "completed"] if not frame.empty else frame
    table = _fmt_table(frame[SUMMARY_COLUMNS]) if not frame.empty else "(no trials)"
    configs = {row["label"]: row.to_dict() for _, row in completed.iterrows()}
    reports = [
        metrics_report(row.to_dict(), title=row["label"]) for _, row in completed.head(best).iterrows()
    ]
    return Summary(table, decision_gate(configs), reports, importances(study))


def importances(study) -> dict | str:
    """Optuna's parameter importances for each objective, once enough trials finished."""
    if study is None:
        return "no Optuna study (grid search)"
    import optuna

    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) < MIN_TRIALS_FOR_IMPORTANCE:
        return f"{len(finished)} finished trials; importances need at least {MIN_TRIALS_FOR_IMPORTANCE}"
    out = {}
    try:
        for i, name in enumerate(OBJECTIVES):
            out[name] = optuna.importance.get_param_importances(study, target=lambda t, i=i: t.values[i])
    except (ValueError, RuntimeError) as err:
        return f"not computed: {err}"
    return out


def log_summary(tracking: SweepTracking, frame: pd.DataFrame, summary: Summary, folder: Path) -> list[Path]:
    """Write the summary files under `folder` and log them to the parent run."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        _write(folder / "summary.md", summary.table + "\n\n" + summary.verdict + "\n"),
        _write(folder / "verdict.md", summary.verdict + "\n"),
        _write(folder / "importances.json", json.dumps(summary.importances, indent=2)),
    ]
    plots = []
    if not frame.empty:
        frame.to_csv(folder / "summary.csv", index=False)
        files.append(folder / "summary.csv")
        for plot, name in ((plot_rollout_vs_horizon, "rollout_vs_h.png"), (plot_pareto, "pareto.png")):
            try:  # a plot that cannot be drawn must not cost the sweep its summary
                plots.append(plot(frame, folder / "plots" / name))
            except (ValueError, KeyError, TypeError) as err:
                log.warning("skipped the %s plot: %s", name, err)
    client = MlflowClient(tracking.uri)
    for path in files:
        client.log_artifact(tracking.parent_run_id, str(path))
    for path in plots:
        client.log_artifact(tracking.parent_run_id, str(path), "plots")
    client.set_tag(tracking.parent_run_id, "sweep.verdict", summary.verdict[:5000])
    client.set_tag(tracking.parent_run_id, "sweep.trials", str(len(frame)))
    return files


def _fmt_table(frame: pd.DataFrame) -> str:
    def fmt(value):
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        if isinstance(value, float | np.floating):
            return f"{value:.3f}" if math.isfinite(value) else str(value)
        return str(value)

    return frame.map(fmt).to_markdown(index=False, disable_numparse=True)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
