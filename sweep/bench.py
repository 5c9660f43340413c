"""How fast sweeps run on this machine: one trial's step, the battery, N trials per GPU, a whole sweep.

    python -m sweep.bench           # on a GPU: every part (~12 min on an H100, and the 16-trial grid)
    python -m sweep.bench --parts tune --trials 4,8 --mps both
    python -m sweep.bench --parts sweep --space beta_dim --sweep-steps 2000 --mps on   # the 16-point grid
    python -m sweep.bench --device cpu --codec random:reduced --preset tiny --trials 1,2 \\
        --tune-steps 8 --step-steps 3 --battery-utterances 40 --battery-seconds 6    # CPU path, ~1 min

Parts (run in this order; `tune` first because it starts its own processes, some of them under an
MPS daemon, before this one has touched the GPU):
- tune: N trials at 1/N GPU each through the real service (`python -m sweep.launch --space baseline
  --search grid --num-samples N`: Ray Tune, MLflow, the trainable, the default fast step), with and/or
  without MPS. Aggregate VAE steps/s over the window in which all N trained at once; where each
  trial's wall time went (set-up, warm-up, training, evaluation, logging, checkpoints); peak GPU memory.
- sweep: a whole grid sweep of `--space` through the service as a user runs it (`--scheduler none`,
  4 trials per GPU on every GPU; `--sweep-trials`, `--sweep-steps`, `--without` for the speed
  switches), timed from launch to exit: its wall time against its training steps at the aggregate rate
  measured while every slot trained, and where the rest went (start, set-up, compile warm-up,
  evaluation, checkpoints, logging, idle slots, end). Every run is kept; --dry-run uses the newest.
- step: VAE steps/s of one process on the preset's trial (paper: batch 4 x 4 s, full loss, cached
  features) for each step variant, and how closely the fast step matches the eager one.
- battery: the diagnostics battery at paper scale on synthetic latents (evaluation.bench_battery).

Results accumulate in sweep-bench/bench.json (a rerun of a part replaces what it measured); the
last thing printed is the markdown table of everything in it. `python -m sweep.launch ... --dry-run`
reads that file to project a sweep's wall time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from evaluation.bench_battery import time_battery
from evaluation.diagnostics import BatteryConfig
from models.codec import CodecSpec, MimiCodec
from models.runtime import pick_device
from models.training import StepSettings, VAETrainer
from models.vae import BetaVAE
from sweep import stages_from_text, throughput
from sweep.config import PRESETS, Preset, TrialParams
from sweep.corpus import write_corpus
from sweep.data import DataError, discover_audio, select_utterances, split_by_speaker
from sweep.errors import report_usage_error
from sweep.features import CropSampler, prepare_data
from sweep.objective import COMPLETED, STATUS
from sweep.plan import TRIALS_PER_GPU, check_without
from sweep.spaces import SPACES, grid_size
from sweep.sync import trial_reports
from sweep.throughput import markdown, overhead_table, summarise_trials, sweep_breakdown

log = logging.getLogger("sweep.bench")

PARTS = ("tune", "sweep", "step", "battery")
MPS_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        prog="python -m sweep.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--codec", default="random:full" if cuda else "random:reduced")
    p.add_argument("--preset", default="paper", choices=list(PRESETS), help="the trial configuration")
    p.add_argument("--data", help="speech folder (default: the bundled corpus, written to the workdir)")
    p.add_argument("--trials", default="1,2,4,8" if cuda else "1,2", help="tune: trials per GPU to run")
    p.add_argument("--mps", choices=list(MPS_CHOICES), default="off", help="tune: with an MPS daemon or not")
    p.add_argument("--tune-steps", type=int, default=1500 if cuda else 8, help="tune: VAE steps per trial")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="tune: CPUs shared by the trials")
    p.add_argument(
        "--space", default="beta_dim", help="sweep: the space whose grid it runs (baseline: repeats)"
    )
    p.add_argument(
        "--sweep-trials", type=int, help="sweep: trials (default: the grid once; baseline: 4 per GPU)"
    )
    p.add_argument(
        "--sweep-steps", type=int, default=2000 if cuda else 8, help="sweep: what 10k steps stand for"
    )
    p.add_argument("--without", default="", help="sweep: speed-ups to turn off (sweep.launch --without)")
    p.add_argument("--step-steps", type=int, default=300 if cuda else 3, help="step: timed steps per variant")
    p.add_argument("--warmup-steps", type=int, default=10 if cuda else 1, help="step: untimed steps first")
    p.add_argument("--battery-utterances", type=int, default=5000)
    p.add_argument("--battery-hidden", type=int, default=BatteryConfig.hidden[0], help="MDN width")
    p.add_argument("--battery-steps", type=int, default=BatteryConfig.steps, help="MDN steps at most")
    p.add_argument("--agreement-steps", type=int, default=100 if cuda else 4, help="step: fast vs eager")
    p.add_argument("--battery-seconds", type=float, default=12.0, help="battery: seconds per utterance")
    p.add_argument("--workdir", default="sweep-bench/work", help="corpus, cache, Tune and MLflow stores")
    p.add_argument("--out", default=str(throughput.BENCH_FILE), help="the JSON file results accumulate in")
    args = p.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}.")
    return args


def check_sweep_args(args: argparse.Namespace) -> None:
    """The sweep part's flags, checked before anything is measured (ValueError: one line, exit 2)."""
    if args.space not in SPACES:
        raise ValueError(f"--space {args.space}: not a space; choose from {', '.join(SPACES)}.")
    grid = grid_size(args.space)
    if args.sweep_trials is not None and (args.sweep_trials < 1 or args.sweep_trials % grid):
        raise ValueError(
            f"--sweep-trials {args.sweep_trials}: give a multiple of the {args.space} grid ({grid})."
        )
    check_without(args.without)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        check_sweep_args(args)
        device = pick_device(args.device)
        if args.data and not Path(args.data).is_dir():
            raise DataError(f"--data {args.data}: no such folder. Pass a folder of wav/flac files.")
        preset = PRESETS[args.preset]
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        data = Path(args.data).resolve() if args.data else _bundled_corpus(workdir)
        files = select_utterances(discover_audio(data), preset.max_utterances)
    except (ValueError, DataError) as err:  # a bad --device or --data, before anything is measured
        return report_usage_error(err)
    out = Path(args.out)
    results = _load(out, _machine(device))
    parts = args.parts.split(",")
    split = split_by_speaker(files, seed=0)  # (train, eval) as the sweeps split it
    if "tune" in parts:
        for mps in MPS_CHOICES[args.mps]:
            for n in (int(x) for x in args.trials.split(",")):
                entry = _tune_run(args, device, data, workdir, n, mps)
                entry["trial"]["eval_utterances"] = len(split[1])
                same = [e for e in results.get("tune", []) if (e["trials"], e["mps"]) == (n, mps)]
                results["tune"] = [e for e in results.get("tune", []) if e not in same] + [entry]
                _save(out, results, preset)  # each measurement is kept, whatever happens next
    if "sweep" in parts:
        for mps in MPS_CHOICES[args.mps]:
            # every sweep is kept (the first on a machine compiles, the next find the compile cache);
            # --dry-run projects from the newest
            results["sweeps"] = results.get("sweeps", []) + [_sweep_run(args, device, data, workdir, mps)]
            _save(out, results, preset)
    if "step" in parts:
        results["step"] = bench_step(args, preset, device, data, workdir)
        _save(out, results, preset)
    if "battery" in parts:
        hidden = (args.battery_hidden,) * 2
        config = BatteryConfig(hidden=hidden, steps=args.battery_steps, device=str(device))
        results["battery"] = time_battery(args.battery_utterances, args.battery_seconds, 32, config)
        if device.type == "cuda":  # the switch measured: the same battery with eager MDN fits
            eager = time_battery(
                args.battery_utterances, args.battery_seconds, 32, replace(config, cuda_graphs=False)
            )
            results["battery"]["without_cuda_graphs"] = {
                k: eager[k] for k in ("seconds_total", "seconds_by_phase")
            }
        _save(out, results, preset)
    print(markdown(results))
    print(f"\nwritten to {out}")
    return 0


