"""Where trials meet: the sweep's summary table, plots, parameter importances and the verdict.

    frame = results_frame(result_grid, varied=("beta", "dim"), preset=preset)
    summary = summarise(frame, study)          # markdown, verdict, importances
    written = write_summary(frame, summary, folder, experiment_dir)   # files, the listening page
    publish_summary(tracking, frame, written)  # to the parent run in MLflow, which it ends

The summary is built from what trials reported to Tune (the results in its storage), so it needs
nothing from MLflow and can be rebuilt after the fact. It is logged to the sweep's parent run:
`summary.csv`, `summary.md`, `plots/rollout_vs_h.png`, `plots/pareto.png`, `importances.json`,
`verdict.md`, `listening.html`; MLflow compares metrics across runs, but not artifacts (mlflow#2696),
so this is where trials are read (and heard) side by side.

Rows are trials (`t007`), never labels: repeats of a configuration and near-equal betas each keep
their row, and a repeated configuration also gets its mean, spread and n. Only completed trials that
meet the reconstruction constraint count for the Pareto front and the verdict; the verdict names the
others with the reason. Trials ASHA stopped are listed apart, their cheap-battery values labelled as
probe values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.report import decision_gate, markdown_table, metrics_report
from sweep import storage
from sweep.artifacts import plot_pareto, plot_rollout_vs_horizon
from sweep.config import Preset, TrialParams, trial_number, trial_seed
from sweep.listening import write_listening_page
from sweep.objective import (
    COMPLETED,
    CONSTRAINT,
    DIVERGED,
    OBJECTIVES,
    PROBE,
    ROLLOUT_OBJECTIVE,
    SCHEDULER_METRIC,
    STATUS,
    STOPPED,
    TEACHER_OBJECTIVE,
)
from sweep.tracking import SweepTracking, end_trial_run, finish_sweep, mlflow_artifact_bytes, mlflow_client

log = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 4
SUMMARY_COLUMNS = [
    "trial",
    "label",
    "seed",
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
# A stopped trial's row: where ASHA stopped it and what the cheap battery read there (nats/dim).
STOPPED_COLUMNS = {
    "trial": "trial",
    "label": "label",
    "seed": "seed",
    "step": "stopped at step",
    SCHEDULER_METRIC: "probe rollout_k4",
    PROBE + TEACHER_OBJECTIVE: "probe teacher_k1",
}
# A configuration: a trial's identity but its seed. Repeats share all of these exactly.
CONFIGURATION = tuple(
    f.name for f in dataclasses.fields(TrialParams) if f.name not in ("seed", "train_steps")
)
# What a repeated configuration shows: mean, spread and n over its completed trials.
REPEAT_METRICS = ("rollout/k4_per_dim", "teacher/k1_per_dim", "recon/mel")


@dataclass
class Summary:
    table: str  # markdown: the trials that ran to their end (completed, diverged, errored)
    verdict: str
    best_reports: list[str]  # seed-shaped tables of the best trials
    importances: dict | str  # param -> importance, or why there are none
    stopped: str = ""  # markdown: the trials ASHA stopped, with their probe values; "" if none
    repeats: str = ""  # markdown: repeated configurations, mean / spread / n; "" if none
    storage: str = ""  # what the sweep's files take on disk
    counts: str = ""  # how the trials ended, and how many Tune restarted after a failure

    def tables(self) -> str:
        """The trials' tables: those that ran to their end, repeats, those ASHA stopped."""
        parts = [self.table]
        if self.repeats:
            parts.append("Repeated configurations (completed trials; mean, standard deviation, n):\n\n"
                         + self.repeats)  # fmt: skip
        if self.stopped:
            parts.append("Stopped early by ASHA (probe values: the cheap battery at the rung, "
                         "nats/dim; not comparable with the table above):\n\n" + self.stopped)  # fmt: skip
        return "\n\n".join(parts) + "\n"

    def closing(self) -> str:
        """How the trials ended, the verdict, the storage used."""
        verdict = "Verdict:\n" + "\n".join(f"- {line}" for line in self.verdict.splitlines())
        return "\n\n".join(part for part in (self.counts, verdict, self.storage) if part) + "\n"

    def text(self) -> str:
        """The whole summary, as summary.md holds it."""
        return self.tables() + "\n" + self.closing()


