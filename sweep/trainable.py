"""The Ray Tune trainable: one trial (sweep/trial.py's pieces) in a Ray worker, reporting to Tune.

    tuner = tune.Tuner(tune.with_parameters(train_trial, context=context), param_space=space, ...)

A trial builds from its config (its seed from the sweep's seed and its number, `t007`), restores
from `tune.get_checkpoint()` when Tune retries or resumes it, trains on the shared feature cache
(built once by the driver), and reports every `report_every` steps: `train/*` means over the
interval, the step (ASHA's clock) and the scheduler's metric. At ASHA's rungs it runs a cheap
battery (a subset of eval, small MDNs, h in {1, 4}) and reports it under `probe/`, so the scheduler
decides on `probe/objective/rollout_k4`; until the first rung every report carries the surrogate
(`probe/measured` = 0 says so). Checkpoints (weights + AdamW state, resumable) come every
`checkpoint_every` steps and at rungs; Tune keeps the latest. The periodic ones are written beside
training (trial.CheckpointWriter) and go to Tune with the next report, which a thread of the trial's
own makes (Reporter: Tune copies the checkpoint into its storage as it takes it); MLflow's metrics go
from a thread of the run's own (`--without background-io` puts all three back in the loop).
At the end: the full battery, reconstruction metrics, rollout WAVs, written into the trial's folder
in Tune's storage (`evaluation/`), logged to the trial's MLflow child run, and reported with the
trained weights alone as the final checkpoint.

A loss that turns non-finite ends the trial cleanly as `diverged`: its last finite curves and the
non-finite value are recorded, the searcher gets the surrogate, the sweep goes on.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

import sweep
from evaluation.trial import TrialEvaluation
from models.training import VAETrainer
from sweep.artifacts import log_trial_evaluation, write_trial_files
from sweep.config import TrialParams
from sweep.hosted_run import HostedTrialRun, open_trial_run, stop_host
from sweep.objective import (
    CHECKPOINT_STEP,
    COMPLETED,
    DIVERGED,
    NODE_ID,
    PROBE,
    STARTED,
    STATUS,
    TIME_ATTR,
    WALL,
    objective_values,
    pending,
)
from sweep.tracking import TrialRun
from sweep.trial import (
    EVALUATION_FOLDER,
    CheckpointWriter,
    Clock,
    Diverged,
    Trial,
    TrialContext,
    build_trial,
    evaluate,
    probe,
    train,
    trial_params,
    write_checkpoint,
)

log = logging.getLogger(__name__)
_IMPORTS_ENDED = time.time()
_PREVIOUS_TRIAL_ENDED: list[float] = []  # when this worker's last trial returned (a reused worker)


def train_trial(config: dict, context: TrialContext, waited_for_driver: float = 0.0) -> None:
    """The Tune trainable: build, train (reports, probes at rungs, checkpoints), evaluate, report.
    waited_for_driver: seconds the trial waited for the driver's preparation (sweep/gate.py).

    Every trial of a worker process runs on the process's one trial thread (TrialThread): Tune calls
    this in a new thread per trial, and a reused worker's next trial would meet the compiled step's
    CUDA-graph trees, which torch keeps in the thread that compiled (torch/_inductor/cudagraph_trees.py),
    from another thread, and fail an assertion there."""
    try:
        if "worker-reuse" in context.without:
            return _train_trial(config, context, waited_for_driver)
        return TRIAL_THREAD.run(_train_trial, config, context, waited_for_driver)
    finally:
        _PREVIOUS_TRIAL_ENDED[:] = [time.time()]


def _worker_setup(entered: float) -> dict:
    """Before the trial's code (entered: time.time()): in a new worker, the process's start (Ray's
    worker), its imports and Tune's set-up of the trial (time/setup/process, of which .../imports);
    in a reused worker, the time since its previous trial returned (time/setup/process alone)."""
    if _PREVIOUS_TRIAL_ENDED:
        return {"setup/process": entered - _PREVIOUS_TRIAL_ENDED[0]}
    began = time.time() - sweep.process_age()
    return {"setup/process": entered - began, "setup/process/imports": _IMPORTS_ENDED - sweep.IMPORTED_AT,
            "setup/process/before_imports": sweep.IMPORTED_AT - began}  # fmt: skip


class TrialThread:
    """One daemon thread per process that runs what it is handed, one call at a time (as Tune's own
    thread for a trial is a daemon); `run` waits for the call and returns its value or raises what it
    raised, SystemExit too: Tune ends a stopped trial's function that way, from inside tune.report."""

    def __init__(self):
        self._calls: queue.SimpleQueue | None = None
        self._lock = threading.Lock()

    def run(self, fn, *args):
        with self._lock:
            if self._calls is None:
                self._calls = queue.SimpleQueue()
                threading.Thread(target=self._serve, name="trial", daemon=True).start()
        done: Future = Future()
        self._calls.put((done, fn, args))
        return done.result()

    def _serve(self) -> None:
        while True:
            done, fn, args = self._calls.get()
            try:
                done.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 -- handed back to run's caller
                done.set_exception(err)
            del done, fn, args  # nothing of a finished trial stays referenced here


