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
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import MimiConfig, MimiModel
from transformers.models.mimi.modeling_mimi import MimiConv1d

from models.runtime import private_rng

log = logging.getLogger(__name__)

MIMI_MODEL_ID = "kyutai/mimi"
# The commit of huggingface.co/kyutai/mimi that the project pins (the released weights).
MIMI_REVISION = "89091b3e466eb6a9d11e537bf26b144f194978f7"

# Random-init sizes. "reduced" (15 M parameters) keeps CPU tests and the smoke preset fast; it has
# the full model's frame rate, sample rate and 512-d latents, so every shape downstream is the same.
CODEC_SIZES: dict[str, dict] = {
    "full": {},
    "reduced": {"num_filters": 8, "num_hidden_layers": 2},
}
CODEC_SOURCES = ("pretrained", "random")


class CodecWeightsMissing(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class CodecSpec:
    """Which codec to build. Part of a trial's identity and of the feature-cache key.

    source: "pretrained" (model is a hub id or a local folder, revision a hub commit) or
    "random" (a random-init MimiConfig of the named size, seeded so every process builds the
    same weights).
    """

    source: str = "pretrained"
    model: str = MIMI_MODEL_ID
    revision: str = MIMI_REVISION
    size: str = "full"
    seed: int = 0

    def __post_init__(self):
        if self.source not in CODEC_SOURCES:
            raise ValueError(f"codec source {self.source!r} is not one of {CODEC_SOURCES}.")
        if self.source == "random" and self.size not in CODEC_SIZES:
            raise ValueError(f"codec size {self.size!r} is not one of {tuple(CODEC_SIZES)}.")

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Read a codec string: 'random:reduced', 'random:full' (optionally ':SEED'),
        'kyutai/mimi', 'kyutai/mimi@REVISION', or the path of a local folder."""
        if text.startswith("random:"):
            parts = text.split(":")
            if (
                len(parts) not in (2, 3)
                or parts[1] not in CODEC_SIZES
                or (len(parts) == 3 and not parts[2].isdigit())
            ):
                raise ValueError(
                    f"codec {text!r} not understood: random codecs are written 'random:SIZE' or "
                    f"'random:SIZE:SEED' with SIZE one of {tuple(CODEC_SIZES)}."
                )
            seed = int(parts[2]) if len(parts) == 3 else 0
            return cls(source="random", model="", revision="", size=parts[1], seed=seed)
        if Path(text).expanduser().exists():
            return cls(
                source="pretrained", model=str(Path(text).expanduser().resolve()), revision="", size="full"
            )
        model, _, revision = text.partition("@")
        return cls(source="pretrained", model=model, revision=revision or MIMI_REVISION, size="full")

    def describe(self) -> str:
        if self.source == "random":
            return f"random:{self.size}:{self.seed}"
        return f"{self.model}@{self.revision}" if self.revision else self.model

    def fingerprint(self) -> dict:
        """What identifies the codec's weights, for cache keys and run tags."""
        info = asdict(self)
        if self.source == "pretrained" and Path(self.model).is_dir():
            # A local folder has no revision: its files are the identity.
            files = sorted(p for p in Path(self.model).iterdir() if p.is_file())
            info["files"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        return info


SAMPLE_RATE = 24_000  # Mimi's audio, Hz: every module that needs it takes it from here
FRAME_SIZE = 1920  # audio samples per latent frame
FRAME_RATE = SAMPLE_RATE / FRAME_SIZE  # 12.5 latent frames per second
CODEC_DIM = 512  # Mimi's continuous latents per frame (the VAE's bottleneck is D, VAEConfig.latent_dim)


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
    reason = _hub_unreachable_reason() if allow_download else "downloads are turned off"
    if reason:
        raise CodecWeightsMissing(_missing_weights_message(model, revision, cache_dir, reason))
    log.info("downloading %s@%s from the Hugging Face hub", model, revision)
    return MimiModel.from_pretrained(model, revision=revision, cache_dir=cache_dir)


def check_local_folder(folder: Path) -> None:
    """Raise CodecWeightsMissing unless `folder` holds a saved Mimi (config.json and weights)."""
    missing = [name for name, found in (("config.json", (folder / "config.json").is_file()),
               ("model.safetensors", any(folder.glob("*.safetensors")))) if not found]  # fmt: skip
    if missing:
        raise CodecWeightsMissing(
            f"codec folder {folder} has no {' and no '.join(missing)}: it should hold a saved Mimi "
            "(config.json and model.safetensors, e.g. from `hf download kyutai/mimi --local-dir DIR`)."
        )


def _hub_unreachable_reason(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None if a TCP connection to it opens within timeout_s."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        return f"{host}:{port} did not answer within {timeout_s:.0f} s ({err})"
    return None


def _missing_weights_message(model: str, revision: str, cache_dir, reason: str) -> str:
    from huggingface_hub import constants

    cache = cache_dir or constants.HF_HUB_CACHE
    return (
        f"Pretrained Mimi weights {model}@{revision[:12]} are not in the Hugging Face cache ({cache}) "
        f"and cannot be downloaded: {reason}.\n"
        "To fix, either:\n"
        f"  - on a machine with internet access run `hf download {model} --revision {revision}` and copy "
        "its cache folder here (or point HF_HOME at it), or\n"
        f"  - download the repository's files (config.json, model.safetensors) into a folder and pass "
        "that folder as the codec (--codec /path/to/mimi).\n"
        "For plumbing runs without weights, a random-init codec works: "
        "--codec random:full (or random:reduced)."
    )


def config_digest(config: MimiConfig) -> str:
    """A short stable hash of a MimiConfig's architecture fields (for cache keys)."""
    fields = {
        k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