def results_frame(
    results, varied: tuple[str, ...], preset: Preset, seed: int = 0, fixed: dict | None = None
) -> pd.DataFrame:
    """One row per trial, keyed by its name (`t007`): its parameters and seed, status, and the last
    metrics it reported. `results`: Tune's ResultGrid, or anything whose items have `.metrics`,
    `.config`, `.error` and `.path` (the trial's folder, named after the trial)."""
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        name = Path(result.path).name
        config = {**(fixed or {}), **{k: v for k, v in (result.config or {}).items() if k in varied}}
        params = TrialParams.from_config(config, preset, trial_seed(seed, trial_number(name)))
        status = metrics.get(STATUS) or ("error" if result.error else STOPPED)
        rows.append({**metrics, **params.to_dict(), "trial": name, "label": params.label(varied),
                     "status": status, "trial_id": metrics.get("trial_id", "")})  # fmt: skip
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for column in [*SUMMARY_COLUMNS, *STOPPED_COLUMNS, CONSTRAINT]:
        if column not in frame:
            frame[column] = math.nan
    for column in ("step", "rollout/horizon", "seed"):
        frame[column] = frame[column].astype("Int64")  # counts print as counts; missing stays <NA>
    # A stopped trial's last report holds the objectives' placeholders: its values are probe values.
    frame.loc[frame["status"].eq(STOPPED), list(OBJECTIVES)] = math.nan
    completed = frame["status"].eq(COMPLETED)
    frame["feasible"] = completed & frame[CONSTRAINT].le(0.0)
    eligible = frame["feasible"].to_numpy()
    values = frame[list(OBJECTIVES)].to_numpy(dtype=float)
    frame["pareto"] = False
    frame.loc[eligible, "pareto"] = pareto_mask(values[eligible])  # among completed, feasible trials only
    order = frame["status"].map({COMPLETED: 1, DIVERGED: 2, "error": 3}).fillna(4) - frame["feasible"]
    frame = frame.assign(_order=order).sort_values(["_order", ROLLOUT_OBJECTIVE, TEACHER_OBJECTIVE, "trial"])
    return frame.drop(columns="_order").reset_index(drop=True)


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Rows no other row dominates (all objectives minimised; NaN rows are never on the front)."""
    ok = np.isfinite(values).all(axis=1)
    front = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(ok):
        others = values[ok]
        dominated = ((others <= values[i]).all(axis=1) & (others < values[i]).any(axis=1)).any()
        front[i] = not dominated
    return front


def summarise(
    frame: pd.DataFrame, study=None, best: int = 2, codec: str = "", reference: dict | None = None
) -> Summary:
    """The summary of a sweep's results frame. `codec`: the sweep's codec; a random-init one makes the
    verdict say that the sweep checked the plumbing and found nothing about Mimi's latents.
    `reference`: the codec's own recon/mel and recon/l1, shown as the table's first row."""
    plumbing = plumbing_note(codec)
    if frame.empty:
        return Summary(
            "(no trials)", "\n".join(filter(None, [decision_gate({}), plumbing])), [], importances(study)
        )
    ran = frame[frame["status"] != STOPPED]
    eligible = frame[frame["feasible"]]
    configs = {f"{row['trial']} ({row['label']})": row.to_dict() for _, row in eligible.iterrows()}
    reports = [
        metrics_report(row.to_dict(), title=f"{row['trial']} {row['label']}")
        for _, row in eligible.head(best).iterrows()
    ]
    verdict = (
        decision_gate(configs)
        if configs
        else "no completed trial meets the reconstruction constraint: no verdict."
    )
    excluded = not_counted(frame)
    if excluded:
        verdict += "\nNot counted: " + "; ".join(excluded) + "."
    if plumbing:
        verdict += "\n" + plumbing
    return Summary(
        counts=trial_counts(frame),
        table=_trials_table(ran, reference),
        verdict=verdict,
        best_reports=reports,
        importances=importances(study),
        stopped=_stopped_table(frame),
        repeats=_repeats_table(frame),
    )


def _trials_table(ran: pd.DataFrame, reference: dict | None) -> str:
    """The trials that ran to their end, under a first row for the codec's own reconstruction (no
    bottleneck): what a trial's recon/* compares with."""
    rows = ran[SUMMARY_COLUMNS]
    if reference:
        codec = dict.fromkeys(SUMMARY_COLUMNS, "")
        codec.update(trial="codec", label="codec only, no bottleneck", status="reference", **reference)
        rows = pd.concat([pd.DataFrame([codec], columns=SUMMARY_COLUMNS), rows.astype(object)])
    return markdown_table(rows) if len(rows) else "(no trial ran to its end)"


