"""Loss terms of the beta-VAE (docs/science.md §2.3). Each returns a scalar tensor.

Shapes: audio (B, 1, N); latents (B, D, F) with F frames at 12.5 Hz.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.spec import STFT_WINDOWS

_LOG_FLOOR = 1e-5  # magnitude floor before the log, so silence gives finite log-magnitudes


def multiscale_stft_loss(pred: torch.Tensor, target: torch.Tensor, windows=STFT_WINDOWS) -> torch.Tensor:
    """Mean over window sizes of L1(|S|) + L1(log |S|) between STFT magnitudes (hop = window / 4,
    Hann window). Computed in fp32 whatever the autocast dtype: bf16 FFTs are too coarse.
    Prediction and target go through one STFT call per window (half the launches)."""
    pred, target = pred.float().flatten(0, 1), target.float().flatten(0, 1)  # (B, N)
    signals = torch.cat([pred, target])  # (2B, N)
    total = pred.new_zeros(())
    for n_fft in windows:
        window = torch.hann_window(n_fft, device=pred.device)
        spec = torch.stft(signals, n_fft=n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
        mag_p, mag_t = spec.abs().chunk(2)  # (B, n_fft // 2 + 1, frames) each
        total = total + F.l1_loss(mag_p, mag_t)
        total = total + F.l1_loss(mag_p.clamp_min(_LOG_FLOOR).log(), mag_t.clamp_min(_LOG_FLOOR).log())
    return total / len(windows)


def waveform_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute sample error."""
    return F.l1_loss(pred.float(), target.float())


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats per frame: summed over D, averaged over (B, F)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def smoothness_loss(latents: torch.Tensor) -> torch.Tensor:
    """Mean squared frame-to-frame difference of (B, D, F) latents (mean over B, D and F - 1)."""
    return (latents[..., 1:] - latents[..., :-1]).float().square().mean()


def context_windows(latents: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (B, D, F) latents into (B * (F - W), W * D) contexts and (B * (F - W), D) next frames.

    Context row r holds frames t - W + 1 .. t (oldest first, each frame's D values together);
    its target is frame t + 1.
    """
    b, d, f = latents.shape
    if f <= context:
        raise ValueError(f"need more than {context} frames for a {context}-frame context, got {f}.")
    windows = latents.unfold(2, context + 1, 1)  # (B, D, F - W, W + 1)
    windows = windows.permute(0, 2, 3, 1)  # (B, F - W, W + 1, D)
    ctx = windows[:, :, :context].reshape(b * (f - context), context * d)
    nxt = windows[:, :, context].reshape(b * (f - context), d)
    return ctx, nxt


def delta_prediction_loss(predictor: torch.nn.Module, latents: torch.Tensor, context: int) -> torch.Tensor:
    """L_pred as the group's code defines it: the mean squared error of `predictor`'s guess of the
    change z_{t+1} - z_t from the W frames up to t, on the sampled (B, D, F) latents z (so its gradient
    reaches the VAE through the reparameterisation, logvar included)."""
    contexts, following = context_windows(latents.float(), context)  # (N, W * D), (N, D)
    newest = contexts[:, -latents.shape[1] :]  # frame t: each row's last D values
    return F.mse_loss(predictor(contexts), following - newest)
