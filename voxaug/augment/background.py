"""The ``wave`` chain's background noise: audiomentations' ``AddBackgroundNoise``, quiet about resampling.

audiomentations reads the drawn excerpt of a noise file on every draw and resamples it when the file is at another
rate than the audio, warning once per file in every process that draws (each data-loader worker, again each time the
workers restart). Training says it once instead (``WaveAugmentation.resampled_noise_warning``). Resampling each file
once and keeping it would hold every long noise file (an hour at 16 kHz is 230 MB) in every worker's memory, where an
excerpt costs well under a millisecond more to resample. Imported only when the chain is built.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from audiomentations import AddBackgroundNoise
from numpy.typing import NDArray


class QuietlyResampledBackgroundNoise(AddBackgroundNoise):
    """``AddBackgroundNoise`` given each noise file's sample rate (``sample_rates``, by path), which drops
    audiomentations' warning on a draw it resamples and changes nothing else."""

    def __init__(self, sample_rates: dict[str, int], **options: Any) -> None:
        super().__init__(**options)
        self.sample_rates = drawn_path_rates(sample_rates)

    def apply(self, samples: NDArray[np.float32], sample_rate: int) -> NDArray[np.float32]:
        if self.sample_rates.get(self.parameters["noise_file_path"]) == sample_rate:
            # no warning to drop; catch_warnings would reset which warnings this process has already shown
            return super().apply(samples, sample_rate)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*had to be resampled")
            return super().apply(samples, sample_rate)


def drawn_path_rates(sample_rates: dict[str, int]) -> dict[str, int]:
    """``sample_rates`` keyed by the absolute path audiomentations draws (``noise_file_path``), not the path as given:
    a relative ``--noise-dir`` would miss every lookup, and every draw would reset which warnings were shown."""
    return {str(Path(os.path.abspath(path))): rate for path, rate in sample_rates.items()}
