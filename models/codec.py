"""The Mimi codec behind a small interface (moshi's `CompressionModel`): encode to the 512-d
pre-quantizer latents, decode them back to audio.

    codec = MimiCodec.from_spec(CodecSpec.parse("random:reduced"))   # tiny, CPU tests / smoke
    codec = MimiCodec.from_spec(CodecSpec.parse("kyutai/mimi"))      # pretrained, pinned revision
    z = codec.encode(audio)     # (B, 1, N) -> (B, 512, ceil(N / 1920))
    y = codec.decode(z)         # (B, 512, F) -> (B, 1, F * 1920)

The encoder is frozen (no gradients, always in eval mode); the decoder is trainable, since the
beta-VAE fine-tunes it. Pretrained weights come from the Hugging Face cache or a local folder;
where neither has them and the hub cannot be reached, loading fails at once with the ways to get
them (never a hang). `trust_remote_code` is never used: Mimi is part of transformers itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import MimiConfig, MimiModel
from transformers.models.mimi.modeling_mimi import MimiConv1d

from models.runtime import private_rng
from models.spec import (  # noqa: F401 -- the codec's spec and shapes, re-exported beside the codec
    CODEC_DIM,
    CODEC_SIZES,
    FRAME_RATE,
    FRAME_SIZE,
    MIMI_MODEL_ID,
    MIMI_REVISION,
    SAMPLE_RATE,
    CodecSpec,
    CodecWeightsMissing,
    check_local_folder,
    hub_unreachable_reason,
    missing_weights_message,
)

log = logging.getLogger(__name__)


class MimiCodec(nn.Module):
    """Frozen Mimi encoder + trainable Mimi decoder on the continuous (pre-quantizer) latents."""

    sample_rate = SAMPLE_RATE
    frame_rate = FRAME_RATE
    frame_size = FRAME_SIZE
    codec_dim = CODEC_DIM

    def __init__(self, model: MimiModel, spec: CodecSpec):
        super().__init__()
        config = model.config
        got = (config.sampling_rate, config.frame_rate, config.hidden_size)
        if got != (self.sample_rate, self.frame_rate, self.codec_dim):
            raise ValueError(
                f"codec {spec.describe()} has (sample rate, frame rate, latent dim) {got}; "
                f"this project expects Mimi's {(self.sample_rate, self.frame_rate, self.codec_dim)}."
            )
        self.spec = spec
        self.config = config
        use_integer_padding(model)
        self.encoder = model.encoder  # MimiEncoderModel: SEANet + transformer + downsample
        self.decoder = LatentDecoder(model.decoder)
        # The quantizer is not used: the VAE works on the latents before it.
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    @classmethod
    def from_spec(cls, spec: CodecSpec, cache_dir: str | os.PathLike | None = None) -> MimiCodec:
        if spec.source == "random":
            return cls.random_init(spec.size, spec.seed)
        return cls.pretrained(spec.model, spec.revision, cache_dir=cache_dir)

    @classmethod
    def random_init(cls, size: str = "reduced", seed: int = 0) -> MimiCodec:
        """A random-init Mimi: 'full' (79 M parameters) or 'reduced' (15 M). Same seed, same weights."""
        spec = CodecSpec(source="random", model="", revision="", size=size, seed=seed)
        with private_rng(seed):
            model = MimiModel(MimiConfig(**CODEC_SIZES[size]))
        return cls(model, spec)

    @classmethod
    def pretrained(
        cls,
        model: str = MIMI_MODEL_ID,
        revision: str = MIMI_REVISION,
        cache_dir: str | os.PathLike | None = None,
        allow_download: bool = True,
    ) -> MimiCodec:
        """Pretrained Mimi from a local folder, else the hub cache, else the hub (if reachable)."""
        spec = CodecSpec(source="pretrained", model=model, revision=revision, size="full")
        return cls(_load_pretrained(model, revision, cache_dir, allow_download), spec)

    def train(self, mode: bool = True) -> MimiCodec:
        super().train(mode)
        self.encoder.eval()  # frozen: its dropout/normalisation never switch to training mode
        return self

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, N) audio at 24 kHz -> (B, 512, ceil(N / 1920)) latents. Causal: frame f sees
        samples up to (f + 1) * 1920 only, so right-padding a batch leaves earlier frames unchanged."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(
                f"encode expects mono audio of shape (B, 1, N), got {tuple(audio.shape)}; "
                "add the channel axis with audio.unsqueeze(1) or mix stereo down first."
            )
        return self.encoder(audio).latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 512, F) latents -> (B, 1, F * 1920) audio at 24 kHz. Differentiable."""
        if latents.dim() != 3 or latents.shape[1] != self.codec_dim:
            raise ValueError(
                f"decode expects latents of shape (B, {self.codec_dim}, F), got {tuple(latents.shape)}."
            )
        return self.decoder(latents)


class LatentDecoder(nn.Module):
    """Mimi's decoder half (upsample + transformer + SEANet) as a plain module:
    (B, 512, F) -> (B, 1, F * 1920). The beta-VAE holds this, not the whole codec,
    so its checkpoints leave the frozen encoder out."""

    def __init__(self, mimi_decoder: nn.Module):
        super().__init__()
        self.mimi = mimi_decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.mimi(latents).audio_values


class IntegerPaddingConv1d(MimiConv1d):
    """MimiConv1d with its padding computed in Python integers.

    transformers computes each convolution's padding from 0-d tensor buffers. On a GPU that is a
    host sync per convolution (F.pad needs the numbers), and under torch.compile a graph break per
    convolution (about 30 per decoder pass). The numbers are the same; only their type differs.
    """

    def forward(self, hidden_states: torch.Tensor, padding_cache=None) -> torch.Tensor:
        if padding_cache is not None:  # streaming: transformers' own path
            return super().forward(hidden_states, padding_cache)
        stride, kernel, total = self.int_padding  # (stride, effective kernel, total padding)
        length = hidden_states.shape[-1]
        frames = -(-(length - kernel + total) // stride)  # ceil: transformers' n_frames
        extra = frames * stride + kernel - total - length
        if self.causal:
            paddings = (total, extra)
        else:
            paddings = (total - total // 2, total // 2 + extra)
        return self.conv(self._pad1d(hidden_states, paddings, mode=self.pad_mode))


def use_integer_padding(model: nn.Module) -> None:
    """Give every MimiConv1d of `model` integer padding arithmetic (IntegerPaddingConv1d)."""
    for module in model.modules():
        if type(module) is MimiConv1d:
            module.int_padding = (int(module.stride), int(module.kernel_size), int(module.padding_total))
            module.__class__ = IntegerPaddingConv1d


def _load_pretrained(
    model: str, revision: str, cache_dir: str | os.PathLike | None, allow_download: bool
) -> MimiModel:
    folder = Path(model).expanduser()
    if folder.exists():
        check_local_folder(folder)
        return MimiModel.from_pretrained(folder, local_files_only=True)
    try:
        return MimiModel.from_pretrained(model, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except OSError:
        pass  # not in the cache; try the hub below
    reason = hub_unreachable_reason() if allow_download else "downloads are turned off"
    if reason:
        raise CodecWeightsMissing(missing_weights_message(model, revision, cache_dir, reason))
    log.info("downloading %s@%s from the Hugging Face hub", model, revision)
    return MimiModel.from_pretrained(model, revision=revision, cache_dir=cache_dir)


def config_digest(config: MimiConfig) -> str:
    """A short stable hash of a MimiConfig's architecture fields (for cache keys)."""
    fields = {
        k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
