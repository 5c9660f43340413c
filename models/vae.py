"""The beta-VAE on top of Mimi's latents (docs/science.md §2.3).

    h (B, 512, F)  --Conv1d(512, D)-->  mu, logvar (B, D, F)  --reparameterise-->  z (B, D, F)
    z  --Conv1d(D, 512)-->  (B, 512, F)  --Mimi decoder (trainable)-->  audio (B, 1, F * 1920)

h are the frozen encoder's latents, read from the feature cache, so a training step runs the
decoder side only. The 1x1 projections follow Kyutai's Pocket TTS (a 32-d latent fed to a
Mimi-style decoder through Conv1d(32 -> 512, kernel 1)).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.spec import VAEConfig  # noqa: F401 -- a trial's VAE config, re-exported beside the VAE

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite in bf16/fp32; far outside any useful posterior


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
