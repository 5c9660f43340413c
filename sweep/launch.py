"""The front door: a sweep of beta-VAE trials on Ray Tune, searched by Optuna, tracked in MLflow.

    python -m sweep.launch --space beta_dim --preset smoke                  # CPU, a few minutes
    python -m sweep.launch --space beta_dim --search grid --preset smoke --steps 8
    python -m sweep.launch --space beta_dim_steps --preset paper --data /data/LibriSpeech/train-clean-100
    python -m sweep.launch --space beta_dim --preset paper --data ... --dry-run   # the plan, nothing runs
    python -m sweep.launch --resume beta_dim-smoke-20261125-210305          # after a crash or Ctrl-C

Everything is checked before any compute: a bad flag, an empty data folder, missing codec weights
or a GPU request without a GPU stops here with the problem and the fix, and an unreachable MLflow URI
in the driver, while Ray starts and before any data is touched (one line, exit 2 all the same).
Then the driver starts Ray, the MLflow experiment and the sweep's parent run, and Tune, while it
builds the shared feature cache once, which the trials wait for (sweep/gate.py). At the end it
prints the summary table, the seed-shaped tables of the best trials, the decision-gate verdict, and
how to open each UI.
What every metric, the objective, the constraint and the two gates mean: docs/science.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sweep import exit_without_teardown, spaces
from sweep.config import PRESETS, RECON_MARGIN, SCHEDULERS
from sweep.console import configure_logging, describe, projection
from sweep.errors import UsageError, report_usage_error
from sweep.plan import COMPILE_CHOICES, COMPILE_MIN_STEPS, TRIAL_GPU_MEMORY_GIB, TRIALS_PER_GPU, make_plan
from sweep.throughput import BENCH_FILE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sweep.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="spaces:\n"
        + spaces.describe_spaces()
        + "\n\npresets:\n"
        + "\n".join(f"  {name:15s} {preset.description}" for name, preset in PRESETS.items()),
    )
    what = p.add_argument_group("what to run")
    what.add_argument("--space", help=f"named search space: {', '.join(spaces.SPACES)} (listed below)")
    what.add_argument(
        "--search",
        choices=spaces.SEARCHES,
        help="optuna (default): multi-objective TPE; grid: the exact grid of the space",
    )
    what.add_argument("--preset", help=f"{' | '.join(PRESETS)} (default smoke; listed below)")
    what.add_argument(
        "--num-samples", type=int, help="Optuna: trials (preset default); grid: repeats of the grid"
    )
    what.add_argument(
        "--steps", type=int, help="VAE steps a space's 10k steps stand for (smoke 40, paper 10000)"
    )
    what.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fix a parameter the space does not vary, e.g. --set beta=0.1 (repeatable)",
    )
    what.add_argument(
        "--data",
        help="speech folder (LibriSpeech layout or any wav/flac); "
        "smoke default: the bundled corpus written to ./data/smoke",
    )
    what.add_argument(
        "--codec", help="kyutai/mimi (paper default), a local Mimi folder, random:reduced, random:full"
    )
    what.add_argument("--seed", type=int, default=0, help="data split, initialisation and Optuna's sampler")
    what.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="asha stops weak trials at cheap-battery rungs "
        "(paper default); none runs every trial to the end (smoke default)",
    )
    where = p.add_argument_group("where")
    where.add_argument("--experiment", help="experiment name (default <space>-<preset>-<time>); never reused")
    where.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="NAME",
        help="finish an interrupted sweep (NAME, --experiment, or the latest in --storage)",
    )
    where.add_argument(
        "--storage",
        default="sweep-results",
        help="Tune results: a folder (default ./sweep-results; on a cluster one every node mounts) "
        "or an object-store URI such as s3://bucket/sweeps",
    )
    where.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    where.add_argument(
        "--cache", default=".cache/features", help="feature cache folder (default .cache/features)"
    )
    what.add_argument(
        "--recon-margin",
        type=float,
        metavar="X",
        help="the reconstruction constraint: a trial is feasible when its recon/mel is at most X times the "
        "codec's own (encode -> decode without a bottleneck, measured on the same eval utterances at the "
        f"start of the sweep; default {RECON_MARGIN:g})",
    )
    what.add_argument(
        "--max-recon-mel",
        type=float,
        metavar="MEL",
        help="an absolute bound on recon/mel instead of --recon-margin",
    )
    where.add_argument(
        "--keep-checkpoints",
        type=int,
        default=1,
        metavar="N",
        help="checkpoints kept per trial (default 1: the latest resumable one while a trial trains; "
        "a finished trial keeps its trained weights alone, a stopped one its last weights). N > 1 keeps "
        "the N latest, each with the optimizer state (a paper trial's: ~460 MB), the final one too",
    )
    res = p.add_argument_group("resources and speed (python -m sweep.bench measures each)")
    res.add_argument(
        "--gpus-per-trial",
        type=float,
        help=f"fractional GPUs per trial. Default: {TRIALS_PER_GPU} trials per GPU where its memory "
        f"allows ({TRIAL_GPU_MEMORY_GIB} GiB each), else as many as fit; 0 without a GPU. "
        "--gpus-per-trial 1 turns packing off",
    )
    res.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    res.add_argument(
        "--max-concurrent", type=int, help="trials at a time at most (default: as resources allow)"
    )
    res.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default="auto",
        help="torch.compile each trial's step, replayed as CUDA graphs (5x one trial's steps/s on an "
        "H200; ~45 s first compile, ~8 s once Inductor's cache is warm). auto (default): on a GPU for "
        f"trials of >= {COMPILE_MIN_STEPS} steps",
    )
    res.add_argument(
        "--no-fused-optimizer",
        action="store_true",
        help="use AdamW's multi-tensor kernels instead of its fused one (on a GPU the fused one is default)",
    )
    res.add_argument(
        "--mps",
        action="store_true",
        help="start a CUDA MPS daemon of this sweep's own (stopped when the sweep ends, however it ends), "
        "so that the trials sharing a GPU run their kernels side by side instead of taking turns. "
        "Use it when several trials share each GPU of a machine you have to yourself; it changes how "
        "every process using the daemon shares the GPU, so it is off unless asked. Local Ray only",
    )
    res.add_argument(
        "--without",
        default="",
        metavar="SWITCH[,SWITCH]",
        help="run without speed-ups, to measure what each is worth (sweep.bench --parts sweep does): "
        "compile-cache (every trial compiles its step afresh instead of finding the kernels an earlier one "
        "compiled in Inductor's cache), battery-graphs (the battery's MDN fits step eagerly instead of "
        "replaying a CUDA graph), background-io (MLflow logging, checkpoint writing and the reports "
        "to Tune, which copy checkpoints into its storage, in the training loop instead of beside it), "
        "worker-reuse (each GPU trial starts a worker process of its own "
        "instead of taking over a finished trial's, with its imports, CUDA context and codec), "
        "helper-processes (the driver opens its MLflow run and prepares the trials' data in threads of its "
        "own instead of processes spawned as it starts), mlflow-host (each trial keeps its MLflow run in its "
        "own process instead of a process its worker spawns before the trial's imports), lean-ray-start "
        "(with --mps, Ray also prestarts one idle worker process per CPU as the driver connects, which "
        "the trials' workers, started with the MPS daemon's variables, never use)",
    )
    res.add_argument("--address", help="an existing Ray cluster (or RAY_ADDRESS); default: start Ray here")
    res.add_argument("--no-dashboard", action="store_true", help="do not start Ray's dashboard (local Ray)")
    res.add_argument(
        "--verbose",
        action="store_true",
        help="Ray Tune's status tables and every library's INFO lines; by default the console has one line "
        "per trial event, then the summary",
    )
    res.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="address Ray's dashboard binds to (default 127.0.0.1). It runs code for whoever reaches it: "
        "anything else prints a warning; prefer an ssh tunnel",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial plan, the resource arithmetic and (on a GPU) the projected wall time; "
        "run nothing",
    )
    p.add_argument(
        "--bench-file",
        default=str(BENCH_FILE),
        help="the rates --dry-run projects from (written by python -m sweep.bench; default %(default)s)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    workdir = Path.cwd().resolve()
    try:
        plan = make_plan(args, workdir)
        if args.dry_run:
            import torch

            cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
            print(describe(plan, cpus, gpus))
            name = torch.cuda.get_device_name(0) if gpus else None
            print(projection(plan, cpus, gpus, Path(args.bench_file).resolve(), name))
            print("dry run: nothing was started.")
            return 0
        from sweep.driver import run_sweep

        return run_sweep(
            plan,
            resume=args.resume is not None,
            address=args.address,
            dashboard=not args.no_dashboard,
            dashboard_host=args.dashboard_host,
            verbose=args.verbose,
        )
    except UsageError as err:
        return report_usage_error(err)


if __name__ == "__main__":
    exit_without_teardown(main())
