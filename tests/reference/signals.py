"""Deterministic signal pairs (numpy only) on which reconstruction metrics are compared with reference
implementations. Shared by the reference scripts in this folder and the tests."""

import numpy as np

SAMPLE_RATE = 24_000


def signal_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (prediction, target), float32 mono at 24 kHz, 0.75 to 1 s long."""
    rng = np.random.default_rng(20261129)
    t = np.arange(24_000) / SAMPLE_RATE
    noise = 0.1 * rng.standard_normal(24_000)
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + 0.5 * 7900 * t**2))  # 100 Hz -> 8 kHz
    vibrato = 220 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(vibrato) / SAMPLE_RATE
    voiced = sum(0.3 / k * np.sin(k * phase) for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    smoothed = np.convolve(voiced, np.ones(9) / 9, mode="same")  # a crude low-pass
    odd = 20_011  # not a multiple of any hop: the last frames are padded
    pairs = {
        "noise_vs_noisier": (noise + 0.01 * rng.standard_normal(24_000), noise),
        "chirp_vs_quieter": (0.8 * chirp, chirp),
        "voiced_vs_lowpassed": (smoothed, voiced),
        "tone_vs_near_silence": (1e-6 * rng.standard_normal(odd), 0.3 * np.sin(2 * np.pi * 440 * t[:odd])),
    }
    return {name: (p.astype(np.float32), q.astype(np.float32)) for name, (p, q) in pairs.items()}
