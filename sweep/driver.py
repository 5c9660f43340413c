"""Running a validated SweepPlan: Ray, the MLflow parent run, Ray Tune, the summary.

    code = run_sweep(make_plan(parse_args([...]), Path.cwd()), resume=False)

sweep/launch.py validates the flags and calls this; tests call it with tiny plans. What the trials
share (sweep/prepare.py: the data split, the feature cache, the codec's reference) is prepared in a
process of its own (sweep/process_call.py) while Ray, MLflow and Tune start and the trials' workers
start and import; the trials wait for it at the gate (sweep/gate.py).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from models.spec import CodecSpec, CodecWeightsMissing
from sweep import process_age, stages_text
from sweep.cluster import check_visible_everywhere, cluster_size, start_ray
from sweep.config import trial_name
from sweep.console import describe
from sweep.data import DataError
from sweep.errors import UsageError
from sweep.events import TrialEvents, TrialLifecycle
from sweep.gate import ContextGate, SealedContext, train_trial
from sweep.mps import mps_daemon, sigterm_as_exit
from sweep.plan import SweepPlan
from sweep.process_call import ProcessCall, resolve
from sweep.search import load_study, param_space, scheduler, searcher
from sweep.storage import is_uri
from sweep.tracking import (
    SweepTracking,
    TrackingUnreachable,
    add_sweep_tags,
    finish_sweep,
    git_commit,
    log_sweep_metrics,
    sweep_params,
)

log = logging.getLogger(__name__)
# The driver's helpers, each in a process of its own (--without helper-processes: in a thread)
OPEN_TRACKING = "sweep.tracking:checked_sweep_tracking"  # MLflow's check, then the sweep's parent run
PREPARE = "sweep.prepare:prepare_sweep"  # the trials' data: (plan) -> sealed context, tags, reference


def run_sweep(
    plan: SweepPlan,
    resume: bool = False,
    address: str | None = None,
    dashboard: bool = True,
    dashboard_host: str = "127.0.0.1",
    verbose: bool = False,
) -> int:
    """The sweep, start to summary; the exit code. verbose: Tune's status tables and Ray's INFO lines."""
    start = {"imports and plan": process_age()}  # what the driver waited for, logged when trials start
    end: dict[str, float] = {}  # the same for the sweep's end, from Tune's last result on
    if not plan.mps:
        code = _run(plan, resume, address, dashboard, dashboard_host, verbose=verbose, start=start, end=end)
        return _log_end(code, end)
    if ray.is_initialized():
        raise UsageError("--mps needs a Ray that the sweep starts itself (its workers must see the daemon).")
    with sigterm_as_exit(), mps_daemon(Path(plan.workdir) / ".mps" / plan.experiment) as env:
        start["MPS"] = process_age() - start["imports and plan"]
        try:
            code = _run(plan, resume, address, dashboard, dashboard_host, env, verbose, start, end)
        finally:
            _timed(end, "Ray", ray.shutdown)  # the trials' workers leave the daemon before it stops
        stopping = process_age()
    end["MPS"] = process_age() - stopping
    return _log_end(code, end)


def _log_end(code: int, end: dict[str, float]) -> int:
    """Log when the sweep ends and where its end went (end: "Tune" when tuner.fit returned, then the
    seconds of each later stage); returns the exit code."""
    if "Tune" in end:  # sweep.bench reads it
        tune_returned = end.pop("Tune")
        stages = stages_text(end)
        log.info(
            "the sweep ends %.1f s after launch, Tune's results at %.1f s%s",
            process_age(),
            tune_returned,
            f" ({stages} s)" if stages else "",  # an interrupted sweep writes no summary
        )
    return code


def _run(
    plan: SweepPlan,
    resume: bool,
    address,
    dashboard: bool,
    dashboard_host: str,
    worker_env: dict | None = None,
    verbose: bool = False,
    start: dict | None = None,
    end: dict | None = None,
) -> int:
    start = {} if start is None else start
    end = {} if end is None else end
    ray_args = (start, "Ray", start_ray, address, dashboard, plan, dashboard_host, worker_env, verbose)
    joins = bool(address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    info = _timed(*ray_args) if joins else None  # a cluster is joined first: a wrong address fails at once
    helpers = "helper-processes" not in plan.without
    with ExitStack() as stack:  # left in reverse: the helper processes stop before the pool's threads end
        pool = stack.enter_context(ThreadPoolExecutor(3, thread_name_prefix="prepare"))
        # Spawned now, each does its imports beside Ray's start (mlflow's; torch's and the codec's).
        opening = stack.enter_context(ProcessCall(OPEN_TRACKING, verbose)) if helpers else None
        preparing = stack.enter_context(ProcessCall(PREPARE, verbose)) if helpers else None
        tracked = pool.submit(
            _timed, start, "MLflow beside Ray", _call, opening, OPEN_TRACKING, *_tracking_args(plan, resume)
        )
        # The data (tens of seconds on a GPU) waits for MLflow: an unreachable MLflow costs no compute.
        prepared = pool.submit(_prepare, plan, start, tracked, preparing)
        if not joins:
            info = _timed(*ray_args)
        try:
            tracking = tracked.result()
        except TrackingUnreachable as err:
            if not joins:
                ray.shutdown()  # the Ray this driver started (a caller's own stays)
            raise UsageError(str(err)) from None
        if not resume:
            plan.parent_run_id = tracking.parent_run_id
            plan.save()
        size = cluster_size()  # CPUs, GPUs
        print(describe(plan, *size))
        if not is_uri(plan.storage):
            Path(plan.storage).mkdir(parents=True, exist_ok=True)
        gate = ContextGate(plan.experiment)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, gate=gate),
            {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial},
        )
        # Tune warns when checkpoints come faster than every 5 s: by design in short smoke trials.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        # Tune's newer console prints its experiment box and a TensorBoard hint at any verbosity.
        if not verbose:
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # Behind a searcher Tune starts a trial once the last one's worker is up: a wave starts together.
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(1, plan.trials_at_once(*size)))
        if resume:
            tuner = _restore_tuner(plan, trainable)  # with the loggers it started with
        else:
            # Tune's records (result.json, progress.csv) but not its TensorBoard files (the curves are in
            # MLflow): tensorboardX imports torch into the driver as Tune starts the trials, 3-6 s on an
            # H200 machine. TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings them back.
            os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
            tuner = _new_tuner(plan, trainable, tracking, gate, verbose)
        opened = pool.submit(_open_gate, gate, prepared, plan, tracking, resume, start)
        _print_where(plan, tracking, info)
        log.info(  # sweep.bench reads it
            "trials start %.1f s after launch (%s s)",
            process_age(),
            stages_text(start),
        )
        grid = tuner.fit()
        end["Tune"] = process_age()
        failed = opened.exception()
        gate.remove()
    if failed is not None:  # the gate closed: no trial trained
        finish_sweep(tracking, "FAILED")
        if isinstance(failed, TrackingUnreachable | CodecWeightsMissing | DataError | UsageError):
            raise UsageError(str(failed)) from None
        raise failed
    return _finish(plan, tracking, grid, end)


def _call(child: ProcessCall | None, target: str, *args):
    """target ("module:function") on args: in the child process, which has imported it meanwhile, or in
    this thread, imports included (--without helper-processes)."""
    return child.call(*args) if child is not None else resolve(target)(*args)


def _prepare(
    plan: SweepPlan, start: dict, tracked: Future, child: ProcessCall | None
) -> tuple[SealedContext, dict]:
    """PREPARE, once MLflow answered (an unreachable one raises here: the driver says so). The codec's
    reference goes into the plan; the seconds from here into start["data"]."""
    began = process_age()
    try:
        tracked.result()
        sealed, tags, plan.codec_reference = _call(child, PREPARE, plan)
        return sealed, tags
    finally:
        start["data"] = process_age() - began


def _tracking_args(plan: SweepPlan, resume: bool) -> tuple:
    """OPEN_TRACKING's arguments: the sweep's MLflow parent run (the same one on --resume), tagged with
    what the sweep is; the data's tags follow once it is prepared (_open_gate)."""
    spec = CodecSpec.parse(plan.codec)
    tags = {
        "git.commit": git_commit(Path(__file__).parent), "data.path": plan.data, "codec.id": spec.describe(),
        "codec.revision": str(spec.fingerprint().get("revision") or "n/a"), "sweep.space": plan.space,
        "sweep.search": plan.search, "sweep.preset": plan.preset.name, "sweep.experiment": plan.experiment,
    }  # fmt: skip
    artifacts = Path(plan.workdir) / "mlartifacts"
    return (
        plan.mlflow_uri,
        plan.experiment,
        artifacts,
        sweep_params(plan),
        tags,
        plan.parent_run_id if resume else None,
    )


