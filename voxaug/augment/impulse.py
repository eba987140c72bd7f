"""The ``wave`` chain's room impulse responses: audiomentations' ``ApplyImpulseResponse`` on a RIR's first channel.

audiomentations mixes a multi-channel RIR down to mono before convolving a mono waveform. The channels of an
array or binaural recording (RIRS_NOISES' ``real_rirs_isotropic_noises``: 8-channel RVB2014, 2-channel AIR) are
one room heard at several microphones; their mean is a response none of them recorded (direct sounds at different
delays comb-filter, uncorrelated tails partly cancel, so the room sounds drier). Kaldi's ``wav-reverberate`` and
lhotse use the first channel; so does this. Imported only when the chain is built (it loads audiomentations).
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
from audiomentations import ApplyImpulseResponse
from audiomentations.core.audio_loading_utils import load_sound_file
from numpy.typing import NDArray
from scipy.signal import convolve


def first_channel(path: str, sample_rate: int) -> NDArray[np.float32]:
    """A RIR file's first channel at ``sample_rate``, cached by the file's size and modification time as well as its
    path: the cache outlives the chain, so a RIR rewritten in place is read again by the next chain built."""
    stat = os.stat(path)
    return cached_first_channel(path, stat.st_size, stat.st_mtime_ns, sample_rate)


@functools.lru_cache(maxsize=128)
def cached_first_channel(path: str, size: int, mtime_ns: int, sample_rate: int) -> NDArray[np.float32]:
    """A RIR file's first channel at ``sample_rate``: read and resampled once per file per process (the cache has
    audiomentations' size), where audiomentations warned once per file and per worker that resampling is slow. Read
    by audiomentations' own loader (librosa, resampled with soxr), so that a mono RIR is the one audiomentations
    convolved with."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*had to be resampled")
        samples, _ = load_sound_file(path, sample_rate, mono=False)
    return np.ascontiguousarray(np.atleast_2d(samples)[0], dtype=np.float32)


class FirstChannelImpulseResponse(ApplyImpulseResponse):
    """``ApplyImpulseResponse`` (random RIR, output scaled to a peak of 0.5 over the whole convolution, cut to the
    input's length unless ``leave_length_unchanged`` is False) that convolves a mono waveform with each RIR's first
    channel rather than its mono mix."""

    def apply(self, samples: NDArray[np.float32], sample_rate: int) -> NDArray[np.float32]:
        reverberant = convolve(samples, first_channel(self.parameters["ir_file_path"], sample_rate)).astype(np.float32)
        peak = float(np.abs(reverberant).max(initial=0.0))
        if peak > 0.0:
            reverberant *= 0.5 / peak
        return reverberant[: len(samples)] if self.leave_length_unchanged else reverberant
