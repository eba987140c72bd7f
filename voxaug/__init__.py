"""voxaug: speaker identification with augmentation, a Conformer + AM-Softmax trainer and FAISS search.

``voxaug.SpeakerModel`` and ``voxaug.SpeakerIndex`` are the Python API. They load on first use, so that
``import voxaug`` (and ``voxaug --help``) imports neither torch nor FAISS.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if all(os.path.isfile(os.path.join(_CHECKOUT, *parts))
       for parts in (("pyproject.toml",), ("cli", "__init__.py"), ("embeddings", "__init__.py"))):
    # A source checkout keeps voxaug.cli and voxaug.embeddings in cli/ and embeddings/ beside voxaug/ (pyproject.toml's
    # package-dir). `python -m voxaug` or a script run in its root imports this voxaug ahead of an installed one, so
    # the two are found there too.
    __path__.append(_CHECKOUT)
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