def _open_gate(
    gate: ContextGate, prepared: Future, plan: SweepPlan, tracking: SweepTracking, resume: bool, start: dict
) -> None:
    """Once the data is prepared: check that every Ray node sees the cache and the storage, tag
    the parent run with the data, log the codec's reference, save the plan with it (for --resume), and
    open the gate with the trials' context. Where any of it fails, close the gate: the sweep stops."""
    try:
        sealed, data_tags = prepared.result()
        check_visible_everywhere(
            {"--cache": Path(sealed.cache_dir) / "meta.json", "--storage": Path(plan.storage)}
        )
        tracking = add_sweep_tags(tracking, data_tags)
        if not resume:
            log_sweep_metrics(tracking, {f"codec/{k}": v for k, v in plan.codec_reference.items()}
                              | {"constraint/max_recon_mel": plan.recon_bound})  # fmt: skip
        plan.save()
        gate.open(sealed, tracking)
    except BaseException as err:
        gate.close(str(err))
        raise
    log.info(
        "the trials' data is ready %.1f s after launch (data %.1f s); constraint %s",
        process_age(),
        start["data"],
        plan.describe_constraint(),
    )
    from sweep import summary  # noqa: F401 -- the end's imports (plots, tables), while the trials train


def _timed(seconds: dict, stage: str, fn, *args):
    """fn(*args), its wall seconds into seconds[stage]."""
    began = process_age()
    try:
        return fn(*args)
    finally:
        seconds[stage] = process_age() - began


