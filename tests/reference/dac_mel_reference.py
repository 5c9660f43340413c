"""Reference values of DAC's mel distance, computed by descript-audio-codec's own MelSpectrogramLoss
configured as its conf/base.yml configures it, on the pairs of signals.py; written to dac_mel.json,
which tests/test_evaluation_outputs.py reads.

DAC is not a dependency of this project: run this in a virtual environment of its own, e.g.

    python -m venv /tmp/dacenv && /tmp/dacenv/bin/pip install descript-audio-codec==1.0.0 \\
        descript-audiotools==0.7.2 torch torchaudio
    cd tests/reference && /tmp/dacenv/bin/python dac_mel_reference.py

(Values in dac_mel.json: descript-audio-codec 1.0.0, descript-audiotools 0.7.2, librosa 0.11, torch 2.11.)
"""

import json
from importlib.metadata import version
from pathlib import Path

import torch
from audiotools import AudioSignal
from dac.nn.loss import MelSpectrogramLoss
from signals import SAMPLE_RATE, signal_pairs

# conf/base.yml of descript-audio-codec: "# Loss setup"
BASE_YML = dict(
    n_mels=[5, 10, 20, 40, 80, 160, 320],
    window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
    mel_fmin=[0, 0, 0, 0, 0, 0, 0],
    mel_fmax=[None] * 7,
    pow=1.0,
    clamp_eps=1.0e-5,
    mag_weight=0.0,
)


def main() -> None:
    loss = MelSpectrogramLoss(**BASE_YML)
    values = {}
    for name, (pred, target) in signal_pairs().items():
        x = AudioSignal(torch.from_numpy(pred)[None, None], SAMPLE_RATE)
        y = AudioSignal(torch.from_numpy(target)[None, None].float(), SAMPLE_RATE)
        values[name] = float(loss(x, y))  # MelSpectrogramLoss(x, y): x the estimate, y the reference
    versions = {p: version(p) for p in ("descript-audio-codec", "descript-audiotools", "librosa", "torch")}
    out = {"config": {k: v for k, v in BASE_YML.items()}, "versions": versions, "values": values}
    Path(__file__).with_name("dac_mel.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(values, indent=2))


if __name__ == "__main__":
    main()
