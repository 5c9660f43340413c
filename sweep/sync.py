"""Send a sweep's results from Tune's storage to MLflow again, after MLflow was away.

    python -m sweep.sync beta_dim-smoke-20261125-210305                  # ./sweep-results, the sweep's MLflow
    python -m sweep.sync NAME --storage /shared/sweep-results --mlflow-uri http://127.0.0.1:5000

Trials keep running when MLflow goes away mid-sweep (they stop logging after a few failed calls);
everything they measured is in Tune's storage: every report in `result.json`, the final tables,
plots, report and WAVs in the trial's `evaluation/` folder. This command finds (or creates) each
trial's child run, logs the reports whose steps MLflow does not have yet, the files it lacks, and
how the trial ended, then the sweep's summary to the parent run. Running it twice adds nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from sweep import storage
from sweep.config import TrialParams, trial_number, trial_seed
from sweep.errors import UsageError, report_usage_error
from sweep.objective import OBJECTIVES, PROBE, STATUS, WALL
from sweep.plan import PLAN_FILE, SweepPlan
from sweep.search import load_study
from sweep.summary import publish_summary, results_frame, summarise, write_summary
from sweep.tracking import (
    SweepTracking,
    TrackingUnreachable,
    TrialRun,
    check_reachable,
    mlflow_client,
    open_sweep_tracking,
)

log = logging.getLogger(__name__)
SHARED_TAGS = ("git.", "data.", "codec.", "sweep.space", "sweep.search", "sweep.preset", "sweep.experiment")


def sync_sweep(plan: SweepPlan, mlflow_uri: str | None = None) -> dict:
    """Bring MLflow up to date with Tune's results; returns counts of what was sent."""
    uri = mlflow_uri or plan.mlflow_uri
    check_reachable(uri)
    tracking = _parent(plan, uri)
    trials = stored_trials(Path(plan.experiment_dir))
    sent = {"trials": 0, "reports": 0, "files": 0}
    for trial in trials:
        name = trial.folder.name
        seed = trial_seed(plan.seed, trial_number(name))
        params = TrialParams.from_config({**plan.fixed, **trial.config}, plan.preset, seed)
        run = TrialRun.find_or_create(
            tracking, trial.trial_id, f"{name} {params.label(plan.varied)}", params.run_params(),
            {"sweep.trial_name": name, "seed": str(seed)}, count_attempt=False,
        )  # fmt: skip
        rungs = plan.rungs(params.train_steps)
        sent["reports"] += _send_reports(run, trial.rows, set(rungs))
        sent["files"] += _send_files(run, trial.folder / "evaluation")
        sent["trials"] += 1
    frame = results_frame(trials, plan.varied, plan.preset, plan.seed, fixed=plan.fixed)
    summary = summarise(frame, load_study(plan), codec=plan.codec, reference=plan.codec_reference)
    publish_summary(tracking, frame, write_summary(frame, summary, plan.summary_dir, plan.experiment_dir))
    return sent


def _parent(plan: SweepPlan, uri: str) -> SweepTracking:
    client = mlflow_client(uri)
    if plan.parent_run_id:
        try:
            run = client.get_run(plan.parent_run_id)
            tags = {k: v for k, v in run.data.tags.items() if k.startswith(SHARED_TAGS)}  # for new child runs
            return SweepTracking(uri, run.info.experiment_id, plan.parent_run_id, tags)
        except Exception:  # a different server, or the store was lost: start the parent again
            log.info("parent run %s not in %s; creating a new one", plan.parent_run_id, uri)
    tracking = open_sweep_tracking(uri, plan.experiment, Path(plan.workdir) / "mlartifacts", {}, {})
    plan.parent_run_id = tracking.parent_run_id
    plan.save()
    return tracking


def trial_reports(experiment_dir: Path) -> dict[str, list[dict]]:
    """Every report Tune stored for each trial of a sweep: {trial folder name: [result, ...]}."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(experiment_dir.glob("*/result.json"))
    }


def stored_trials(experiment_dir: Path) -> list[SimpleNamespace]:
    """Each trial's reports and config, shaped like the Tune results the summary reads."""
    trials = []
    for name, rows in trial_reports(experiment_dir).items():
        if not rows:
            continue
        folder = experiment_dir / name
        config = json.loads((folder / "params.json").read_text())
        trials.append(
            SimpleNamespace(
                rows=rows,
                metrics=rows[-1],
                config=config,
                error=None,
                folder=folder,
                path=str(folder),
                trial_id=rows[-1]["trial_id"],
            )
        )
    return trials


def _send_reports(run: TrialRun, rows: list[dict], rungs: set[int]) -> int:
    """The reports MLflow lacks, as the trial logs them: probe values only at the rung they came from,
    objectives only from the final report."""
    logged = {m.step for m in run.client.get_metric_history(run.run_id, "train/loss")}
    fresh = [row for row in rows if row.get("step") is not None and row["step"] not in logged]
    for row in fresh:
        final = row.get(STATUS) is not None
        probe = not final and row["step"] in rungs
        metrics = {
            k: v for k, v in row.items() if "/" in k and k != WALL and (probe or not k.startswith(PROBE))
        }  # time/wall is a Unix time, for sweep.bench: not a metric
        if not final:  # the surrogate placeholders (objective.pending): not values
            metrics = {k: v for k, v in metrics.items() if k not in OBJECTIVES}
        run.log_metrics(metrics, int(row["step"]))
    return len(fresh)


def _send_files(run: TrialRun, folder: Path) -> int:
    if not folder.is_dir():
        return 0
    have = {a.path for a in run.client.list_artifacts(run.run_id)}
    sent = 0
    for item in sorted(folder.iterdir()):
        if item.name in have:
            continue
        if item.is_dir():
            run.log_artifacts(item, item.name)
        else:
            run.log_artifact(item)
        sent += 1
    return sent


def stored_plan(experiment: str, storage_flag: str) -> SweepPlan:
    """The plan a sweep saved in Tune's storage (`--storage` as given, relative to here); UsageError
    when there is none."""
    root = storage.resolve_storage(storage_flag, Path.cwd())
    path = storage.join(root, experiment, PLAN_FILE)
    if not storage.exists(path):
        raise UsageError(f"no sweep {experiment!r} in {root}; pass --storage the folder it used.")
    return SweepPlan.load(path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="the sweep's experiment name")
    p.add_argument("--storage", default="sweep-results", help="Tune results folder the sweep used")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: the one the sweep used)")
    args = p.parse_args(argv)
    try:
        sent = sync_sweep(stored_plan(args.experiment, args.storage), args.mlflow_uri)
    except (UsageError, TrackingUnreachable) as err:
        return report_usage_error(err)
    print(
        f"synced {sent['trials']} trials to MLflow: {sent['reports']} reports and {sent['files']} files sent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
