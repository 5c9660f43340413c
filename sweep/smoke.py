"""Smoke run of one trial, start to end, on the bundled speech and the CPU.

    python -m sweep.smoke                        # ~45 s on 2 cores
    python -m sweep.smoke --steps 200 --dim 16 --beta 0.1 --codec random:reduced

What one trial runs, without Ray, Optuna or MLflow, to check an install or a codec in a minute: the
corpus, the shared feature cache (features.prepare_data, as the driver prepares it), VAE training
steps and a checkpoint, then the diagnostics battery on the VAE's posterior means, reconstruction
metrics and rollout WAVs, and prints the report and timings. A sweep is `python -m sweep.launch`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from models.runtime import pick_device
from models.spec import CodecSpec, VAEConfig
from models.training import VAETrainer, save_checkpoint
from sweep.config import PRESETS, TrialParams, trial_name
from sweep.data import DataError
from sweep.errors import report_usage_error
from sweep.features import CropSampler, prepare_data
from sweep.trial import Diverged, TrialContext, build_trial, evaluate, load_codec, train

log = logging.getLogger("sweep.smoke")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", default="data/smoke", help="speech folder; written from the bundled corpus if missing"
    )
    p.add_argument(
        "--codec", default="random:reduced", help="random:reduced | random:full | kyutai/mimi | a folder"
    )
    p.add_argument(
        "--cache", default=".cache/features", help="feature cache folder (default .cache/features)"
    )
    p.add_argument("--out", default="runs/smoke", help="where the checkpoint goes (default runs/smoke)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop-seconds", type=float, default=4.0)
    p.add_argument("--dim", type=int, default=TrialParams.dim, help="bottleneck size D")
    p.add_argument("--beta", type=float, default=TrialParams.beta)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    smoke = PRESETS["smoke"]  # its battery: plumbing-sized
    p.add_argument("--battery-hidden", type=int, default=smoke.battery_hidden, help="MDN width (paper: 1024)")
    p.add_argument("--battery-steps", type=int, default=smoke.battery_mdn_steps, help="MDN steps, paper 3000")
    p.add_argument(
        "--audio-utterances", type=int, default=2, help="eval utterances to write rollout WAVs for"
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.crop_seconds <= 0:
        p.error("--steps and --batch-size must be >= 1 and --crop-seconds > 0")
    return args


def run(args: argparse.Namespace) -> dict:
    """One trial as the sweep runs it (sweep/trial.py's pieces), without Ray, Optuna or MLflow."""
    VAEConfig(latent_dim=args.dim, beta=args.beta, lr=args.lr)  # validates before any compute
    spec = CodecSpec.parse(args.codec)
    device = pick_device(args.device)
    codec = load_codec(args.codec)
    started = time.perf_counter()
    prepared = prepare_data(
        args.data, codec, args.cache, min_seconds=args.crop_seconds, seed=args.seed, device=device,
        write_bundled=True,
    )  # fmt: skip
    cache_s = time.perf_counter() - started
    preset = PRESETS["smoke"].with_overrides(
        steps_per_10k=args.steps, batch_size=args.batch_size, lr=args.lr, crop_seconds=args.crop_seconds,
        battery_hidden=args.battery_hidden, battery_mdn_steps=args.battery_steps,
        audio_utterances=args.audio_utterances,
    )  # fmt: skip
    context = TrialContext(
        preset=preset, cache_dir=str(prepared.cache.directory.resolve()),
        train_ids=tuple(prepared.train_ids), eval_ids=tuple(prepared.eval_ids), codec=args.codec,
        device=str(device), threads=torch.get_num_threads(), seed=args.seed, varied=("beta", "dim"),
        probes=False,
    )  # fmt: skip
    trial = build_trial({"beta": args.beta, "dim": args.dim}, context, trial_name(0))
    crops = trial.sampler.crop_frames  # the trial's crop length, for held-out crops of the same shape
    held_out = CropSampler(trial.cache, prepared.eval_ids, crops, args.batch_size, seed=args.seed + 1)
    eval_batch = held_out.batch(0)
    before = _eval_recon(trial.trainer, eval_batch)
    started = time.perf_counter()
    try:
        for interval in train(trial, preset):
            curves = "  ".join(f"{k}={v:.4g}" for k, v in interval.curves.items())
            log.info("step %4d  %s", interval.step, curves)
    except Diverged as diverged:
        raise RuntimeError(str(diverged)) from None
    step_s = (time.perf_counter() - started) / args.steps
    after = _eval_recon(trial.trainer, eval_batch)
    checkpoint = save_checkpoint(
        trial.trainer, Path(args.out) / "checkpoint", {"codec": spec.describe(), "seed": trial.params.seed}
    )
    evaluation = evaluate(trial, context, Path(args.out))
    return {
        "utterances": len(trial.cache),
        "train_utterances": len(prepared.train_ids),
        "eval_utterances": len(prepared.eval_ids),
        "cache_seconds": cache_s,
        "seconds_per_step": step_s,
        "eval_recon_before": before,
        "eval_recon_after": after,
        "checkpoint": str(checkpoint),
        "battery_seconds": evaluation.seconds["battery"],
        "audio_seconds": evaluation.seconds["recon_audio"],
        "report": evaluation.report,
        "wavs": len(evaluation.wavs),
        "audio_dir": str(Path(args.out) / "audio"),
    }


@torch.no_grad()
def _eval_recon(trainer: VAETrainer, batch) -> float:
    trainer.vae.eval()
    recon = trainer.loss_terms(batch.to(trainer.device))["recon"].item()
    trainer.vae.train()
    return recon


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        summary = run(args)
    except (DataError, ValueError) as err:
        return report_usage_error(err)
    print("\n" + summary["report"])
    print(
        f"smoke run done: {summary['utterances']} utterances "
        f"({summary['train_utterances']} train / {summary['eval_utterances']} eval, speaker-disjoint)\n"
        f"  feature cache:   {summary['cache_seconds']:.1f} s\n"
        f"  VAE step:        {summary['seconds_per_step']:.3f} s "
        f"(batch {args.batch_size} x {args.crop_seconds:g} s)\n"
        f"  eval recon loss: {summary['eval_recon_before']:.3f} -> {summary['eval_recon_after']:.3f}\n"
        f"  checkpoint:      {summary['checkpoint']}\n"
        f"  battery:         {summary['battery_seconds']:.1f} s (MDN fits + scoring, CPU)\n"
        f"  recon + audio:   {summary['audio_seconds']:.1f} s, "
        f"{summary['wavs']} WAVs in {summary['audio_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
