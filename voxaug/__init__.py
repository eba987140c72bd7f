"""voxaug: speaker identification with augmentation, a Conformer + AM-Softmax trainer and FAISS search.

``voxaug.SpeakerModel`` and ``voxaug.SpeakerIndex`` are the Python API. They load on first use, so that
``import voxaug`` (and ``voxaug --help``) imports neither torch nor FAISS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Classification", "SpeakerIndex", "SpeakerModel", "__version__"]

_LAZY = {"SpeakerModel": "voxaug.api.model", "Classification": "voxaug.api.model", "SpeakerIndex": "voxaug.api.index"}

if TYPE_CHECKING:
    from voxaug.api.index import SpeakerIndex
    from voxaug.api.model import Classification, SpeakerModel


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'voxaug' has no attribute {name!r}")
