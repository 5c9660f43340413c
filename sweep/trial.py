"""One beta-VAE trial, in pieces that need no Ray: build it, train it, probe it, evaluate it.

    trial = build_trial(config, context, "t007", checkpoint=None)   # seed, VAE, crops; restored if given
    for interval in train(trial, context.preset):                    # yields at report points
        if interval.rung: trial.latest = probe(trial, context)       # ASHA's cheap battery
    evaluation = evaluate(trial, context, folder)                    # battery, recon, rollout WAVs

sweep/trainable.py runs these in a Ray worker and reports to Tune and MLflow; sweep/smoke.py runs
them alone. A loss that turns non-finite raises Diverged at the next report point.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config

from evaluation.diagnostics import BatteryConfig, run_battery
from evaluation.trial import EvalConfig, TrialEvaluation, evaluate_vae
from models.codec import CodecSpec, MimiCodec
from models.runtime import pick_device
from models.training import (
    StepSettings,
    VAETrainer,
    checkpoint_state,
    load_checkpoint,
    write_checkpoint_state,
)
from models.vae import BetaVAE, posterior_means
from sweep.config import Preset, TrialParams, rung_steps, trial_number, trial_seed
from sweep.features import CropSampler, FeatureCache
from sweep.objective import (
    CHECKPOINT_MODEL,
    CHECKPOINT_PROBE,
    probe_values,
    unmeasured,
)
from sweep.tracking import SweepTracking

log = logging.getLogger(__name__)

PROBE_HORIZONS = (1, 4)
EVALUATION_FOLDER = "evaluation"  # in the trial's folder in Tune's storage: report, tables, plots, WAVs


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
    seed: int  # the sweep's; each trial's own follows from it and the trial's number (config.trial_seed)
    varied: tuple[str, ...]  # the parameters the space varies, for run names
    probes: bool = True  # cheap batteries at ASHA's rungs; without ASHA nobody reads them
    fixed: dict = field(default_factory=dict)  # --set values for parameters the space does not vary
    step: StepSettings = StepSettings()  # compile / fused optimizer (on a GPU; see StepSettings.fastest)
    keep_optimizer: bool = False  # the final checkpoint keeps AdamW's state too (--keep-checkpoints > 1)
    max_recon_mel: float = math.inf  # the constraint's bound (the driver resolves it: SweepPlan.recon_bound)
    tracking: SweepTracking | None = None  # None: no MLflow (the trainable alone, in tests)
    without: tuple[str, ...] = ()  # speed-ups turned off to measure them (plan.SPEED_SWITCHES)


@dataclass
class Trial:
    """A trial ready to train: what `build_trial` makes from its config, with or without Ray."""

    params: TrialParams
    device: torch.device
    trainer: VAETrainer
    cache: FeatureCache
    sampler: CropSampler
    rungs: frozenset[int]  # ASHA's milestones: a cheap battery and a checkpoint there
    latest: dict  # the newest probe values (from the checkpoint it resumed from; unmeasured before)


@dataclass(frozen=True)
class Interval:
    """A report point of `train`: the loss terms' means since the last one."""

    step: int
    curves: dict
    rung: bool  # a cheap battery is due (ASHA decides on it)
    checkpoint: bool  # a resumable checkpoint is due (every checkpoint_every steps, and at rungs)
    last: bool  # training is over: evaluation follows


class Diverged(Exception):
    """A non-finite loss: the step, its loss terms, and the means of the finite steps before it."""

    def __init__(self, step: int, values: dict, last_finite: dict):
        super().__init__(f"training diverged at step {step}: {values}")
        self.step, self.values, self.last_finite = step, values, last_finite


def trial_params(config: dict, context: TrialContext, name: str) -> TrialParams:
    """The trial's identity: its config over the sweep's fixed values, its seed from its name (t<number>)."""
    return TrialParams.from_config(
        {**context.fixed, **config}, context.preset, seed=trial_seed(context.seed, trial_number(name))
    )