def plumbing_note(codec: str) -> str:
    """For a random-init codec: the verdict's reminder that nothing was measured about Mimi."""
    if not codec.startswith("random:"):
        return ""
    return (f"Plumbing check, not a finding: the codec is random-init ({codec}), so these numbers say "
            "nothing about Mimi's latents; run with the pretrained codec (--codec kyutai/mimi) for the "
            "research question.")  # fmt: skip


def trial_counts(frame: pd.DataFrame) -> str:
    """'16 trials: 12 completed, 4 stopped early; 0 restarted after a failure.' (`failures`: a column
    of restarts per trial, where the driver knows them.)"""
    counts = frame["status"].value_counts()
    order = [s for s in (COMPLETED, STOPPED, DIVERGED, "error") if s in counts] + sorted(
        set(counts.index) - {COMPLETED, STOPPED, DIVERGED, "error"}
    )
    ended = ", ".join(f"{counts[status]} {status}" for status in order)
    line = f"{len(frame)} trials: {ended}"
    if "failures" in frame:
        line += f"; {int((frame['failures'] > 0).sum())} restarted after a failure"
    return line + "."


def not_counted(frame: pd.DataFrame) -> list[str]:
    """Each trial the verdict leaves out, with the reason."""
    out = []
    for _, row in frame[~frame["feasible"]].iterrows():
        who = f"{row['trial']} ({row['label']})"
        if row["status"] == COMPLETED:
            limit = row["recon/mel"] - row[CONSTRAINT]
            out.append(f"{who}: recon/mel {row['recon/mel']:.3g} over the limit {limit:.3g}")
        elif row["status"] == STOPPED:
            out.append(f"{who}: stopped early by ASHA at step {row['step']}")
        elif row["status"] == DIVERGED:
            out.append(f"{who}: diverged at step {int(row.get('diverged/step', row['step']))}")
        else:
            out.append(f"{who}: {row['status']}")
    return out


def _stopped_table(frame: pd.DataFrame) -> str:
    stopped = frame[frame["status"] == STOPPED]
    if stopped.empty:
        return ""
    return markdown_table(stopped[list(STOPPED_COLUMNS)].rename(columns=STOPPED_COLUMNS))


def _repeats_table(frame: pd.DataFrame) -> str:
    completed = frame[frame["status"] == COMPLETED]
    rows = []
    for _, group in completed.groupby(list(CONFIGURATION), sort=False):  # exact values, not the label
        if len(group) < 2:
            continue
        row = {"label": group["label"].iloc[0], "n": len(group), "trials": " ".join(group["trial"])}
        for metric in REPEAT_METRICS:
            values = group[metric].astype(float)
            row[metric] = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
        rows.append(row)
    return markdown_table(pd.DataFrame(rows)) if rows else ""


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
            with warnings.catch_warnings():  # PedAnova's "low target values" reminder: ours are minimised
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator", category=UserWarning)
                out[name] = optuna.importance.get_param_importances(study, target=lambda t, i=i: t.values[i])
    except (ValueError, RuntimeError) as err:
        return f"not computed: {err}"
    return out


@dataclass(frozen=True)
class SummaryFiles:
    """What write_summary wrote, for the parent run: the files, the plots, the verdict, the trials."""

    files: list[Path]
    plots: list[Path]
    verdict: str
    trials: int


