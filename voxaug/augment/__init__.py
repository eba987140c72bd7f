"""Batch augmentations behind one interface, found by name through a registry.

``--augment`` names apply in one fixed order, each class's ``order``, whatever their order on the command
line: wave (on the waveform, in the data workers), speed, crop, reverb, noise, channel, specaug, mixup;
``none`` turns them all off.
They run on the training batch only, never in evaluation, embedding or prediction.
"""

from voxaug.augment.base import AUGMENTATIONS, BatchAugmentation, TrainBatch, register_augmentation, total_loss
from voxaug.augment.channel import ChannelColour
from voxaug.augment.crop import RandomCrop
from voxaug.augment.mixup import Mixup
from voxaug.augment.noise import AdditiveNoise
from voxaug.augment.reverb import Reverb
from voxaug.augment.specaug import SpecAugment
from voxaug.augment.speed import SpeedPerturb
from voxaug.augment.pipeline import DEFAULT_AUGMENT, AugmentPipeline, build_pipeline, parse_names

__all__ = [
    "AUGMENTATIONS",
    "AdditiveNoise",
    "DEFAULT_AUGMENT",
    "AugmentPipeline",
    "BatchAugmentation",
    "ChannelColour",
    "Mixup",
    "RandomCrop",
    "Reverb",
    "SpecAugment",
    "SpeedPerturb",
    "TrainBatch",
    "build_pipeline",
    "parse_names",
    "register_augmentation",
    "total_loss",
]