def _save(path: Path, results: dict, preset: Preset) -> None:
    results["tune"] = sorted(results.get("tune", []), key=lambda e: (e["mps"], e["trials"]))
    results["overhead"] = overhead_table(results, preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


# ---------------------------------------------------------------- tune: N trials through the service


def _tune_run(args, device: torch.device, data: Path, workdir: Path, n: int, mps: bool) -> dict:
    experiment = f"bench-n{n}{'-mps' if mps else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    gpus = 1 / n if device.type == "cuda" else 0
    cpus = max(1, args.cpus // n)
    argv = [
        "--space", "baseline", "--search", "grid", "--num-samples", str(n), "--preset", args.preset,
        "--codec", args.codec, "--data", str(data), "--steps", str(args.tune_steps), "--scheduler", "none",
        "--gpus-per-trial", f"{gpus:.6f}", "--cpus-per-trial", str(cpus), "--no-dashboard",
        "--experiment", experiment, "--storage", str(workdir / "results"),
        "--mlflow-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--cache", str(workdir / "cache"),
    ] + (["--mps"] if mps else [])  # fmt: skip
    log.info("tune: %d trial(s) at %.3g GPU, %d CPUs each, MPS %s", n, gpus, cpus, "on" if mps else "off")
    started, code, logfile = _launch(argv, workdir, experiment)
    wall = time.time() - started
    if code != 0:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"the sweep of {n} trial(s) failed (exit {code}); end of {logfile}:\n{tail}")
    entry = summarise_trials(trial_reports(workdir / "results" / experiment), args.tune_steps)
    return {
        "trials": n,
        "gpu_per_trial": gpus,
        "cpus_per_trial": cpus,
        "mps": mps,
        "sweep_wall_s": wall,
        **entry,
    }


# ---------------------------------------------------------------- sweep: a whole sweep, where its time went


def _sweep_run(args, device: torch.device, data: Path, workdir: Path, mps: bool) -> dict:
    """A grid sweep of `--space` through the service as a user runs it (`--scheduler none`, the default
    packing of 4 trials per GPU on every GPU), timed from launch to exit and taken apart."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    grid = grid_size(args.space)
    trials = args.sweep_trials or (TRIALS_PER_GPU * max(1, gpus) if grid == 1 else grid)
    slots = min(trials, TRIALS_PER_GPU * gpus) if gpus else min(trials, args.cpus)
    experiment = f"bench-sweep-{args.space}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = [
        "--space", args.space, "--search", "grid", "--num-samples", str(trials // grid),
        "--preset", args.preset, "--codec", args.codec, "--data", str(data), "--steps", str(args.sweep_steps),
        "--scheduler", "none",
        "--cpus-per-trial", str(max(1, args.cpus // slots)), "--no-dashboard", "--experiment", experiment,
        "--storage", str(workdir / "results"), "--mlflow-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--cache", str(workdir / "cache"),
    ] + (["--mps"] if mps else []) + (["--without", args.without] if args.without else [])  # fmt: skip
    if not gpus:
        argv += ["--gpus-per-trial", "0"]
    log.info(
        "sweep: %d trials of %s, %d at a time, MPS %s", trials, args.space, slots, "on" if mps else "off"
    )
    started, code, logfile = _launch(argv, workdir, experiment)
    ended = time.time()
    if code != 0:
        raise RuntimeError(f"the sweep failed (exit {code}); see {logfile}")
    reports = trial_reports(workdir / "results" / experiment)
    errored = [name for name, rows in reports.items() if rows[-1].get(STATUS) != COMPLETED]
    entry = sweep_breakdown(reports, slots, started, ended)
    log_text = logfile.read_text()
    ready = re.search(r"trials start ([0-9.]+) s after launch \((.*) s\)", log_text)
    entry["driver_ready_s"] = float(ready.group(1)) if ready else None  # of `start`: the driver's part
    entry["driver_stages"] = stages_from_text(ready.group(2)) if ready else {}
    data = re.search(r"the trials' data is ready ([0-9.]+) s after launch \(data ([0-9.]+) s\)", log_text)
    if data:  # prepared beside the trials' start (sweep/gate.py): when the gate opened, what it took
        entry["data_ready_s"], entry["driver_stages"]["data"] = float(data.group(1)), float(data.group(2))
    ends = re.search(
        r"sweep ends ([0-9.]+) s after launch, Tune's results at ([0-9.]+) s \((.*) s\)", log_text
    )
    if ends:  # the end's parts: Tune's from the last trial's result, the driver's stages, the process's exit
        last_result = entry["wall_s"] - entry["parts"]["end"]
        entry["end_stages"] = {"Tune": float(ends.group(2)) - last_result} | stages_from_text(ends.group(3))
        entry["end_stages"]["exit"] = entry["wall_s"] - float(ends.group(1))
    return {"space": args.space, "sweep_steps": args.sweep_steps, "mps": mps, "without": args.without,
            "gpus": gpus, "errored": errored, "log": str(logfile), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            **entry}  # fmt: skip


def _launch(argv: list[str], workdir: Path, experiment: str) -> tuple[float, int, Path]:
    """Run `python -m sweep.launch argv` in `workdir`, its output into a log file: (start, exit code, log)."""
    logfile = workdir / f"{experiment}.log"
    started = time.time()
    with logfile.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "sweep.launch", *argv], cwd=workdir, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    return started, code, logfile


# ---------------------------------------------------------------- step: one process, each variant


def bench_step(args, preset: Preset, device: torch.device, data: Path, workdir: Path) -> dict:
    codec = MimiCodec.from_spec(CodecSpec.parse(args.codec)).to(device)
    prepared = prepare_data(
        data,
        codec,
        workdir / "cache",
        max_utterances=preset.max_utterances,
        min_seconds=preset.crop_seconds,
        device=device,
    )  # the sweeps' split (seed 0) and cache
    crop = round(preset.crop_seconds * codec.frame_rate)
    sampler = CropSampler(prepared.cache, prepared.train_ids, crop, preset.batch_size, seed=0)
    variants = {"eager, host sync every step": (StepSettings(), True), "eager": (StepSettings(), False)}
    if device.type == "cuda":
        variants["eager + fused AdamW"] = (StepSettings(fused_optimizer=True), False)
        variants["compiled (CUDA graphs) + fused AdamW: the default"] = (StepSettings.fastest(device), False)
    rows = []
    for name, (settings, sync) in variants.items():
        trainer = _trainer(codec, preset, device, settings)
        warmup = _timed_steps(trainer, sampler, args.warmup_steps, sync, preset.report_every, device)
        seconds = _timed_steps(trainer, sampler, args.step_steps, sync, preset.report_every, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        rows.append({"variant": name, "steps_per_s": args.step_steps / seconds, "warmup_s": warmup,
                     "peak_gib": peak})  # fmt: skip
        log.info("step: %s: %.1f steps/s (warm-up %.1f s)", name, rows[-1]["steps_per_s"], warmup)
        del trainer
        _free(device)
    fast = StepSettings.fastest(device)
    agreement = compare_with_eager(codec, preset, device, sampler, fast, args.agreement_steps)
    return {"codec": args.codec, "batch": preset.batch_size, "crop_seconds": preset.crop_seconds,
            "variants": rows, "agreement": agreement}  # fmt: skip


def compare_with_eager(
    codec, preset: Preset, device, sampler: CropSampler, fast: StepSettings, steps: int
) -> dict:
    """The fast step against the eager one: the first step from the same weights, batch and noise
    (loss terms, gradients), then `steps` steps on the same batches (mean loss of the last 20)."""
    batch = sampler.batch(0)
    noise = torch.randn(batch.features.shape[0], TrialParams().dim, batch.features.shape[2],
                        generator=torch.Generator().manual_seed(0)).to(device)  # fmt: skip
    rows, grads, curves = [], [], []
    for settings in (StepSettings(), fast):
        trainer = _trainer(codec, preset, device, settings)
        rows.append(trainer.train_step_async(batch, noise).double().cpu())
        grads.append(
            torch.cat(
                [p.grad.flatten().double().cpu() for p in trainer.vae.parameters() if p.grad is not None]
            )
        )
        curves.append([trainer.train_step_async(sampler.batch(i), noise)[-1] for i in range(1, steps + 1)])
        curves[-1] = torch.stack(curves[-1]).double().cpu()
        del trainer
        _free(device)
    (eager, fast_row), (g_eager, g_fast) = rows, grads
    return {
        "loss_terms_max_rel_err": float(((fast_row - eager).abs() / eager.abs().clamp_min(1e-12)).max()),
        "grad_rel_err": float((g_fast - g_eager).norm() / g_eager.norm()),
        "trajectory_steps": steps,
        "trajectory_last20_rel_diff": float(abs(curves[1][-20:].mean() / curves[0][-20:].mean() - 1)),
    }


def _trainer(codec: MimiCodec, preset: Preset, device, settings: StepSettings) -> VAETrainer:
    torch.manual_seed(0)
    if settings.compile:
        torch._dynamo.reset()
    vae = BetaVAE(TrialParams.from_config({}, preset).vae_config(preset), copy.deepcopy(codec.decoder))
    return VAETrainer(vae, device, settings)


def _timed_steps(
    trainer: VAETrainer, sampler: CropSampler, steps: int, sync: bool, every: int, device
) -> float:
    """Seconds for `steps` steps, syncing every step (`sync`) or every `every` (the preset's report
    interval) as the trainable does."""
    _synchronise(device)
    started, rows = time.perf_counter(), []
    for _ in range(steps):
        batch = sampler.batch(trainer.step)
        if sync:
            trainer.train_step(batch)
            continue
        rows.append(trainer.train_step_async(batch))
        if len(rows) == every:
            torch.stack(rows).cpu()
            rows = []
    if rows:
        torch.stack(rows).cpu()
    _synchronise(device)
    return time.perf_counter() - started


def _synchronise(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------- files and tables


def _machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "cpus": os.cpu_count(), "torch": torch.__version__}


def _load(path: Path, machine: dict) -> dict:
    """Earlier results from the same kind of device, else a fresh record."""
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("machine", {}).get("device") == machine["device"]:
            return {**old, "machine": machine, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        log.warning("%s holds results of %s; starting a new record for %s", path, old.get("machine"), machine)
    return {"machine": machine, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}


def _bundled_corpus(workdir: Path) -> Path:
    folder = workdir / "speech"
    if not folder.exists():
        write_corpus(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