def build_trial(
    config: dict, context: TrialContext, name: str, checkpoint: Path | None = None, clock: Clock | None = None
) -> Trial:
    """The trial's identity and seed (trial_params), its VAE on its own copy of the codec's decoder, its
    crops of the shared feature cache; restored from `checkpoint` (a folder) when given. clock: the
    build's parts as setup/codec, setup/model (the VAE on its device, restored), setup/data."""
    clock = clock or Clock()
    params = trial_params(config, context, name)
    torch.manual_seed(params.seed)
    torch.set_num_threads(max(1, context.threads))
    device = pick_device(context.device)
    codec = clock.timed("setup/codec", load_codec, context.codec)
    decoder = copy.deepcopy(codec.decoder)  # trained by this trial only; the cached codec stays pristine
    settings = StepSettings(
        compile=context.step.compile, fused_optimizer=context.step.fused_optimizer and device.type == "cuda"
    )
    if settings.compile:
        # Inductor's cache (on by default, shared by the machine's processes) hands a trial the kernels an
        # earlier trial of the same shapes compiled; --without compile-cache measures what that saves.
        if "compile-cache" in context.without:
            torch._inductor.config.force_disable_caches = True
        torch._dynamo.reset()  # a reused worker's earlier trials would count towards the recompile limit
        # The STFT loss's complex ops run eagerly inside the compiled step, as measured in sweep.bench.
        warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for compl")
    model_began = time.perf_counter()
    trainer = VAETrainer(BetaVAE(params.vae_config(context.preset), decoder), device, settings)
    latest = restore(trainer, checkpoint, params.train_steps) if checkpoint else unmeasured()
    clock.totals["setup/model"] += time.perf_counter() - model_began
    preset = context.preset
    crop_frames = round(preset.crop_seconds * codec.frame_rate)
    cache = clock.timed("setup/data", FeatureCache, context.cache_dir, False)
    sampler = clock.timed(
        "setup/data", CropSampler, cache, list(context.train_ids), crop_frames, preset.batch_size, params.seed
    )
    rungs = frozenset(rung_steps(params.train_steps, preset.probe_first) if context.probes else ())
    return Trial(params, device, trainer, cache, sampler, rungs, latest)


def train(trial: Trial, preset: Preset, clock: Clock | None = None) -> Iterator[Interval]:
    """Train to the trial's last step, yielding at each report point (every report_every steps, at
    rungs, at the end); raises Diverged at the report point after a non-finite loss."""
    clock = clock or Clock()
    trainer, steps = trial.trainer, trial.params.train_steps
    window = _Window(trainer.metric_names, trainer.step)
    while trainer.step < steps:
        # No host sync inside a report interval: the CPU queues steps while the GPU runs them.
        window.add(clock.timed("train", _next_step, trainer, trial.sampler))  # the crops' time counts too
        step = trainer.step
        last, rung = step == steps, step in trial.rungs
        if not (last or rung or step % preset.report_every == 0):
            continue
        curves = clock.timed("train", window.flush)  # waits for the interval's steps
        if window.diverged:
            raise Diverged(*window.diverged)
        checkpoint = not last and (rung or step % preset.checkpoint_every == 0)
        yield Interval(step, curves, rung and not last, checkpoint, last)


def _next_step(trainer: VAETrainer, sampler: CropSampler) -> torch.Tensor:
    return trainer.train_step_async(sampler.batch(trainer.step))


@functools.lru_cache(maxsize=2)
def load_codec(spec: str) -> MimiCodec:
    """One codec per worker process, kept for its next trials (Tune reuses workers)."""
    return MimiCodec.from_spec(CodecSpec.parse(spec))


def restore(trainer: VAETrainer, folder: Path, train_steps: int) -> dict:
    """Weights, optimiser and step from a checkpoint folder (Tune's latest); the probe values reported
    with it. A finished trial's checkpoint holds weights only: its trial then skips training and
    evaluates again (the driver was killed between the trial's last report and Tune recording it)."""
    meta = load_checkpoint(folder / CHECKPOINT_MODEL, trainer)
    if not meta["resumable"] and trainer.step < train_steps:
        raise RuntimeError(
            f"checkpoint {folder} holds weights at step {trainer.step} of {train_steps} but no "
            "optimizer state, so training cannot continue from it; start the trial again."
        )
    log.info("resumed from a checkpoint at step %d", meta["step"])
    return json.loads((folder / CHECKPOINT_PROBE).read_text())


def write_checkpoint(folder: Path, trainer: VAETrainer, probe: dict, optimizer: bool = True) -> Path:
    """A trial's checkpoint folder: the VAE (models.training's files; AdamW's state unless `optimizer` is
    False) and the latest probe values, which a restored trial reports until its next rung."""
    return write_checkpoint_from(folder, checkpoint_state(trainer, optimizer=optimizer), probe)


