"""The diagnostics battery (docs/science.md §3): how far can a dynamics model roll out in a latent space?

    result = run_battery(train, eval, BatteryConfig(device="cuda"))
    result.rollout_table     # h, teacher, rollout, gap, finite (+ raw NLLs): one row per horizon
    result.injection         # mode, cos, state_err, state_err_rel, dnll: one row per injection mode
    result.metrics           # {"teacher/k1": ..., "rollout/k4": ..., "rollout/horizon": ..., ...}

`train` and `eval` are sequences of (T_u, D) arrays, one per utterance (posterior means of the
VAE). Models are fitted on `train`, scored on `eval`. All NLLs are nats per frame summed over D,
scored in float64; a delta-NLL is the model's NLL minus p0's on the same frame (negative =
informative). Non-finite values are reported as they are, never clipped or raised.

Definitions (W = context, H = horizons):
- teacher_h: MDN_h(z_{t+h} | true z_{t-W+1..t}).
- rollout_h: MDN_1(z_{t+h} | context of true frames up to t, then MDN_1's own h - 1 predictions,
  fed back as the mixture mean, or a seeded sample). rollout_1 is teacher_1 by construction.
- gap_h = rollout_h - teacher_h. finite: as the research's float32 arithmetic would see it: every
  fed-back state and every position's rollout NLL is within float32's range (|x| <= 3.4e38, no NaN);
  the float64 value is reported beside the flag, never clipped.
- horizon: the largest h whose rollout_h is finite (as above) and negative (0 if none).
- injection: MDN_1 for `injection_steps` steps from each position in four modes (A_teacher: true
  state; B_noise: true state + noise of the teacher-forced one-step error's per-dim std; C_last:
  true state but the newest frame is the model's prediction; D_rollout: free-running).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd
import torch

from models.mdn import MDN, FitConfig, fit_mdn, fit_mdns, gather, valid_starts
from models.runtime import private_rng

INJECTION_MODES = ("A_teacher", "B_noise", "C_last", "D_rollout")
INJECTION_METRICS = ("cos", "state_err", "state_err_rel", "dnll")
FEEDBACK_CHOICES = ("mean", "sample")
_SCORE_CHUNK = 8192
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class BatteryConfig(FitConfig):
    """The battery's settings: the MDNs' training (FitConfig's fields: steps, batch_size, lr, weight_decay,
    eval_every, patience, holdout_fraction, seed) and what it fits and scores."""

    # MDN_h's AdamW step size; None scales it with the width: 1e-3 up to 256 wide, 1e-3 x 256 / width
    # beyond (2.5e-4 at 1024, where 1e-3 overshoots and stops early ~0.02 nats/dim short: docs/science.md
    # §3). p0 (no MLP) keeps its own.
    lr: float | None = None
    p0_lr: float = 1e-3
    context: int = 8  # W
    components: int = 8  # M
    hidden: tuple[int, ...] = (1024, 1024)
    horizons: tuple[int, ...] = (1, 2, 4, 8)
    feedback: str = "mean"
    injection_steps: int = 16
    max_positions: int = 20_000  # eval positions scored, evenly spaced; bounds the cost at paper scale
    device: str = "cpu"

    def __post_init__(self):
        h = self.horizons
        if not h or list(h) != sorted(set(h)) or h[0] < 1:
            raise ValueError(f"horizons must be distinct positive integers in increasing order, got {h}.")
        if h[0] != 1:
            raise ValueError(f"horizons must include 1 (rollouts feed MDN_1 back), got {h}.")
        if self.feedback not in FEEDBACK_CHOICES:
            raise ValueError(f"feedback {self.feedback!r} is not one of {FEEDBACK_CHOICES}.")
        if not (self.mdn_lr() > 0 and self.p0_lr > 0):
            raise ValueError(f"lr and p0_lr must be > 0, got {self.lr}, {self.p0_lr}.")
        if self.context < 1 or self.components < 1 or self.injection_steps < 1 or self.max_positions < 1:
            raise ValueError(
                f"context, components, injection_steps and max_positions must be >= 1, got {self.context}, "
                f"{self.components}, {self.injection_steps}, {self.max_positions}."
            )
        self.fit_config()  # validates the training settings too

    def mdn_lr(self) -> float:
        return self.lr if self.lr is not None else 1e-3 * min(1.0, 256 / max(self.hidden, default=256))

    def fit_config(self) -> FitConfig:
        """MDN_h's training settings (p0's: replace(..., lr=p0_lr))."""
        shared = {f.name: getattr(self, f.name) for f in fields(FitConfig)}
        return FitConfig(**{**shared, "lr": self.mdn_lr()})


@dataclass
class BatteryResult:
    rollout_table: pd.DataFrame
    injection: pd.DataFrame
    injection_curves: pd.DataFrame  # mode, step (1..K), cos, state_err, state_err_rel, dnll
    metrics: dict[str, float]
    p0_nll: float  # mean NLL of eval frames under p0, nats per frame
    models: dict[str, MDN] = field(repr=False)  # "p0", "h1", "h2", ...: fitted, float32, eval mode
    fit_info: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def run_battery(
    train: Sequence[np.ndarray], eval: Sequence[np.ndarray], config: BatteryConfig = BatteryConfig()
) -> BatteryResult:
    """Fit p0 and MDN_h on `train`, score teacher-forced, rollout and injection diagnostics on `eval`."""
    started = time.perf_counter()
    device = torch.device(config.device)
    dim = _check_sequences(train, eval, config)
    train_frames, train_lengths = _concat(train, device, torch.float32)
    models, fit_info = fit_models(train_frames, train_lengths, dim, config)
    fitted = time.perf_counter()
    result = score_battery(models, eval, config)
    result.fit_info = fit_info
    result.seconds = {"fit": fitted - started, "score": time.perf_counter() - fitted}
    result.seconds["total"] = result.seconds["fit"] + result.seconds["score"]
    return result


def fit_models(frames: torch.Tensor, lengths: list[int], dim: int, config: BatteryConfig):
    """p0 and one MDN per horizon, each trained with teacher forcing on (T, D) float32 frames
    (the horizons' MDNs side by side: fit_mdns). The weights start from config.seed on a generator of
    their own: running the battery leaves the caller's random stream (a training trial's) untouched."""
    fit = config.fit_config()
    models, info = {}, {}
    horizons = list(config.horizons)
    with private_rng(config.seed):
        p0 = MDN(dim, context=0, components=config.components).to(frames.device)
        mdns = [
            MDN(dim, config.context, config.components, config.hidden).to(frames.device) for _ in horizons
        ]
    p0_fit = replace(fit, lr=config.p0_lr)
    info["p0"] = fit_mdn(p0, frames, valid_starts(lengths, 0, 0, frames.device), 0, p0_fit)
    models["p0"] = p0
    starts = [valid_starts(lengths, config.context, h, frames.device) for h in horizons]
    for h, mdn, result in zip(horizons, mdns, fit_mdns(mdns, frames, starts, horizons, fit), strict=True):
        info[f"h{h}"], models[f"h{h}"] = result, mdn
    return models, info


@torch.no_grad()
def score_battery(models: dict[str, MDN], eval: Sequence[np.ndarray], config: BatteryConfig) -> BatteryResult:
    """All eval-side numbers from fitted models (float64 copies of them)."""
    device = next(models["p0"].parameters()).device
    scorers = {name: copy.deepcopy(m).double().eval() for name, m in models.items()}
    frames, lengths = _concat(eval, device, torch.float64)
    no_context = frames[:, None, :][:, :0]  # (T, 0, D)
    p0_nll = _chunked_nll(scorers["p0"], no_context, frames)  # (T,)
    table = rollout_table(scorers, frames, lengths, p0_nll, config)
    curves = injection_curves(scorers, frames, lengths, p0_nll, config)
    injection = curves.groupby("mode", sort=False)[list(INJECTION_METRICS)].mean().reset_index()
    metrics = battery_metrics(table, injection)
    metrics["p0/nll"] = float(p0_nll.mean())
    return BatteryResult(table, injection, curves, metrics, metrics["p0/nll"], models)


def rollout_table(scorers, frames, lengths, p0_nll, config: BatteryConfig) -> pd.DataFrame:
    """One row per horizon: teacher, rollout, gap (delta-NLLs), finite, and the raw NLLs."""
    horizons, w = config.horizons, config.context
    starts = _spread(valid_starts(lengths, w, horizons[-1], frames.device), config.max_positions)
    contexts, _ = gather(frames, starts, w, 0)
    mdn1 = scorers["h1"]
    generator = torch.Generator(device=frames.device).manual_seed(config.seed)
    rows, state, states_finite = [], contexts, True
    for k in range(1, horizons[-1] + 1):
        target = frames[starts + k]
        if k in horizons:
            teacher = _chunked_nll(scorers[f"h{k}"], contexts, target)
            rollout = _chunked_nll(mdn1, state, target)  # k = 1: state is the true context
            base = p0_nll[starts + k]
            t_val, r_val = _mean(teacher - base), _mean(rollout - base)
            rows.append({
                "h": k, "teacher": t_val, "rollout": r_val, "gap": r_val - t_val,
                "finite": states_finite and within_float32(rollout),
                "teacher_nll": _mean(teacher), "rollout_nll": _mean(rollout), "positions": len(starts),
            })  # fmt: skip
        if k < horizons[-1]:
            state = _feed_back(mdn1, state, config.feedback, generator)
            states_finite = states_finite and within_float32(state)
    return pd.DataFrame(rows)


def injection_curves(scorers, frames, lengths, p0_nll, config: BatteryConfig) -> pd.DataFrame:
    """Per mode and step k = 1..K: cos, state_err, state_err_rel, dnll (means over positions)."""
    w, steps = config.context, config.injection_steps
    # t >= W so that C_last's prediction of frame t has a full true context before it.
    starts = valid_starts(lengths, w + 1, steps, frames.device)
    starts = _spread(starts, config.max_positions)
    mdn1 = scorers["h1"]
    generator = torch.Generator(device=frames.device).manual_seed(config.seed + 1)
    rms = frames.square().sum(dim=1).mean().sqrt().item()
    true_ctx = [gather(frames, starts + k - 1, w, 0)[0] for k in range(0, steps + 1)]  # [k]: ends at t+k-1
    err_std = (mdn1.mean(true_ctx[1]) - frames[starts + 1]).std(dim=0)  # (D,) teacher-forced one-step error
    free = true_ctx[1]
    rows = []
    for k in range(1, steps + 1):
        target, previous = frames[starts + k], frames[starts + k - 1]
        last_guess = _feed_back(mdn1, true_ctx[k - 1], config.feedback, generator)[:, -1:]
        noise = torch.randn(true_ctx[k].shape, generator=generator, device=frames.device, dtype=frames.dtype)
        states = {
            "A_teacher": true_ctx[k],
            "B_noise": true_ctx[k] + noise * err_std,
            "C_last": torch.cat([true_ctx[k][:, :-1], last_guess], dim=1),
            "D_rollout": free,
        }
        for mode, state in states.items():
            prediction = mdn1.mean(state)
            cos = torch.nn.functional.cosine_similarity(prediction - state[:, -1], target - previous, dim=1)
            err = (state - true_ctx[k]).norm(dim=2).mean(dim=1)  # (N,) mean L2 over the W state frames
            dnll = mdn1.nll(state, target) - p0_nll[starts + k]
            rows.append({
                "mode": mode, "step": k, "cos": _mean(cos), "state_err": _mean(err),
                "state_err_rel": _mean(err) / rms, "dnll": _mean(dnll),
            })  # fmt: skip
        free = _feed_back(mdn1, free, config.feedback, generator)
    return pd.DataFrame(rows)


def battery_metrics(table: pd.DataFrame, injection: pd.DataFrame) -> dict[str, float]:
    """The flat, namespaced metrics of one battery."""
    metrics: dict[str, float] = {}
    for row in table.itertuples():
        metrics[f"teacher/k{row.h}"] = row.teacher
        metrics[f"rollout/k{row.h}"] = row.rollout
        metrics[f"gap/k{row.h}"] = row.gap
        metrics[f"rollout/finite/k{row.h}"] = float(row.finite)
    metrics["rollout/horizon"] = float(rollout_horizon(table))
    metrics["eval/dnll"] = metrics["teacher/k1"]
    for row in injection.itertuples():
        for name in INJECTION_METRICS:
            metrics[f"injection/{row.mode}/{name}"] = float(getattr(row, name))
    return metrics


def rollout_horizon(table: pd.DataFrame) -> int:
    """The largest h whose rollout delta-NLL is finite and negative; 0 if none is."""
    ok = table[table["finite"] & (table["rollout"] < 0)]
    return int(ok["h"].max()) if len(ok) else 0


def within_float32(values: torch.Tensor) -> bool:
    """Whether float32 arithmetic, the research's, would still hold `values`: no NaN, nothing beyond
    its range (3.4e38), where it overflows to inf. Scoring is float64, which holds far more: a rollout
    state of 1e24 scores a finite 1e48 there and is counted non-finite here, as in the research."""
    return bool((values.abs() <= FLOAT32_MAX).all())  # NaN compares False


def _feed_back(mdn: MDN, state: torch.Tensor, feedback: str, generator: torch.Generator) -> torch.Tensor:
    """Shift the (N, W, D) state by one frame, appending MDN_1's prediction (mean or sample)."""
    nxt = mdn.mean(state) if feedback == "mean" else mdn.sample(state, generator)
    return torch.cat([state[:, 1:], nxt[:, None, :]], dim=1)