def write_summary(
    frame: pd.DataFrame, summary: Summary, folder: Path, experiment_dir: str = ""
) -> SummaryFiles:
    """The summary files under `folder`; with `experiment_dir` (Tune's folder, where the trials' WAVs
    are) the listening page too (sweep/listening.py). A plot or a page that cannot be made is skipped
    with a warning: it must not cost the sweep its summary."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        _write(folder / "summary.md", summary.text()),
        _write(folder / "verdict.md", summary.verdict + "\n"),
        _write(folder / "importances.json", json.dumps(summary.importances, indent=2)),
    ]
    plots = write_plots(frame, folder)
    if not frame.empty:
        frame.to_csv(folder / "summary.csv", index=False)
        files.append(folder / "summary.csv")
        if experiment_dir:
            try:
                page = write_listening_page(frame, experiment_dir, folder, Path(experiment_dir).name, plots)
                files += [page] if page else []
            except Exception as err:  # noqa: BLE001 -- any failure of the page, a bug too, is reported
                log.warning(
                    "skipped the listening page (%s: %s); rebuild it with python -m sweep.report %s",
                    type(err).__name__, err, Path(experiment_dir).name,
                )  # fmt: skip
    return SummaryFiles(files, plots, summary.verdict, len(frame))


def log_summary(tracking: SweepTracking, written: SummaryFiles) -> None:
    """The summary's files and plots to the sweep's parent run, with the verdict as a tag."""
    client = mlflow_client(tracking.uri)
    for path in written.files:
        client.log_artifact(tracking.parent_run_id, str(path))
    for path in written.plots:
        client.log_artifact(tracking.parent_run_id, str(path), "plots")
    client.set_tag(tracking.parent_run_id, "sweep.verdict", written.verdict[:5000])
    client.set_tag(tracking.parent_run_id, "sweep.trials", str(written.trials))


def write_plots(frame: pd.DataFrame, folder: Path) -> list[Path]:
    """folder/plots/rollout_vs_h.png and pareto.png, of the completed trials (probe values are never
    plotted as final ones); a plot that cannot be drawn is skipped with a warning."""
    if frame.empty:
        return []
    completed = frame[frame["status"] == COMPLETED]
    completed = completed.assign(label=completed["trial"] + " " + completed["label"])
    plots = []
    for plot, name in ((plot_rollout_vs_horizon, "rollout_vs_h.png"), (plot_pareto, "pareto.png")):
        try:  # a plot that cannot be drawn must not cost the sweep its summary
            plots.append(plot(completed, folder / "plots" / name))
        except (ValueError, KeyError, TypeError) as err:
            log.warning("skipped the %s plot: %s", name, err)
    return plots


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def storage_report(experiment_dir: str, tracking: SweepTracking) -> str:
    """One line: what the sweep's files take in Tune's storage, by kind, and MLflow's copies."""
    used = storage.usage(experiment_dir)
    largest = max(used.per_trial_checkpoints.values(), default=0)
    line = (
        f"Storage: {storage.human(used.total)} in {experiment_dir}: checkpoints "
        f"{storage.human(used.checkpoints)} ({len(used.per_trial_checkpoints)} trials, at most "
        f"{storage.human(largest)} each), evaluation files {storage.human(used.evaluation)}, Tune's "
        f"records and the summary {storage.human(used.other)}"
    )
    copies = mlflow_artifact_bytes(tracking)
    if copies is not None:
        line += f"; MLflow's copies of the trials' files {storage.human(copies)}"
    return line + "."


def publish_summary(tracking: SweepTracking, frame: pd.DataFrame, written: SummaryFiles | None) -> None:
    """Close any child run the callback missed, log the summary's files (write_summary; None where
    they could not be written) to the parent run, end it."""
    for trial_id, status in zip(frame.get("trial_id", []), frame.get("status", []), strict=True):
        end_trial_run(tracking, trial_id, status)
    if written is not None:
        log_summary(tracking, written)
    finish_sweep(tracking)
