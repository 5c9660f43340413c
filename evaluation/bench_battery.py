"""Time the diagnostics battery at a given scale on synthetic latents (no codec, no VAE needed).

    python -m evaluation.bench_battery --device cuda    # paper scale: 5000 x 12 s, D = 32
    python -m evaluation.bench_battery --utterances 40 --seconds 8 --hidden 64    # tiny, CPU

Latents come from a stable linear-Gaussian process (the one the closed-form tests use), which is
what the battery's cost depends on: frame count, D, the MDN sizes and training steps. 10 % of the
utterances are the eval split, as with a speaker-disjoint split of LibriSpeech. Prints the time
per phase (fit, scoring) and writes JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from evaluation.diagnostics import BatteryConfig, run_battery
from models.spec import FRAME_RATE


def linear_gaussian_latents(utterances: int, frames: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    """`utterances` (frames, dim) float32 sequences of z_{t+1} = A z_t + e with a random stable A."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a = q * rng.uniform(0.5, 0.95, size=dim)  # orthogonal times contraction: spectral radius < 1
    z = rng.standard_normal((utterances, dim))
    out = np.empty((utterances, frames, dim), dtype=np.float32)
    for t in range(frames):
        z = z @ a.T + 0.3 * rng.standard_normal((utterances, dim))
        out[:, t] = z
    return list(out)


def time_battery(utterances: int, seconds: float, dim: int, config: BatteryConfig) -> dict:
    frames = int(seconds * FRAME_RATE)
    latents = linear_gaussian_latents(utterances, frames, dim, seed=config.seed)
    n_eval = max(1, utterances // 10)
    train, evaluation = latents[n_eval:], latents[:n_eval]
    _synchronise(config.device)
    started = time.perf_counter()
    result = run_battery(train, evaluation, config)
    _synchronise(config.device)
    total = time.perf_counter() - started
    return {
        "utterances": utterances,
        "frames_per_utterance": frames,
        "train_frames": frames * len(train),
        "dim": dim,
        "device": config.device,
        "device_name": torch.cuda.get_device_name() if config.device.startswith("cuda") else "cpu",
        "hidden": list(config.hidden),
        "max_steps": config.steps,
        "seconds_total": total,
        "seconds_by_phase": result.seconds,
        "mdn_steps": {name: info.get("steps") for name, info in result.fit_info.items()},
        "rollout_k4": result.metrics["rollout/k4"],
        "teacher_k1": result.metrics["teacher/k1"],
    }


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=12.0, help="utterance length (LibriSpeech: ~12 s)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=1024, help="MDN hidden width (2 layers)")
    p.add_argument("--steps", type=int, default=BatteryConfig.steps, help="MDN training steps at most")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    config = BatteryConfig(hidden=(args.hidden,) * 2, steps=args.steps, device=args.device)
    figures = time_battery(args.utterances, args.seconds, args.dim, config)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