TRIAL_THREAD = TrialThread()


def _train_trial(config: dict, context: TrialContext, waited_for_driver: float = 0.0) -> None:
    entered, started = time.perf_counter(), {STARTED: time.time() - waited_for_driver}
    name = tune.get_context().get_trial_name()
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # "Checkpoint successfully created at" lines
    resume = tune.get_checkpoint()
    node = {NODE_ID: ray.get_runtime_context().get_node_id(), **started}  # a retry may move to another node
    clock = Clock()
    with ThreadPoolExecutor(1, thread_name_prefix="mlflow-run") as pool:  # opens the run while it builds
        opening = pool.submit(_child_run, context, trial_params(config, context, name), name, node[NODE_ID])
        with resume.as_directory() if resume else contextlib.nullcontext() as folder:
            trial = build_trial(config, context, name, Path(folder) if folder else None, clock)
        built = time.perf_counter()
        run = opening.result()
    background = "background-io" not in context.without
    if run and background:
        run.log_in_background()
    clock.totals["setup"] = time.perf_counter() - entered  # codec, VAE, MLflow run, restore; not Ray's part
    clock.totals["setup/mlflow"] = time.perf_counter() - built  # of which waiting for the MLflow run
    clock.totals.update(_worker_setup(started[STARTED]))
    if waited_for_driver:
        clock.totals["setup/driver"] = waited_for_driver  # at the gate (sweep/gate.py), before its set-up
    curves = {}
    with CheckpointWriter() as writer, Reporter(background) as reporter:
        try:
            for interval in train(trial, context.preset, clock):
                curves = interval.curves
                if interval.last:
                    break
                logged = curves
                if interval.rung:  # probe values go to MLflow under probe/ only, at their rung
                    # A checkpoint write in flight copies off the GPU, which would invalidate the probe's
                    # CUDA-graph capture (cudaErrorStreamCaptureInvalidated): it finishes first.
                    clock.timed("checkpoint", writer.settle)
                    trial.latest = clock.timed("probe", probe, trial, context)
                    logged = {**curves, **trial.latest}
                if run:
                    clock.timed("logging", run.log_metrics, logged, interval.step)
                metrics = {TIME_ATTR: interval.step, **curves, **pending(), **trial.latest, **node,
                           WALL: time.time(), **clock.seconds()}  # fmt: skip
                # A rung's checkpoint goes with the rung's report (ASHA may stop the trial there); the
                # periodic ones are written beside training and go with the first report after that.
                keep = trial.trainer if interval.checkpoint and (interval.rung or not background) else None
                if interval.checkpoint and keep is None:
                    clock.timed("checkpoint", writer.start, trial.trainer, trial.latest)
                clock.timed("checkpoint", reporter.report, metrics, keep, trial.latest, writer.written())
            clock.timed("checkpoint", reporter.drain)
        except Diverged as diverged:
            reporter.drain()
            return _end_diverged(diverged, run, trial.latest)
    with tempfile.TemporaryDirectory() as scratch:
        final = _finish(trial, context, run, {**curves, **trial.latest, **node}, clock, Path(scratch))
        # GPU memory goes back before the last report: when Tune ends this worker right after it
        # (ASHA's max_t, the sweep's end), a training thread still holding CUDA tensors aborts the
        # process on its way out ("Fatal Python error: Aborted" in THPVariable_clear, seen on an H100).
        del trial
        clock.timed("checkpoint", _release_device_memory)
        checkpoint = tune.Checkpoint.from_directory(Path(scratch) / "checkpoint")
        tune.report({**final, **clock.seconds(), WALL: time.time()}, checkpoint=checkpoint)