def write_checkpoint_from(folder: Path, state: dict, probe: dict) -> Path:
    """write_checkpoint's folder from a checkpoint_state taken earlier (CheckpointWriter
    writes a copy while training goes on)."""
    write_checkpoint_state(state, folder / CHECKPOINT_MODEL)
    (folder / CHECKPOINT_PROBE).write_text(json.dumps(probe))
    return folder


class CheckpointWriter:
    """Resumable checkpoints written beside training: `start` copies the weights and AdamW's state where
    they lie (on a GPU, milliseconds for a paper trial's 460 MB) and a thread of its own writes the copy
    to a local folder while the next steps run; `written()` hands that folder over once it is complete,
    with the step it holds, for the next report to give Tune (which copies it into its storage). A newer
    start waits for the older write, then replaces it; leaving the `with` block waits for a write under
    way and removes what was never handed over."""

    PREFIX = "sweep-checkpoint-"  # then the writing process's pid: a killed worker's folder is found

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        self._pending: Future | None = None
        self._step = 0
        remove_orphaned_checkpoints()

    def start(self, trainer: VAETrainer, latest: dict) -> None:
        self._discard()
        state = checkpoint_state(trainer, copy=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-")) / "checkpoint"
        self._pending, self._step = (
            self._pool.submit(write_checkpoint_from, folder, state, dict(latest)),
            trainer.step,
        )

    def settle(self) -> None:
        """Wait until a write under way is complete (it stays to be handed over)."""
        if self._pending is not None:
            self._pending.result()

    def written(self) -> tuple[Path, int] | None:
        """(the checkpoint's folder, the step it holds) once written; None before and after handing over."""
        if self._pending is None or not self._pending.done():
            return None
        folder, self._pending = self._pending.result(), None
        return folder, self._step

    def _discard(self) -> None:
        if self._pending is not None:
            shutil.rmtree(self._pending.result().parent, ignore_errors=True)
            self._pending = None

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._discard()
        self._pool.shutdown(wait=True)


def remove_orphaned_checkpoints() -> None:
    """Remove what killed trial workers left in this machine's temporary folder: a worker killed while
    it held a checkpoint written beside training (460 MB for a paper trial) leaves that folder, whose
    name carries the worker's pid; the next trial on the machine takes it away once that pid is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{CheckpointWriter.PREFIX}*-*"):
        pid = folder.name.removeprefix(CheckpointWriter.PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def probe(trial: Trial, context: TrialContext) -> dict:
    """The cheap battery at an ASHA rung: small MDNs on a subset; its k=4 rollout is the rung's metric.
    Every value it returns is named under probe/."""
    preset, cache, params, device = context.preset, trial.cache, trial.params, trial.device
    n_eval = preset.probe_utterances
    train_ids = context.train_ids[: 8 * n_eval]
    eval_ids = context.eval_ids[:n_eval]
    config = BatteryConfig(
        hidden=(preset.probe_hidden,) * 2, steps=preset.probe_mdn_steps, horizons=PROBE_HORIZONS,
        injection_steps=4, seed=params.seed, device=str(device),
        cuda_graphs="battery-graphs" not in context.without,
    )  # fmt: skip
    battery = run_battery(
        posterior_means(trial.trainer.vae, [cache.latents(i) for i in train_ids], device),
        posterior_means(trial.trainer.vae, [cache.latents(i) for i in eval_ids], device),
        config,
    )
    return probe_values(battery.metrics, params.dim)


def evaluate(trial: Trial, context: TrialContext, folder: Path) -> TrialEvaluation:
    preset, cache, params, device = context.preset, trial.cache, trial.params, trial.device
    eval_ids = list(context.eval_ids)
    config = EvalConfig.sized(
        preset.battery_hidden, preset.battery_mdn_steps, params.seed, device,
        cuda_graphs="battery-graphs" not in context.without,
        recon_utterances=preset.recon_utterances, audio_utterances=preset.audio_utterances,
    )  # fmt: skip
    return evaluate_vae(
        trial.trainer.vae,
        [cache.latents(i) for i in context.train_ids],
        [cache.latents(i) for i in eval_ids],
        [cache.audio(i) for i in eval_ids],
        [cache.utterances[i].utterance_id for i in eval_ids],
        config,
        audio_dir=folder / "audio",
        device=device,
        title=params.label(context.varied),
    )


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


class Clock:
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
