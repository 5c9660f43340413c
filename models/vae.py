"""The beta-VAE on top of Mimi's latents (docs/science.md §2.3).

    h (B, 512, F)  --Conv1d(512, D)-->  mu, logvar (B, D, F)  --reparameterise-->  z (B, D, F)
    z  --Conv1d(D, 512)-->  (B, 512, F)  --Mimi decoder (trainable)-->  audio (B, 1, F * 1920)

h are the frozen encoder's latents, read from the feature cache, so a training step runs the
decoder side only. The 1x1 projections follow Kyutai's Pocket TTS (a 32-d latent fed to a
Mimi-style decoder through Conv1d(32 -> 512, kernel 1)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models.losses import STFT_WINDOWS

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in bf16/fp32; far outside any useful posterior


@dataclass(frozen=True)
class VAEConfig:
    """A trial's VAE identity: bottleneck, loss weights, optimiser settings."""

    latent_dim: int = 32
    beta: float = 0.01
    lambda_smooth: float = 0.0
    lambda_pred: float = 0.0
    lr: float = 1e-4
    pred_lr: float = 1e-3
    pred_context: int = 8
    pred_hidden: int = 256
    stft_windows: tuple[int, ...] = STFT_WINDOWS
    grad_clip: float | None = None

    def __post_init__(self):
        checks = [
            (self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}"),
            (
                math.isfinite(self.beta) and self.beta >= 0,
                f"beta must be a finite number >= 0, got {self.beta}",
            ),
            (self.lambda_smooth >= 0, f"lambda_smooth must be >= 0, got {self.lambda_smooth}"),
            (self.lambda_pred >= 0, f"lambda_pred must be >= 0, got {self.lambda_pred}"),
            (
                self.lr > 0 and self.pred_lr > 0,
                f"learning rates must be > 0, got lr={self.lr}, pred_lr={self.pred_lr}",
            ),
            (self.pred_context >= 1, f"pred_context must be >= 1, got {self.pred_context}"),
            (len(self.stft_windows) > 0, "stft_windows must name at least one window size"),
            (
                self.grad_clip is None or self.grad_clip > 0,
                f"grad_clip must be > 0 or None, got {self.grad_clip}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stft_windows"] = list(self.stft_windows)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> VAEConfig:
        values = dict(values)
        values["stft_windows"] = tuple(values.get("stft_windows", STFT_WINDOWS))
        return cls(**values)


class BetaVAE(nn.Module):
    """Bottleneck + decoder. `decoder` maps (B, 512, F) latents to (B, 1, F * 1920) audio
    (a `MimiCodec`'s decode, or any module with that contract in tests)."""

    def __init__(self, config: VAEConfig, decoder: nn.Module, codec_dim: int = 512):
        super().__init__()
        self.config = config
        self.to_mu = nn.Conv1d(codec_dim, config.latent_dim, kernel_size=1)
        self.to_logvar = nn.Conv1d(codec_dim, config.latent_dim, kernel_size=1)
        self.from_latent = nn.Conv1d(config.latent_dim, codec_dim, kernel_size=1)
        self.decoder = decoder

    def posterior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 512, F) codec latents -> mu, logvar, each (B, D, F)."""
        logvar = self.to_logvar(features).clamp(*LOGVAR_RANGE)
        return self.to_mu(features), logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, F) -> (B, 1, F * 1920)."""
        return self.decoder(self.from_latent(z))

    def forward(self, features: torch.Tensor, sample: bool = True, noise: torch.Tensor | None = None):
        """(B, 512, F) -> (audio (B, 1, F * 1920), mu, logvar, z); z = mu when sample is False.
        `noise` (B, D, F): the standard normal draw of the reparameterisation (fresh when None)."""
        mu, logvar = self.posterior(features)
        if sample:
            noise = torch.randn_like(mu) if noise is None else noise.to(mu.dtype)
            z = mu + noise * (0.5 * logvar).exp()
        else:
            z = mu
        return self.decode(z), mu, logvar, z


class LatentPredictor(nn.Module):
    """The co-trained predictor of L_pred: W frames of D-d latents -> the change to the next frame,
    z_{t+1} - z_t (models.losses.delta_prediction_loss). Two linear layers with a GELU between
    (hidden 256 by default)."""

    def __init__(self, latent_dim: int, context: int = 8, hidden: int = 256):
        super().__init__()
        self.context = context
        self.net = nn.Sequential(
            nn.Linear(context * latent_dim, hidden), nn.GELU(), nn.Linear(hidden, latent_dim)
        )

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        """(N, W * D) contexts, oldest frame first -> (N, D) predicted changes."""
        return self.net(contexts)


@torch.no_grad()
def posterior_means(vae: BetaVAE, features, device: torch.device | str = "cpu") -> list:
    """Posterior means of whole utterances: each (F, 512) codec-latent array -> (F, D) float32 numpy.
    These are the latents the diagnostics model (docs/science.md §2.4). Computed in fp32 in eval mode."""
    was_training = vae.training
    vae.eval()
    out = []
    for feats in features:
        h = torch.tensor(np.asarray(feats), dtype=torch.float32, device=device).T[None]  # (1, 512, F)
        mu, _ = vae.posterior(h)
        out.append(mu[0].T.float().cpu().numpy())  # (F, D)
    vae.train(was_training)
    return out
