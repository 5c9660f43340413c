"""The Ray Tune trainable: one beta-VAE trial, thin around `VAETrainer.train_step` (STYLE.md 3).

    tuner = tune.Tuner(tune.with_parameters(train_trial, context=context), param_space=space, ...)

A trial builds from its config, restores from `tune.get_checkpoint()` when Tune retries or resumes
it, trains on the shared feature cache (built once by the driver), and reports every
`report_every` steps: `train/*` means over the interval, the step (ASHA's clock) and the
objectives. At ASHA's rungs it runs a cheap battery (a subset of eval, small MDNs, h in {1, 4}) so
the scheduler decides on `objective/rollout_k4`; until the first rung every report carries the
surrogate (`objective/measured` = 0 says so). At the end: the full battery, reconstruction metrics,
rollout WAVs, everything reported to Tune and logged to the trial's MLflow child run.

A loss that turns non-finite ends the trial cleanly as `diverged`: its last finite curves and the
non-finite value are recorded, the searcher gets the surrogate, the sweep goes on.
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import logging
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from evaluation.diagnostics import BatteryConfig, run_battery
from evaluation.trial import EvalConfig, TrialEvaluation, evaluate_vae
from models.codec import CodecSpec, MimiCodec
from models.runtime import pick_device
from models.training import StepSettings, VAETrainer, load_checkpoint, save_checkpoint
from models.vae import BetaVAE, posterior_means
from sweep.artifacts import log_trial_evaluation
from sweep.config import ASHA_REDUCTION, Preset, TrialParams
from sweep.features import CropSampler, FeatureCache
from sweep.objective import MEASURED, TIME_ATTR, objective_values, unmeasured
from sweep.tracking import SweepTracking, TrialRun

log = logging.getLogger(__name__)

STATUS = "status"  # completed | diverged (reported with the last result)
WALL = "time/wall"  # epoch seconds of each report: sweep.bench aligns trials' step counts on it
NODE_ID = "node_id"  # the Ray node of each report
PROBE_HORIZONS = (1, 4)


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares; made once by the driver, pickled to the workers."""

    preset: Preset
    cache_dir: str  # absolute: trials run in their own folders
    train_ids: tuple[int, ...]
    eval_ids: tuple[int, ...]
    codec: str
    device: str  # "auto" | "cpu" | "cuda"
    threads: int  # torch threads per trial: its CPU share
    seed: int
    varied: tuple[str, ...]  # the parameters the space varies, for run names
    probes: bool = True  # cheap batteries at ASHA's rungs; without ASHA nobody reads them
    fixed: dict = field(default_factory=dict)  # --set values for parameters the space does not vary
    step: StepSettings = StepSettings()  # compile / fused optimizer (on a GPU; see StepSettings.fastest)
    tracking: SweepTracking | None = None  # None: no MLflow (the trainable alone, in tests)


def rung_steps(train_steps: int, first: int, factor: int = ASHA_REDUCTION) -> list[int]:
    """ASHA's milestones below the end of training: first, first * factor, ... (< train_steps)."""
    rungs, step = [], first
    while step < train_steps:
        rungs.append(step)
        step *= factor
    return rungs


