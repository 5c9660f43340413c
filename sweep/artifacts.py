"""The files a trial's MLflow run holds, written locally first (then copied to Tune's trial folder).

    files = write_trial_files(evaluation, folder)     # tables, plots, recon.json, report.md
    log_trial_evaluation(run, evaluation, files)      # the same, the rollout table, the WAVs -> MLflow

Child run layout: `tables/rollout.csv` (+ `tables/rollout.json` via `log_table`, which MLflow can
merge across runs), `tables/injection.csv`, `tables/injection_curves.csv`, `tables/audio_levels.csv`
(each WAV's peak and clipped share), `plots/injection.png`,
`recon.json`, `report.md`, and the WAVs under `audio/` (MLflow's artifact viewer plays them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: trials and the driver have no display
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.diagnostics import INJECTION_METRICS  # noqa: E402
from evaluation.trial import TrialEvaluation  # noqa: E402
from sweep.hosted_run import HostedTrialRun  # noqa: E402
from sweep.tracking import TrialRun  # noqa: E402


def write_trial_files(evaluation: TrialEvaluation, folder: Path) -> dict[str, list[Path]]:
    """Tables, plot, recon metrics and the report under `folder`; returns {artifact folder: file}."""
    tables = folder / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    battery = evaluation.battery
    files = {
        "tables": [
            _csv(battery.rollout_table, tables / "rollout.csv"),
            _csv(battery.injection, tables / "injection.csv"),
            _csv(battery.injection_curves, tables / "injection_curves.csv"),
            _csv(evaluation.audio_levels, tables / "audio_levels.csv"),
        ],
        "plots": [plot_injection_curves(battery.injection_curves, folder / "plots" / "injection.png")],
        None: [
            _text(folder / "recon.json", json.dumps(evaluation.recon, indent=2)),
            _text(folder / "report.md", evaluation.report),
        ],  # fmt: skip
    }
    return files


def log_trial_evaluation(
    run: TrialRun | HostedTrialRun, evaluation: TrialEvaluation, files: dict[str, list[Path]]
) -> None:
    """Log what write_trial_files wrote (`files`) and the WAVs to the trial's MLflow run."""
    for artifact_folder, paths in files.items():
        for path in paths:
            run.log_artifact(path, artifact_folder)
    run.log_table(evaluation.battery.rollout_table, "tables/rollout.json")
    if evaluation.wavs:
        run.log_artifacts(evaluation.wavs[0].parent, "audio")


def plot_injection_curves(curves, path: Path) -> Path:
    """One panel per injection metric, one line per mode, over the injection steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(INJECTION_METRICS), figsize=(4 * len(INJECTION_METRICS), 3.2))
    for ax, metric in zip(axes, INJECTION_METRICS, strict=True):
        for mode, rows in curves.groupby("mode", sort=False):
            ax.plot(rows["step"], rows[metric], marker=".", label=mode)
        ax.set_title(metric)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle("Injection diagnostic (MDN_1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rollout_vs_horizon(frame, path: Path) -> Path:
    """Delta-NLL per latent dimension against h, one colour per trial: the free-running rollout (solid)
    and the teacher-forced h-step prediction (dashed), non-finite points omitted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hs = sorted(int(c[9:]) for c in frame.columns if c.startswith("rollout/k") and c[9:].isdigit())
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (_, row) in enumerate(frame.iterrows()):
        for kind, style in (("rollout", "-"), ("teacher", "--")):
            values = [row.get(f"{kind}/k{h}", math.nan) for h in hs]
            values = [v / row["dim"] if math.isfinite(v) else math.nan for v in values]
            label = row["label"] if kind == "rollout" else None
            ax.plot(
                hs, values, style, marker="o" if kind == "rollout" else None, color=f"C{i % 10}", label=label
            )
    ax.axhline(0.0, color="grey", lw=0.8)
    if hs:
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs, [str(h) for h in hs])
    ax.set_xlabel("horizon h (frames of 80 ms)")
    ax.set_ylabel("delta-NLL (nats / dim): rollout solid, teacher dashed")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(frame, path: Path) -> Path:
    """Both objectives per trial, the non-dominated ones joined; infeasible (recon) trials hollow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x, y = frame["objective/teacher_k1"], frame["objective/rollout_k4"]
    feasible = frame["feasible"].astype(bool)
    ax.scatter(x[feasible], y[feasible], label="feasible")
    ax.scatter(x[~feasible], y[~feasible], facecolors="none", edgecolors="C3", label="recon over limit")
    front = frame[frame["pareto"]].sort_values("objective/teacher_k1")
    ax.step(front["objective/teacher_k1"], front["objective/rollout_k4"], where="post", color="C1")
    ax.scatter(
        front["objective/teacher_k1"],
        front["objective/rollout_k4"],
        marker="*",
        s=160,
        color="C1",
        label="Pareto front",
        zorder=3,
    )
    for _, row in frame.iterrows():
        ax.annotate(row["label"], (row["objective/teacher_k1"], row["objective/rollout_k4"]), fontsize=7)
    ax.set_xlabel("teacher delta-NLL, h=1 (nats / dim)")
    ax.set_ylabel("rollout delta-NLL, k=4 (nats / dim; surrogate if non-finite)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _csv(frame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
