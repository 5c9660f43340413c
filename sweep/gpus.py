"""The GPUs this process would see, and their memory, without importing torch.

    memory = visible_gpu_memory()      # bytes per GPU, in CUDA's order; [] on a machine without one

`python -m sweep.launch` plans a sweep's packing from these before it starts Ray. Importing torch and
asking CUDA took 6.8 s of that start on an H200 machine; NVML, through `nvidia-smi`, answered in
0.02 s there, and the driver's preparing process imports torch beside Ray's start instead. torch
is asked after all where `nvidia-smi` cannot answer for it: no NVIDIA tools, a torch built without
CUDA, or a CUDA_VISIBLE_DEVICES that names MIG instances or anything but plain indices and GPU UUIDs.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]


def visible_gpu_memory() -> list[int]:
    """Total memory in bytes of each GPU that CUDA would show this process, in its order."""
    found = _from_nvidia_smi()
    if found is not None:
        return found
    import torch

    return [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]


def _from_nvidia_smi() -> list[int] | None:
    """From NVML, filtered as CUDA filters CUDA_VISIBLE_DEVICES; None where it cannot tell."""
    if shutil.which(QUERY[0]) is None or not _torch_has_cuda():
        return None
    try:
        listing = subprocess.run(QUERY, capture_output=True, text=True, timeout=30, check=True).stdout
        gpus = [(index, uuid, int(mib) * 2**20) for index, uuid, mib in _rows(listing)]
    except (OSError, subprocess.SubprocessError, ValueError):  # no driver loaded, a MIG board's "[N/A]"
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [memory for _, _, memory in gpus]
    picked = []
    for entry in (e.strip() for e in visible.split(",")):
        if not (entry.isdigit() or entry.startswith("GPU-")):
            return None  # MIG-..., -1, an empty list: torch's own answer
        match = [memory for index, uuid, memory in gpus if entry in (index, uuid) or uuid.startswith(entry)]
        if len(match) != 1:
            return None
        picked += match
    return picked


def _rows(listing: str) -> list[tuple[str, str, str]]:
    rows = [tuple(field.strip() for field in line.split(",")) for line in listing.strip().splitlines()]
    if any(len(row) != 3 for row in rows):
        raise ValueError(f"nvidia-smi answered {listing[:200]!r}")
    return rows


def _torch_has_cuda() -> bool:
    """False for torch wheels built for the CPU or ROCm (their versions say so: 2.11.0+cpu)."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return not any(tag in version for tag in ("+cpu", "+rocm"))