def _finish(trial: Trial, context: TrialContext, run, reported: dict, clock: Clock, scratch: Path) -> dict:
    """The final battery, recon metrics and WAVs; the trial's files into its folder in Tune's storage
    and MLflow; the final checkpoint (scratch/checkpoint: the trained weights, without the optimizer
    state unless asked: training is over). Returns the final result."""
    trainer, device, params = trial.trainer, trial.device, trial.params
    folder = scratch / EVALUATION_FOLDER
    evaluation = clock.timed("evaluation", evaluate, trial, context, folder)
    values = objective_values(evaluation.metrics, params.dim, context.max_recon_mel)
    final = {**reported, TIME_ATTR: trainer.step, **evaluation.metrics, **values, WALL: time.time()}
    final.update({f"time/evaluation/{part}": seconds for part, seconds in evaluation.seconds.items()})
    if device.type == "cuda":  # what fractional GPUs do not limit (ray#5902): sweep.bench reads it
        final["gpu/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    final[STATUS] = COMPLETED
    files = clock.timed("evaluation", write_trial_files, evaluation, folder)  # tables, plots, report
    clock.timed("checkpoint", persist_trial_folder, folder)
    if run:
        clock.timed("logging", _log_final, run, final, evaluation, files, trainer.step)
    # Not beside the evaluation: a thread's copies off the GPU invalidate the battery's CUDA-graph capture
    # (cudaErrorStreamCaptureInvalidated; 2 of 16 trials of a grid on an H200 failed so).
    clock.timed(
        "checkpoint", write_checkpoint, scratch / "checkpoint", trainer, trial.latest, context.keep_optimizer
    )
    return final


def persist_trial_folder(folder: Path) -> str:
    """Copy `folder` into this trial's folder in Tune's storage (local, shared or s3://), as Tune copies
    checkpoints. Ray's own trial directory (`get_trial_dir()`) is not that: a trial on a reused worker
    or on another node gets a local staging folder that is never synced, so files written there were
    lost after the first wave. Returns where they went."""
    storage = tune.get_context().get_storage()
    target = f"{storage.trial_fs_path}/{folder.name}"
    storage.storage_filesystem.create_dir(target)
    pafs.copy_files(str(folder), target, destination_filesystem=storage.storage_filesystem)
    return target


def _child_run(
    context: TrialContext, params: TrialParams, name: str, node_id: str
) -> TrialRun | HostedTrialRun | None:
    if context.tracking is None:
        stop_host()
        return None
    trial = tune.get_context()
    try:
        run = open_trial_run(
            context.tracking,
            hosted="mlflow-host" not in context.without,
            trial_id=trial.get_trial_id(),
            name=f"{name} {params.label(context.varied)}",
            params={**params.run_params(), **{f"preset.{k}": v for k, v in context.preset.to_dict().items()}},
            tags={"sweep.trial_name": name, "seed": str(params.seed)},
        )
    except Exception as err:  # MLflow away: train anyway; `python -m sweep.sync` sends the results later
        log.warning("MLflow unreachable (%s): trial %s runs without it", err, trial.get_trial_id())
        return None
    run.set_tags({"ray.node_id": node_id})  # which Ray node ran it (a retry may move it)
    return run


def _report(
    metrics: dict, trainer: VAETrainer | None, latest: dict, written: tuple[Path, int] | None = None
) -> None:
    """Report `metrics` with a checkpoint: of `trainer` now, or else one written in the background
    (CheckpointWriter.written: its folder and step); `checkpoint/step` says which step it holds."""
    if trainer is not None:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = write_checkpoint(Path(folder), trainer, latest)
            tune.report(
                {**metrics, CHECKPOINT_STEP: trainer.step},
                checkpoint=tune.Checkpoint.from_directory(checkpoint),
            )
    elif written is not None:
        tune.report(
            {**metrics, CHECKPOINT_STEP: written[1]}, checkpoint=tune.Checkpoint.from_directory(written[0])
        )
    else:
        tune.report(metrics)
    _discard(written)  # Tune has copied it into its storage


class Reporter:
    """A trial's reports to Tune, made in order by a thread of their own: tune.report copies a periodic
    checkpoint's folder (460 MB for a paper trial) into Tune's storage before it returns, and training
    goes on meanwhile. A report whose checkpoint is the trainer's own (a rung's) is made by the trial's
    thread, after those queued. Tune ends a stopped trial by raising SystemExit in tune.report: that, or
    an error, is raised in the trial at its next report or at `drain`, and nothing queued after it is
    reported. background False (--without background-io): every report from the trial's thread."""

    MAX_QUEUED = 2  # reports waiting before the trial waits too: a slow storage slows training, no more

    def __init__(self, background: bool):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tune-report") if background else None
        self._queued: list[Future] = []
        self._failed: BaseException | None = None

    def report(
        self, metrics: dict, trainer: VAETrainer | None, latest: dict, written: tuple[Path, int] | None = None
    ) -> None:
        """_report's arguments: queued, or made now where `trainer` is given (after what is queued)."""
        now = trainer is not None or self._pool is None
        try:
            if now:
                self.drain()
            else:
                self._raise_failure()
        except BaseException:
            _discard(written)
            raise
        if now:
            return _report(metrics, trainer, latest, written)
        self._queued = [f for f in self._queued if not f.done()]
        if len(self._queued) >= self.MAX_QUEUED:
            self._queued.pop(0).result()
        self._queued.append(self._pool.submit(self._make, metrics, latest, written))

    def drain(self) -> None:
        """Wait until every queued report is made; raise what the first that failed raised."""
        for queued in self._queued:
            queued.result()
        self._queued = []
        self._raise_failure()

    def _make(self, metrics: dict, latest: dict, written) -> None:
        if self._failed is not None:  # the trial is ending: what came after is not reported
            return _discard(written)
        try:
            _report(metrics, None, latest, written)
        except BaseException as err:  # noqa: BLE001 -- raised in the trial's thread (SystemExit too)
            self._failed = err
            _discard(written)

    def _raise_failure(self) -> None:
        if self._failed is not None:
            raise self._failed

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _discard(written: tuple[Path, int] | None) -> None:
    """A checkpoint written beside training that will not be reported: its folder goes."""
    if written is not None:
        shutil.rmtree(written[0].parent, ignore_errors=True)


def _release_device_memory() -> None:
    """The trial's GPU memory back, the compiled step's CUDA-graph pool too (a reused worker's next trial
    compiles afresh); on the trial thread, which holds that pool."""
    if torch.cuda.is_available():
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _log_final(
    run: TrialRun | HostedTrialRun, final: dict, evaluation: TrialEvaluation, files: dict, step: int
) -> None:
    run.log_metrics(
        {k: v for k, v in final.items() if not k.startswith(PROBE) and k not in (WALL, STARTED)}, step
    )
    log_trial_evaluation(run, evaluation, files)
    run.set_tags({"rollout/horizon": str(int(final["rollout/horizon"]))})


def _end_diverged(diverged: Diverged, run: TrialRun | HostedTrialRun | None, latest: dict) -> None:
    """Report the divergence honestly and end the trial; the searcher sees the surrogate."""
    step, loss = diverged.step, diverged.values["train/loss"]
    log.warning("%s", diverged)
    final = {**latest, **diverged.last_finite, **objective_values({}, 1, 0.0), TIME_ATTR: step,
             STATUS: DIVERGED, "diverged/step": step, "diverged/loss": loss}  # fmt: skip
    if run:
        run.log_metrics({k: v for k, v in final.items() if not k.startswith(PROBE)}, step)
        run.set_tags({"sweep.diverged_step": str(step)})
    tune.report(final)
