"""What the models are, without building them: the codec's spec and shapes, the VAE's config.

    spec = CodecSpec.parse("kyutai/mimi")          # or "random:reduced", a local folder
    config = VAEConfig(latent_dim=32, beta=0.01)   # a trial's VAE

No torch and no transformers here: `python -m sweep.launch` checks a sweep's flags with this
module in a second, and models/codec.py, models/vae.py build the modules from it.
"""

from __future__ import annotations

import math
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

STFT_WINDOWS = (256, 512, 1024, 2048)  # the multi-scale STFT loss's window sizes (models.losses)

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

# A VAE checkpoint's files (models.training writes and reads them).
CHECKPOINT_WEIGHTS = "weights.pt"
CHECKPOINT_OPTIMIZER = "optimizer.pt"  # absent from a finished trial's checkpoint: weights are what it keeps
CHECKPOINT_META = "meta.json"


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


def check_local_folder(folder: Path) -> None:
    """Raise CodecWeightsMissing unless `folder` holds a saved Mimi (config.json and weights)."""
    missing = [name for name, found in (("config.json", (folder / "config.json").is_file()),
               ("model.safetensors", any(folder.glob("*.safetensors")))) if not found]  # fmt: skip
    if missing:
        raise CodecWeightsMissing(
            f"codec folder {folder} has no {' and no '.join(missing)}: it should hold a saved Mimi "
            "(config.json and model.safetensors, e.g. from `hf download kyutai/mimi --local-dir DIR`)."
        )


def hub_unreachable_reason(timeout_s: float = 3.0) -> str | None:
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


def missing_weights_message(model: str, revision: str, cache_dir, reason: str) -> str:
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


def check_pretrained_available(spec: CodecSpec) -> None:
    """Raise CodecWeightsMissing unless `spec`'s pretrained weights can be loaded: a local folder holding
    a saved Mimi, hub weights in the Hugging Face cache, or a hub that answers (to download them).
    Checked before a sweep starts anything; MimiCodec.from_spec loads them."""
    if spec.source != "pretrained":
        return
    if Path(spec.model).is_dir():
        check_local_folder(Path(spec.model))
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec.model, "config.json", revision=spec.revision), str):
        return
    reason = hub_unreachable_reason()
    if reason:
        raise CodecWeightsMissing(missing_weights_message(spec.model, spec.revision, None, reason))


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
