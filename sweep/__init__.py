"""The sweep service: `python -m sweep.launch` (README.md)."""

import os
import re
import time
from pathlib import Path

IMPORTED_AT = time.time()  # when this process first imported the package: a trial worker's imports begin


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0.0 where it cannot be read): the driver's
    and the trials' start-up stages are timed from there."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def stages_text(seconds: dict[str, float]) -> str:
    """ "imports and plan 2.9, Ray 10.2": how the driver and the preparation log stage times, which
    sweep.bench reads back with stages_from_text."""
    return ", ".join(f"{stage} {value:.1f}" for stage, value in seconds.items())


def stages_from_text(text: str) -> dict[str, float]:
    """stages_text's dict back from its text."""
    return {stage: float(value) for stage, value in re.findall(r"([^,]+?) ([0-9.]+)(?:, |$)", text)}
