"""The plan: what a sweep is (SweepPlan), made from the command line's flags, every one checked
before anything runs (make_plan raises UsageError with the problem and the fix). The plan is saved
beside Tune's state (sweep.json), so --resume runs the same sweep; sweep.sync reads it back.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sweep import spaces, storage
from sweep.config import PRESETS, RECON_MARGIN, Preset, TrialParams, rung_steps
from sweep.errors import UsageError
from sweep.gpus import visible_gpu_memory

PLAN_FILE = "sweep.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
OPTUNA_STORE = "optuna.db"
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MIN_STEPS = 2000  # below this a compiled step's warm-up (8-45 s) is not repaid
TRIALS_PER_GPU = 4  # the default packing: most steps/s per GPU in sweep.bench (H200: 178 with MPS)
TRIAL_GPU_MEMORY_GIB = 4  # a paper trial: peak 1.1-1.3 GiB allocated (sweep.bench), + context, headroom
# Speed-ups a sweep can run without, to measure what each is worth (sweep.bench --parts sweep --without).
SPEED_SWITCHES = ("compile-cache", "battery-graphs", "background-io", "worker-reuse", "helper-processes",
                  "mlflow-host", "lean-ray-start")  # fmt: skip
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")  # never a path: no '/', no leading '.'


# Preset fields under their older names, in plans saved before the names said which steps they count.
_RENAMED = {"steps": "steps_per_10k", "battery_steps": "battery_mdn_steps", "probe_steps": "probe_mdn_steps"}


@dataclass
class SweepPlan:
    """Everything a sweep is; saved beside Tune's state so that --resume runs the same sweep."""

    experiment: str
    space: str
    search: str
    preset: Preset
    num_samples: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    storage: str
    mlflow_uri: str
    optuna_uri: str
    data: str
    cache: str
    codec: str
    seed: int
    scheduler: str
    fixed: dict = field(default_factory=dict)  # --set values for parameters the space does not vary
    workdir: str = "."
    parent_run_id: str | None = None
    keep_checkpoints: int = 1  # checkpoints kept per trial; > 1 keeps AdamW's state to the end
    recon_margin: float = RECON_MARGIN  # feasible: recon/mel <= recon_margin x the codec's own
    max_recon_mel: float | None = None  # an absolute bound instead (--max-recon-mel)
    codec_reference: dict = field(default_factory=dict)  # the codec's own recon/mel, recon/l1 (measured once)
    compile: str = "auto"  # --compile: auto | on | off
    fused_optimizer: bool = True
    mps: bool = False
    without: list = field(default_factory=list)  # SPEED_SWITCHES turned off (--without)

    @property
    def compiled(self) -> bool:
        """Whether trials compile their step: auto = on a GPU, for trials long enough to repay the warm-up."""
        if self.compile == "auto":
            return self.gpus_per_trial > 0 and self.max_train_steps() >= COMPILE_MIN_STEPS
        return self.compile == "on"

    @property
    def recon_bound(self) -> float:
        """The reconstruction constraint's bound on recon/mel (once the codec reference is measured)."""
        if self.max_recon_mel is not None:
            return self.max_recon_mel
        return self.recon_margin * self.codec_reference["recon/mel"]

    def describe_constraint(self) -> str:
        if self.max_recon_mel is not None:
            return f"recon/mel <= {self.max_recon_mel:g}"
        measured = f" = {self.recon_bound:.3g}" if self.codec_reference else ""
        return f"recon/mel <= {self.recon_margin:g} x the codec's own{measured}"

    @property
    def experiment_dir(self) -> str:
        """Tune's folder (or URI) for this sweep."""
        return storage.join(self.storage, self.experiment)

    @property
    def summary_dir(self) -> Path:
        """The summary files: beside Tune's results, or in the working folder when those are remote."""
        if storage.is_uri(self.storage):
            return Path(self.workdir) / "sweep-summaries" / self.experiment
        return Path(self.experiment_dir) / "summary"

    @property
    def varied(self) -> tuple[str, ...]:
        return tuple(p.name for p in spaces.space_params(self.space))

    @property
    def trial_count(self) -> int:
        return spaces.grid_size(self.space) * self.num_samples if self.search == "grid" else self.num_samples

    def rungs(self, train_steps: int) -> list[int]:
        """ASHA's rungs for a trial of `train_steps` (none without ASHA): where its cheap battery runs."""
        return rung_steps(train_steps, self.preset.probe_first) if self.scheduler == "asha" else []

    def max_train_steps(self) -> int:
        return max(
            TrialParams.from_config({"steps": s}, self.preset).train_steps for s in self._step_values()
        )

    def _step_values(self) -> tuple[int, ...]:
        return spaces.PARAMS["steps"].values if "steps" in self.varied else (self.fixed.get("steps", 10_000),)

    def trials_at_once(self, cpus: int, gpus: int) -> int:
        """How many trials Ray can run at a time with `cpus` and `gpus`."""
        slots = [math.floor(cpus / self.cpus_per_trial)]
        if self.gpus_per_trial > 0:
            slots.append(math.floor(gpus / self.gpus_per_trial + 1e-9))
        if self.max_concurrent:
            slots.append(self.max_concurrent)
        return max(0, min(*slots, self.trial_count))

    def trial_steps(self) -> list[int]:
        """Each trial's VAE steps, in the order a grid runs them (Optuna: the step values in turn)."""
        options = self._step_values()
        if self.search == "grid":
            values = [p.get("steps", options[0]) for p in spaces.grid_points(self.space, self.num_samples)]
        else:
            values = [options[i % len(options)] for i in range(self.trial_count)]
        return [TrialParams.from_config({"steps": v}, self.preset).train_steps for v in values]

    def save(self) -> None:
        storage.write_text(storage.join(self.experiment_dir, PLAN_FILE), json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str) -> SweepPlan:
        values = json.loads(storage.read_text(path))
        values["preset"] = Preset(**{_RENAMED.get(k, k): v for k, v in values["preset"].items()})
        return cls(**values)


