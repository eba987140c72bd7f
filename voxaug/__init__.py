"""voxaug: speaker identification with augmentation, a Conformer + AM-Softmax trainer and FAISS search."""

__version__ = "0.1.0"
