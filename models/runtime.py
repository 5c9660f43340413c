"""Device, precision and seeded set-up, decided in one place.

bf16 autocast pays on CUDA (tensor cores, half the activation memory) and is not used on the
CPU, where bf16 matmuls are slower than fp32 on most machines and losses would be noisier.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(requested: str = "auto") -> torch.device:
    """The torch device for `requested` ('auto', 'cpu', 'cuda' or 'cuda:N'), with the reason logged."""
    if requested == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info(
            "device %s (auto: CUDA %s)", device, "available" if device.type == "cuda" else "not available"
        )
        return device
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"device {requested!r} is not one of {DEVICE_CHOICES} (or 'cuda:N').")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {requested!r} was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use device 'cpu' or 'auto'."
        )
    log.info("device %s (requested)", device)
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA, None (plain fp32) elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else None


def autocast(device: torch.device):
    """The autocast context for `device`: bf16 on CUDA, a no-op on the CPU."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextmanager
def private_rng(seed: int) -> Iterator[None]:
    """Run the block on torch's CPU generator seeded with `seed`, then give the caller its generator
    back as it was: seeded set-up (a random-init codec, the battery's MDN weights) stays repeatable
    without resetting the trial's own random stream (its batches and reparameterisation noise)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