def make_plan(args: argparse.Namespace, workdir: Path) -> SweepPlan:
    """Validate every flag and resolve every default; raises UsageError before anything runs."""
    if args.resume is not None:
        return _resumed_plan(args, workdir)
    space = args.space
    if space is None:
        raise UsageError(f"say which space to sweep: --space {{{','.join(spaces.SPACES)}}} (see --help).")
    if space not in spaces.SPACES:
        raise UsageError(f"unknown space {space!r}; choose one of: {', '.join(spaces.SPACES)}.")
    preset_name = args.preset or "smoke"
    if preset_name not in PRESETS:
        raise UsageError(f"unknown preset {preset_name!r}; choose one of: {', '.join(PRESETS)}.")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}.")
    preset = PRESETS[preset_name].with_overrides(steps_per_10k=args.steps, scheduler=args.scheduler)
    fixed = _parse_sets(args.set, space)
    search = args.search or ("optuna" if spaces.space_params(space) else "grid")
    if search == "optuna" and not spaces.space_params(space):
        raise UsageError(
            f"the {space} space varies nothing for Optuna to search: run it with --search grid "
            "--num-samples N (N repeats of the seed's configuration)."
        )
    num_samples = args.num_samples or (1 if search == "grid" else preset.num_samples)
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}.")
    root = storage.resolve_storage(args.storage, workdir)
    experiment = args.experiment or f"{space}-{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not SAFE_NAME.fullmatch(experiment):
        raise UsageError(
            f"--experiment {experiment!r}: use letters, digits, '.', '_' and '-' only (it names folders and "
            "MLflow experiments), and do not start it with '.'."
        )
    if storage.exists(storage.join(root, experiment, PLAN_FILE)):
        raise UsageError(
            f"experiment {experiment!r} already exists in {root}; reusing its name would overwrite it "
            f"(ray#35812). Resume it with --resume {experiment}, or pick another --experiment."
        )
    memory = visible_gpu_memory()  # bytes per visible GPU, for the packing and --mps
    return SweepPlan(
        experiment=experiment,
        space=space,
        search=search,
        preset=preset,
        num_samples=num_samples,
        cpus_per_trial=_check_cpus(args.cpus_per_trial),
        gpus_per_trial=_gpus_per_trial(args.gpus_per_trial, args, memory),
        keep_checkpoints=_check_keep(args.keep_checkpoints),
        recon_margin=RECON_MARGIN
        if args.recon_margin is None
        else _positive("--recon-margin", args.recon_margin),
        max_recon_mel=None
        if args.max_recon_mel is None
        else _positive("--max-recon-mel", args.max_recon_mel),
        compile=args.compile,
        fused_optimizer=not args.no_fused_optimizer,
        mps=_check_mps(args, memory),
        without=check_without(getattr(args, "without", "")),
        max_concurrent=_check_concurrency(args.max_concurrent),
        storage=root,
        mlflow_uri=args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(workdir),
        optuna_uri=f"sqlite:///{workdir / OPTUNA_STORE}",
        data=str(_data_folder(args.data, preset, workdir)),
        cache=str((workdir / args.cache).resolve()),
        codec=_check_codec(args.codec or preset.codec, loads=not getattr(args, "dry_run", False)),
        seed=args.seed,
        scheduler=preset.scheduler,
        fixed=fixed,
        workdir=str(workdir),
    )


