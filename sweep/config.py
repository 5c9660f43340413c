"""Presets and the two halves of a trial's configuration.

    preset = PRESETS["smoke"].with_overrides(steps_per_10k=20)
    params = TrialParams.from_config({"beta": 0.01, "dim": 32}, preset)   # what the space varies
    params.train_steps, params.vae_config(preset)

A trial's *identity* (`TrialParams`: beta, dim, steps, the loss weights, seed) is what a search space
varies and what MLflow logs as params; the data and codec are identified by the tags every run
carries. Operational settings (`Preset`: batch, cadence of reports, checkpoints and probes, battery
sizes) say how a trial is run, not what it is.

Step counts in spaces are paper-scale (10k, 50k): a preset says what 10k steps mean for it
(`Preset.steps_per_10k`), so the smoke preset runs the same spaces in seconds. `--steps N` sets that number.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from models.spec import VAEConfig

PAPER_STEPS = 10_000  # the step count a space's "10k" stands for; presets scale it


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    codec: str  # "kyutai/mimi", a local folder, or "random:reduced" / "random:full"
    data: str | None  # None: the bundled speech corpus, written into the working folder
    steps_per_10k: int  # VAE steps this preset runs for a space's 10k (paper-scale) steps
    batch_size: int
    lr: float
    crop_seconds: float
    max_utterances: int
    num_samples: int  # trials an Optuna search runs unless --num-samples says otherwise
    scheduler: str  # "asha" or "none"
    report_every: int  # steps between reports (train/* curves, the scheduler's metric)
    checkpoint_every: int
    battery_hidden: int  # MDN width of the final battery (docs/science.md §3: 1024)
    battery_mdn_steps: int  # MDN training steps at most, final battery
    probe_hidden: int  # the cheap battery run at ASHA's rungs
    probe_mdn_steps: int
    probe_utterances: int  # eval utterances the cheap battery scores
    recon_utterances: int
    audio_utterances: int

    def __post_init__(self):
        positive = ("steps_per_10k", "batch_size", "report_every", "checkpoint_every", "battery_hidden",
                    "battery_mdn_steps", "probe_hidden", "probe_mdn_steps", "probe_utterances",
                    "recon_utterances", "max_utterances", "num_samples")  # fmt: skip
        bad = [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"preset {self.name!r}: these must be >= 1: {', '.join(bad)}.")
        if not (self.lr > 0 and self.crop_seconds > 0):
            raise ValueError(f"preset {self.name!r}: lr and crop_seconds must be > 0.")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {self.scheduler!r} is not one of {SCHEDULERS}.")

    @property
    def probe_first(self) -> int:
        """The first rung: the step of the first cheap battery (ASHA's grace period)."""
        return max(1, self.steps_per_10k // 4)

    def with_overrides(self, **changes) -> Preset:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SCHEDULERS = ("asha", "none")
ASHA_REDUCTION = 2  # rungs at probe_first * 2^k: the cheap battery runs exactly there
# The reconstruction constraint, by default: a trial's recon/mel at most this many times the codec's own
# (encode -> decode without a bottleneck, on the same eval utterances, measured once per sweep).
RECON_MARGIN = 1.5


def rung_steps(train_steps: int, first: int, factor: int = ASHA_REDUCTION) -> list[int]:
    """ASHA's milestones below the end of training: first, first * factor, ... (< train_steps)."""
    rungs, step = [], first
    while step < train_steps:
        rungs.append(step)
        step *= factor
    return rungs


def trial_name(number: int) -> str:
    """A trial's short name from Tune's trial number: 't007'. It names the trial's folder in Tune's
    storage, its row in the summary and its MLflow run."""
    return f"t{number:03d}"


def trial_number(name: str) -> int:
    """The number back from a trial_name."""
    if not (name.startswith("t") and name[1:].isdigit()):
        raise ValueError(f"trial name {name!r} is not of the form t<number>, e.g. t007.")
    return int(name[1:])


def trial_seed(sweep_seed: int, number: int) -> int:
    """Each trial's own seed (initialisation, batches, reparameterisation noise): repeats of one
    configuration differ, and a retried or resumed trial keeps its seed."""
    return sweep_seed * 10_000 + number


PRESETS = {
    "smoke": Preset(
        name="smoke",
        description="reduced random-init Mimi, the bundled speech corpus, CPU; 4 trials in a few minutes",
        codec="random:reduced",
        data=None,
        steps_per_10k=40,
        batch_size=2,
        lr=3e-4,
        crop_seconds=2.0,
        max_utterances=5000,
        num_samples=4,
        scheduler="none",
        report_every=5,
        checkpoint_every=20,
        battery_hidden=64,  # plumbing: the battery's MDN fit was 2/3 of a smoke trial at 128 x 300 steps
        battery_mdn_steps=150,
        probe_hidden=32,
        probe_mdn_steps=50,
        probe_utterances=4,
        recon_utterances=4,
        audio_utterances=1,
    ),  # fmt: skip
    "tiny": Preset(
        name="tiny",
        description="plumbing and load checks: like smoke, seconds per trial, science meaningless",
        codec="random:reduced",
        data=None,
        steps_per_10k=4,
        batch_size=1,
        lr=3e-4,
        crop_seconds=1.0,
        max_utterances=5000,
        num_samples=8,
        scheduler="none",
        report_every=2,
        checkpoint_every=2,
        battery_hidden=16,
        battery_mdn_steps=20,
        probe_hidden=16,
        probe_mdn_steps=10,
        probe_utterances=2,
        recon_utterances=1,
        audio_utterances=1,
    ),  # fmt: skip
    "paper": Preset(
        name="paper",
        description="pretrained kyutai/mimi, LibriSpeech from --data, 10k steps, batch 4 x 4 s, lr 1e-4",
        codec="kyutai/mimi",
        data=None,
        steps_per_10k=PAPER_STEPS,
        batch_size=4,
        lr=1e-4,
        crop_seconds=4.0,
        max_utterances=5000,
        num_samples=16,
        scheduler="asha",
        report_every=50,
        checkpoint_every=1000,
        battery_hidden=1024,
        battery_mdn_steps=3000,
        probe_hidden=256,
        probe_mdn_steps=500,
        probe_utterances=100,
        recon_utterances=32,
        audio_utterances=10,
    ),  # fmt: skip
}


@dataclass(frozen=True)
class TrialParams:
    """A trial's identity: the values a search space chooses, with the baseline for the rest."""

    beta: float = 0.01
    dim: int = 32
    steps: int = PAPER_STEPS  # paper-scale; train_steps is what this preset runs
    lambda_smooth: float = 0.0
    lambda_pred: float = 0.0
    seed: int = 0
    train_steps: int = PAPER_STEPS

    @classmethod
    def from_config(cls, config: dict, preset: Preset, seed: int = 0) -> TrialParams:
        known = {f.name for f in dataclasses.fields(cls)} - {"train_steps"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown trial parameters {sorted(unknown)}; known: {sorted(known)}.")
        values = {"seed": seed, **config}
        steps = int(values.get("steps", PAPER_STEPS))
        train_steps = max(1, math.ceil(steps * preset.steps_per_10k / PAPER_STEPS))
        return cls(**{**values, "dim": int(values.get("dim", 32)), "steps": steps}, train_steps=train_steps)

    def vae_config(self, preset: Preset) -> VAEConfig:
        return VAEConfig(
            latent_dim=self.dim, beta=self.beta, lambda_smooth=self.lambda_smooth,
            lambda_pred=self.lambda_pred, lr=preset.lr,
        )  # fmt: skip

    def label(self, varied: tuple[str, ...] = ("beta", "dim")) -> str:
        """A short name such as 'beta=0.01 dim=32' from the parameters a space varies."""
        return " ".join(f"{name}={getattr(self, name):.3g}" for name in varied)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_params(self) -> dict:
        """The trial's params in MLflow: all but the seed, which is a tag. MLflow's compare view plots
        the first three differing params (alphabetically) by default: beta, dim, steps, not the seed,
        which differs between every two trials."""
        return {k: v for k, v in self.to_dict().items() if k != "seed"}