def _chunked_nll(model: MDN, contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """model.nll over fixed-size chunks: bounded memory, and the same arithmetic for the same inputs."""
    parts = [
        model.nll(contexts[i : i + _SCORE_CHUNK], targets[i : i + _SCORE_CHUNK])
        for i in range(0, len(targets), _SCORE_CHUNK)
    ]
    return torch.cat(parts) if parts else targets.new_zeros(0)


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else math.nan


def _spread(starts: torch.Tensor, limit: int) -> torch.Tensor:
    """At most `limit` of `starts`, evenly spaced (deterministic)."""
    if len(starts) <= limit:
        return starts
    pick = torch.linspace(0, len(starts) - 1, limit, device=starts.device).round().long()
    return starts[pick]


def _concat(sequences: Sequence[np.ndarray], device, dtype) -> tuple[torch.Tensor, list[int]]:
    frames = torch.cat([torch.as_tensor(np.asarray(s), dtype=dtype) for s in sequences]).to(device)
    return frames, [len(s) for s in sequences]


def _check_sequences(train, eval, config: BatteryConfig) -> int:
    """The latent dim D; ValueError for inputs the battery cannot use."""
    for name, seqs in (("train", train), ("eval", eval)):
        if len(seqs) == 0:
            raise ValueError(f"{name} has no utterances; pass a list of (T_u, D) latent arrays.")
        bad = [i for i, s in enumerate(seqs) if np.ndim(s) != 2]
        if bad:
            raise ValueError(
                f"{name}[{bad[0]}] has shape {np.shape(seqs[bad[0]])}; every utterance must be (T_u, D)."
            )
        if not all(np.isfinite(s).all() for s in seqs):
            raise ValueError(f"{name} latents contain NaN or inf; the VAE that made them has diverged.")
    dims = {np.shape(s)[1] for s in list(train) + list(eval)}
    if len(dims) != 1:
        raise ValueError(f"all utterances must share one latent dim D, found {sorted(dims)}.")
    need = config.context + max(config.horizons[-1], config.injection_steps + 1)
    if not any(len(s) >= need for s in eval):
        raise ValueError(
            f"no eval utterance has the {need} frames the battery needs (context {config.context} + "
            f"horizon/injection steps); use longer utterances or smaller horizons/injection_steps."
        )
    if sum(max(0, len(s) - config.context - config.horizons[-1] + 1) for s in train) < 20:
        raise ValueError(
            f"train holds too few windows of {config.context} + {config.horizons[-1]} frames to fit MDNs."
        )
    return dims.pop()
