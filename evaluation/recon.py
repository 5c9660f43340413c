"""Reconstruction metrics (docs/science.md §4).

    waveform_l1(pred, target)      # mean absolute sample error
    mel_distance(pred, target)     # multi-resolution log-mel L1, DAC / EnCodec convention

Audio is (N,) or (B, 1, N) at 24 kHz, numpy or torch. mel_distance is descript-audio-codec's
MelSpectrogramLoss as DAC's conf/base.yml configures it for training and reporting: seven
resolutions, window lengths 32..2048 (centred Hann STFT, hop = window / 4) with 5..320 Slaney mel
bands (librosa's filters), L1 between log10 of the mel magnitudes floored at 1e-5 (pow 1,
mag_weight 0), summed over resolutions. tests/reference/dac_mel_reference.py computes reference
values with DAC's own code; the tests hold this function to them. Identical signals give exactly 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torchaudio

from models.spec import SAMPLE_RATE

MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)
_CLAMP = 1e-5


def _as_batch(audio) -> torch.Tensor:
    """(N,), (B, N) or (B, 1, N), numpy or torch -> (B, N) float32 tensor."""
    x = audio.float() if torch.is_tensor(audio) else torch.tensor(np.asarray(audio), dtype=torch.float32)
    if x.dim() == 3:
        x = x[:, 0]
    return x if x.dim() == 2 else x[None]


def waveform_l1(pred, target) -> float:
    """Mean absolute difference of two equally long signals."""
    p, t = _as_batch(pred), _as_batch(target)
    _check_same(p, t)
    return float((p - t).abs().mean())


@lru_cache(maxsize=32)
def _mel(sample_rate: int, window: int, bands: int, device: str) -> torchaudio.transforms.MelSpectrogram:
    # audiotools' AudioSignal.mel_spectrogram, which DAC's loss calls: |torch.stft| (centred, reflect
    # padding, periodic Hann) through librosa's default mel filters, which are Slaney's (norm and scale).
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=window, win_length=window, hop_length=window // 4,
        n_mels=bands, f_min=0.0, f_max=sample_rate / 2, power=1.0, center=True, pad_mode="reflect",
        norm="slaney", mel_scale="slaney",
    ).to(device)  # fmt: skip


def mel_distance(pred, target, sample_rate: int = SAMPLE_RATE) -> float:
    """Sum over the seven resolutions of mean |log10(max(mel_pred, 1e-5)) - log10(max(mel_target, 1e-5))|:
    DAC's MelSpectrogramLoss as its conf/base.yml sets it (pow 1, mag_weight 0). `pred`, `target`:
    (N,), (B, N) or (B, 1, N) at `sample_rate`."""
    p, t = _as_batch(pred), _as_batch(target)
    _check_same(p, t)
    total = 0.0
    for window, bands in zip(MEL_WINDOWS, MEL_BANDS, strict=True):
        mel = _mel(sample_rate, window, bands, str(p.device))
        log_p = mel(p).clamp_min(_CLAMP).log10()  # pow 1: DAC's base.yml (the class default is 2)
        log_t = mel(t).clamp_min(_CLAMP).log10()
        total += float((log_p - log_t).abs().mean())
    return total


def _check_same(p: torch.Tensor, t: torch.Tensor) -> None:
    if p.shape != t.shape:
        raise ValueError(f"signals must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}.")