def train_trial(config: dict, context: TrialContext) -> None:
    entered = time.perf_counter()
    params = TrialParams.from_config({**context.fixed, **config}, context.preset, seed=context.seed)
    torch.manual_seed(params.seed)
    torch.set_num_threads(max(1, context.threads))
    device = pick_device(context.device)
    run = _child_run(context, params)
    node = {NODE_ID: ray.get_runtime_context().get_node_id()}  # which Ray node ran it (a retry may move it)
    if run:
        run.set_tags({"ray.node_id": node[NODE_ID]})
    cache = FeatureCache(context.cache_dir, verify=False)
    codec = _codec(context.codec)
    decoder = copy.deepcopy(codec.decoder)  # trained by this trial only; the cached codec stays pristine
    settings = StepSettings(
        compile=context.step.compile, fused_optimizer=context.step.fused_optimizer and device.type == "cuda"
    )
    if settings.compile:
        torch._dynamo.reset()  # a reused worker's earlier trials would count towards the recompile limit
    trainer = VAETrainer(BetaVAE(params.vae_config(context.preset), decoder), device, settings)
    latest = _restore(trainer)
    preset = context.preset
    crop_frames = round(preset.crop_seconds * codec.frame_rate)
    sampler = CropSampler(cache, list(context.train_ids), crop_frames, preset.batch_size, seed=params.seed)
    rungs = set(rung_steps(params.train_steps, preset.probe_first)) if context.probes else set()
    window, clock = _Window(trainer.metric_names, trainer.step), _Clock()
    clock.totals["setup"] = time.perf_counter() - entered  # codec, VAE, MLflow run, restore; not Ray's part
    curves = {}
    while trainer.step < params.train_steps:
        # No host sync inside a report interval: the CPU queues steps while the GPU runs them.
        window.add(clock.timed("train", trainer.train_step_async, sampler.batch(trainer.step)))
        step = trainer.step
        last = step == params.train_steps
        if not (last or step in rungs or step % preset.report_every == 0):
            continue
        curves = clock.timed("train", window.flush)  # waits for the interval's steps
        if window.diverged:
            return _end_diverged(window, run, latest)
        if last:
            break
        if step in rungs:
            latest = clock.timed("probe", _probe, trainer, cache, context, params, device)
        if run:
            clock.timed("logging", run.log_metrics, {**curves, **latest}, step)
        keep = step % preset.checkpoint_every == 0 or step in rungs
        metrics = {TIME_ATTR: step, **curves, **latest, **node, WALL: time.time(), **clock.seconds()}
        clock.timed("checkpoint", _report, metrics, trainer if keep else None, latest)
    evaluation = clock.timed("evaluation", _evaluate, trainer, cache, context, params, device)
    values = objective_values(evaluation.metrics, params.dim, preset.max_recon_mel)
    final = {TIME_ATTR: trainer.step, **curves, **evaluation.metrics, **values, **node, WALL: time.time()}
    final.update({f"time/evaluation/{part}": seconds for part, seconds in evaluation.seconds.items()})
    if device.type == "cuda":  # what fractional GPUs do not limit (ray#5902): sweep.bench reads it
        final["gpu/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    final[STATUS] = "completed"
    if run:
        clock.timed("logging", _log_final, run, final, evaluation, trainer.step)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = _write_checkpoint(Path(folder), trainer, values)
        # GPU memory goes back before the last report: when Tune ends this worker right after it
        # (ASHA's max_t, the sweep's end), a training thread still holding CUDA tensors aborts the
        # process on its way out ("Fatal Python error: Aborted" in THPVariable_clear, seen on an H100).
        del trainer, decoder, evaluation
        _release_device_memory()
        tune.report({**final, **clock.seconds()}, checkpoint=checkpoint)


@functools.lru_cache(maxsize=2)
def _codec(spec: str) -> MimiCodec:
    """One codec per worker process: Tune reuses workers across trials (reuse_actors)."""
    return MimiCodec.from_spec(CodecSpec.parse(spec))


def _child_run(context: TrialContext, params: TrialParams) -> TrialRun | None:
    if context.tracking is None:
        return None
    trial = tune.get_context()
    try:
        return _find_or_create_run(context, params, trial)
    except Exception as err:  # MLflow away: train anyway; `python -m sweep.sync` sends the results later
        log.warning("MLflow unreachable (%s): trial %s runs without it", err, trial.get_trial_id())
        return None


def _find_or_create_run(context: TrialContext, params: TrialParams, trial) -> TrialRun:
    return TrialRun.find_or_create(
        context.tracking,
        trial_id=trial.get_trial_id(),
        name=params.label(context.varied),
        params={**params.to_dict(), **{f"preset.{k}": v for k, v in context.preset.to_dict().items()}},
        tags={"sweep.trial_name": trial.get_trial_name(), "seed": str(params.seed)},
    )


def _restore(trainer: VAETrainer) -> dict:
    """Weights, optimiser and step from Tune's latest checkpoint; the objectives reported with it."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return unmeasured()
    with checkpoint.as_directory() as folder:
        meta = load_checkpoint(Path(folder) / "vae", trainer)
        log.info("resumed from a checkpoint at step %d", meta["step"])
        return json.loads((Path(folder) / "objectives.json").read_text())


def _report(metrics: dict, trainer: VAETrainer | None, objectives: dict) -> None:
    if trainer is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        tune.report(metrics, checkpoint=_write_checkpoint(Path(folder), trainer, objectives))


def _write_checkpoint(folder: Path, trainer: VAETrainer, objectives: dict) -> tune.Checkpoint:
    save_checkpoint(trainer, folder / "vae")
    (folder / "objectives.json").write_text(json.dumps(objectives))
    return tune.Checkpoint.from_directory(folder)


def _release_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _probe(trainer, cache, context: TrialContext, params: TrialParams, device) -> dict:
    """The cheap battery at an ASHA rung: small MDNs on a subset; its k=4 rollout is the rung's metric."""
    preset = context.preset
    n_eval = preset.probe_utterances
    train_ids = context.train_ids[: 8 * n_eval]
    eval_ids = context.eval_ids[:n_eval]
    config = BatteryConfig(
        hidden=(preset.probe_hidden,) * 2, steps=preset.probe_steps, horizons=PROBE_HORIZONS,
        injection_steps=4, seed=params.seed, device=str(device),
    )  # fmt: skip
    battery = run_battery(
        posterior_means(trainer.vae, [cache.latents(i) for i in train_ids], device),
        posterior_means(trainer.vae, [cache.latents(i) for i in eval_ids], device),
        config,
    )
    values = objective_values(battery.metrics, params.dim)
    probe = {f"probe/{k}": v for k, v in battery.metrics.items() if k.startswith(("rollout/k", "teacher/k"))}
    return {**values, **probe}


def _evaluate(trainer, cache, context: TrialContext, params: TrialParams, device) -> TrialEvaluation:
    preset = context.preset
    eval_ids = list(context.eval_ids)
    config = EvalConfig.sized(
        preset.battery_hidden, preset.battery_steps, params.seed, device,
        recon_utterances=preset.recon_utterances, audio_utterances=preset.audio_utterances,
    )  # fmt: skip
    folder = Path(tune.get_context().get_trial_dir()) / "evaluation"
    return evaluate_vae(
        trainer.vae,
        [cache.latents(i) for i in context.train_ids],
        [cache.latents(i) for i in eval_ids],
        [cache.audio(i) for i in eval_ids],
        [cache.utterances[i].utterance_id for i in eval_ids],
        config,
        audio_dir=folder / "audio",
        device=device,
        title=params.label(context.varied),
    )


def _log_final(run: TrialRun, final: dict, evaluation: TrialEvaluation, step: int) -> None:
    run.log_metrics(final, step)
    folder = Path(tune.get_context().get_trial_dir()) / "evaluation"
    log_trial_evaluation(run, evaluation, folder)
    run.set_tags({"rollout/horizon": str(int(final["rollout/horizon"]))})


def _end_diverged(window: _Window, run: TrialRun | None, latest: dict) -> None:
    """Report the divergence honestly and end the trial; the searcher sees the surrogate."""
    step, metrics, last_finite = window.diverged
    log.warning("training diverged at step %d: %s", step, metrics)
    final = {**latest, **last_finite, **objective_values({}, 1, 0.0), MEASURED: 0.0, TIME_ATTR: step,
             STATUS: "diverged", "diverged/step": step, "diverged/loss": metrics["train/loss"]}  # fmt: skip
    if run:
        run.log_metrics(final, step)
        run.set_tags({"sweep.diverged_step": str(step)})
    tune.report(final)


class _Window:
    """The loss terms of the steps since the last flush, kept on the device until then.

    flush() returns their means; if a step's loss was non-finite, `diverged` holds
    (that step, its values, the means of the steps before it)."""

    def __init__(self, names: tuple[str, ...], step: int):
        self.names, self.next_step = names, step + 1
        self.rows: list[torch.Tensor] = []
        self.diverged: tuple[int, dict, dict] | None = None

    def add(self, row: torch.Tensor) -> None:
        self.rows.append(row)

    def flush(self) -> dict:
        if not self.rows:
            return {}
        values = torch.stack(self.rows).double().cpu().numpy()  # (steps, terms): the one host sync
        first, self.rows = self.next_step, []
        self.next_step += len(values)
        bad = ~np.isfinite(values[:, self.names.index("train/loss")])
        if bad.any():
            i = int(bad.argmax())
            before = dict(zip(self.names, values[:i].mean(axis=0), strict=True)) if i else {}
            self.diverged = (first + i, dict(zip(self.names, values[i], strict=True)), before)
        return {name: float(v) for name, v in zip(self.names, values.mean(axis=0), strict=True)}


class _Clock:
    """Wall seconds per phase (setup, train, probe, evaluation, logging, checkpoint), reported as
    time/<phase>."""

    def __init__(self):
        self.totals = defaultdict(float)

    def timed(self, phase: str, fn, *args):
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.totals[phase] += time.perf_counter() - started

    def seconds(self) -> dict:
        return {f"time/{phase}": value for phase, value in self.totals.items()}