def _run_config(plan: SweepPlan, tracking: SweepTracking, gate: ContextGate, verbose=False) -> tune.RunConfig:
    return tune.RunConfig(
        name=plan.experiment,
        stop=gate.stopper(),  # the whole sweep, where preparing the trials' data failed
        storage_path=plan.storage,
        # One resumable checkpoint per trial while it trains (a paper trial's is 460 MB with AdamW's
        # state); the final one is the trained weights alone. --keep-checkpoints N keeps more.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=plan.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=2),  # a dead worker resumes from its last checkpoint
        verbose=2 if verbose else 0,  # Tune's tables behind --verbose; TrialEvents says what happens
        callbacks=[
            TrialEvents(plan),
            TrialLifecycle(tracking, keep_optimizer=plan.keep_checkpoints > 1),
            CSVLoggerCallback(),  # Tune's own records, named here so that its automatic loggers can be off
            JsonLoggerCallback(),
        ],
    )


def _new_tuner(
    plan: SweepPlan, trainable, tracking: SweepTracking, gate: ContextGate, verbose: bool = False
) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        param_space=param_space(plan),
        tune_config=tune.TuneConfig(
            search_alg=searcher(plan),
            scheduler=scheduler(plan),
            num_samples=plan.trial_count,  # a grid: its points times its repeats (OrderedGrid)
            max_concurrent_trials=plan.max_concurrent,
            # A worker process runs trial after trial (its imports, CUDA context and codec stay), each
            # on the process's one trial thread (sweep.trainable.TrialThread), where the compiled
            # step's CUDA-graph trees live; --without worker-reuse gives each GPU trial a fresh one.
            reuse_actors=plan.gpus_per_trial == 0 or "worker-reuse" not in plan.without,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=_run_config(plan, tracking, gate, verbose),
    )


def _trial_name(trial) -> str:
    """`t<number>`: Tune numbers its trials in the experiment tag ("3_beta=0.01,dim=32")."""
    return trial_name(int(trial.experiment_tag.split("_", 1)[0]))


def _restore_tuner(plan: SweepPlan, trainable) -> tune.Tuner:
    path = plan.experiment_dir
    if not tune.Tuner.can_restore(path):
        raise UsageError(
            f"--resume {plan.experiment}: {path} has no Tune state to restore (the sweep stopped before its "
            "first trial was saved); start it again with --space."
        )
    return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)


