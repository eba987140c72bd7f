"""Batch augmentations behind one interface, found by name through a registry."""

from voxaug.augment.base import AUGMENTATIONS, BatchAugmentation, TrainBatch, register_augmentation, total_loss
from voxaug.augment.pipeline import AugmentPipeline, build_pipeline

__all__ = [
    "AUGMENTATIONS",
    "AugmentPipeline",
    "BatchAugmentation",
    "TrainBatch",
    "build_pipeline",
    "register_augmentation",
    "total_loss",
]