def _parse_sets(items: list[str], space: str) -> dict:
    varied = {p.name for p in spaces.space_params(space)}
    fixed = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in spaces.PARAMS or not text:
            raise UsageError(
                f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(spaces.PARAMS)}, "
                "e.g. --set beta=0.1."
            )
        if name in varied:
            raise UsageError(
                f"--set {name}: the space {space!r} varies {name}; fix only the other parameters."
            )
        whole = name in ("dim", "steps")
        try:
            fixed[name] = int(text) if whole else float(text)
        except ValueError:
            kind = "an integer" if whole else "a number"
            raise UsageError(f"--set {item!r}: {text!r} is not {kind}.") from None
    try:
        spaces.validate_values(fixed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return fixed


def _check_codec(text: str, loads: bool = True) -> str:
    """A codec string that parses, a local folder that holds a saved Mimi, and (where the sweep `loads`
    it: not a dry run) hub weights that are cached or can be downloaded (check_pretrained_available)."""
    from models.spec import CodecSpec, CodecWeightsMissing, check_pretrained_available

    if text.startswith(("/", "./", "../", "~")) and not Path(text).expanduser().is_dir():
        raise UsageError(f"--codec {text}: no such folder. Pass a folder holding a saved Mimi, "
                         "kyutai/mimi, or random:full / random:reduced.")  # fmt: skip
    try:
        spec = CodecSpec.parse(text)
        if loads or Path(spec.model).is_dir():
            check_pretrained_available(spec)
    except (ValueError, CodecWeightsMissing) as err:
        raise UsageError(f"--codec {text}: {err}") from None
    return text


def _check_cpus(cpus: float) -> float:
    if not cpus > 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {cpus}.")
    return cpus


def _positive(flag: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{flag} must be a positive number, got {value}.")
    return value


def _check_keep(value: int) -> int:
    if value < 1:
        raise UsageError(f"--keep-checkpoints must be >= 1 (a trial needs one to be resumed), got {value}.")
    return value


def check_without(value: str) -> list:
    """--without's speed switches as a list (UsageError for a name not in SPEED_SWITCHES)."""
    names = [v for v in value.split(",") if v]
    if unknown := sorted(set(names) - set(SPEED_SWITCHES)):
        raise UsageError(
            f"--without {','.join(unknown)}: not a speed switch; choose from {', '.join(SPEED_SWITCHES)}."
        )
    return names


def _check_concurrency(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {value}.")
    return value


def _gpus_per_trial(requested: float | None, args, memory: list[int]) -> float:
    """Packing where a GPU is visible (memory: bytes per visible GPU), else 0; asking for GPUs on a
    machine without one is an error."""
    visible = len(memory)
    if requested is None:
        return 1 / trials_per_gpu(memory[0]) if visible else 0.0
    if requested < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {requested}.")
    if requested > 0 and not visible and not (args.address or os.environ.get("RAY_ADDRESS")):
        raise UsageError(
            f"--gpus-per-trial {requested:g} but this machine has no visible GPU "
            "(CUDA shows this process none). "
            "Use --gpus-per-trial 0 to run on the CPU, or --address to use a Ray cluster with GPUs."
        )
    return requested


def trials_per_gpu(gpu_memory_bytes: int) -> int:
    """TRIALS_PER_GPU, or fewer where the GPU's memory would not hold them."""
    return max(1, min(TRIALS_PER_GPU, int(gpu_memory_bytes / 2**30 // TRIAL_GPU_MEMORY_GIB)))


def _check_mps(args, memory: list[int]) -> bool:
    if not args.mps:
        return False
    from sweep.mps import MPSError, check_mps_available

    if args.address or os.environ.get("RAY_ADDRESS"):
        raise UsageError(
            "--mps starts a daemon on this machine only; with --address the trials run on the cluster's "
            "nodes. Start MPS on each node yourself (nvidia-cuda-mps-control -d) or drop --mps."
        )
    if not memory:
        raise UsageError("--mps needs a GPU, and CUDA shows this process none here; drop --mps.")
    try:
        check_mps_available()
    except MPSError as err:
        raise UsageError(str(err)) from None
    return True


def _data_folder(data: str | None, preset: Preset, workdir: Path) -> Path:
    from sweep.data import DataError, discover_audio, probe_audio

    if data is None:
        if preset.data is not None:
            data = preset.data
        elif preset.name in ("smoke", "tiny"):
            return (workdir / "data" / "smoke").resolve()  # written from the bundled corpus if missing
        else:
            raise UsageError(
                f"the {preset.name} preset reads speech from your disk: "
                "pass --data /path/to/LibriSpeech/train-clean-100 "
                "(LibriSpeech layout or any folder of wav/flac)."
            )
    folder = Path(data).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(
            f"--data {data}: no such folder. Pass a folder of wav/flac files (LibriSpeech layout works)."
        )
    try:
        files = discover_audio(folder)
    except DataError as err:
        raise UsageError(f"--data {data}: {err}") from None
    problems = [(f.path.name, probe_audio(f.path, preset.crop_seconds)[1]) for f in files]  # headers only
    if all(why for _, why in problems):
        listed = "; ".join(f"{name}: {why}" for name, why in problems[:10])
        raise UsageError(
            f"--data {data}: none of its {len(files)} audio files is usable ({listed}"
            f"{'; ...' if len(files) > 10 else ''}). Each needs at least {preset.crop_seconds:g} s of "
            "readable audio."
        )
    return folder


def _resumed_plan(args, workdir: Path) -> SweepPlan:
    root = storage.resolve_storage(args.storage, workdir)
    name = args.resume or args.experiment or _latest_experiment(root)
    path = storage.join(root, name, PLAN_FILE)
    if not storage.exists(path):
        known = sorted(name for name, _ in storage.sweeps_in(root, PLAN_FILE))
        raise UsageError(
            f"--resume {name}: no such experiment in {root}. "
            + (f"Known: {', '.join(known)}." if known else "It holds no sweeps; start one with --space.")
            + " (--storage must be the folder the sweep was started with.)"
        )
    plan = SweepPlan.load(path)
    changed = {
        flag: (given, saved)
        for flag, given, saved in (
            ("--space", args.space, plan.space),
            ("--search", args.search, plan.search),
            ("--preset", args.preset, plan.preset.name),
            ("--steps", args.steps, plan.preset.steps_per_10k),
            ("--recon-margin", args.recon_margin, plan.recon_margin),
            ("--max-recon-mel", args.max_recon_mel, plan.max_recon_mel),
        )
        if given is not None and given != saved
    }
    if changed:
        what = "; ".join(
            f"{flag} {given} (the sweep has {saved})" for flag, (given, saved) in changed.items()
        )
        raise UsageError(
            f"--resume {name} cannot change what the sweep is: {what}. Tune restores the original search "
            "space (ray PR #34982) and the sweep keeps its constraint; start a new experiment for either."
        )
    return plan


def _latest_experiment(root: str) -> str:
    sweeps = storage.sweeps_in(root, PLAN_FILE)
    if not sweeps:
        raise UsageError(f"--resume: {root} holds no sweeps to resume; start one with --space.")
    return sweeps[-1][0]


def default_mlflow_uri(workdir: Path) -> str:
    from sweep.tracking import default_uri

    return default_uri(workdir)