def _print_where(plan: SweepPlan, tracking: SweepTracking, info) -> None:
    url = getattr(info, "dashboard_url", None)
    if url:
        print(
            f"Ray dashboard: http://{url}  (its token: `ray get-auth-token`; loopback only, from another "
            f"machine: ssh -L 8265:{url} <host>)"
        )
    print(f"MLflow parent run {tracking.parent_run_id} in {plan.mlflow_uri}")


def _finish(plan: SweepPlan, tracking: SweepTracking, grid, end: dict) -> int:
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if unfinished > 0 or len(grid) < plan.trial_count and plan.search == "grid":
        finish_sweep(tracking, "KILLED")
        print(
            f"\nsweep interrupted with {unfinished} unfinished trials; finish it with:\n"
            f"  python -m sweep.launch --resume {plan.experiment} --storage {plan.storage}"
        )
        return 130
    from sweep.summary import publish_summary, results_frame, storage_report, summarise, write_summary

    began = process_age()
    frame = results_frame(grid, plan.varied, plan.preset, plan.seed, fixed=plan.fixed)
    frame["failures"] = frame["trial_id"].map(trial_failures(plan.experiment_dir)).fillna(0).astype(int)
    summary = summarise(frame, load_study(plan), codec=plan.codec, reference=plan.codec_reference)
    summary.storage = storage_report(plan.experiment_dir, tracking)
    written = None
    try:
        written = write_summary(frame, summary, plan.summary_dir, plan.experiment_dir)
    except OSError as err:  # a full or read-only disk: the tables still print below
        print(f"\nWARNING: could not write the summary into {plan.summary_dir} ({err}).\n")
    end["summary"] = process_age() - began
    try:
        _timed(end, "MLflow", publish_summary, tracking, frame, written)
    except Exception as err:  # MLflow away at the end: the sweep is done and in Tune's storage
        print(
            f"\nWARNING: MLflow at {plan.mlflow_uri} failed ({type(err).__name__}: {str(err)[:200]}); "
            f"the results are safe in {plan.experiment_dir}. When MLflow is back:\n"
            f"  python -m sweep.sync {plan.experiment} --storage {plan.storage}\n"
        )
    _print_summary(plan, tracking, summary, grid)
    return 0 if not grid.errors else 1


def trial_failures(experiment_dir: str) -> dict[str, int]:
    """How often each trial failed (its worker died, its code raised) and Tune restarted it or gave
    up: {trial id: failures}. From Tune's experiment state, so failures before a --resume count too."""
    return {trial.trial_id: trial.num_failures for trial in tune.ExperimentAnalysis(experiment_dir).trials}


def _print_summary(plan: SweepPlan, tracking: SweepTracking, summary, grid) -> None:
    print("\n# Sweep summary: " + plan.experiment + "\n")
    print(summary.tables())
    for report in summary.best_reports[:1]:  # the best trial; summary.md has the next ones too
        print(report)
    print(summary.closing())
    if grid.errors:
        print(f"{len(grid.errors)} trials failed; their errors are in {plan.experiment_dir}\n")
    store = plan.mlflow_uri
    print("Open the results (each UI binds to 127.0.0.1 only):")
    if store.startswith("sqlite"):
        print(f"  mlflow ui --backend-store-uri {store} --host 127.0.0.1 --port 5000")
        print(f"    then http://127.0.0.1:5000/#/experiments/{tracking.experiment_id}")
    else:
        print(f"  {store}/#/experiments/{tracking.experiment_id}")
    from sweep.listening import PAGE_FILE

    page = plan.summary_dir / PAGE_FILE
    if page.exists():
        print(f"  listening page: {page}  (also on the parent run in MLflow; a browser opens the file)")
        print(f"    or serve it: python -m sweep.report {plan.experiment} --storage {plan.storage}")
    if plan.search == "optuna":
        print(f'  optuna-dashboard {plan.optuna_uri} --host 127.0.0.1   (pip install -e ".[ui]")')
    print(f"  Tune results: {plan.experiment_dir}")
