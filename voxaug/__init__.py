"""voxaug: speaker identification with augmentation, a Conformer + AM-Softmax trainer and FAISS search.

``voxaug.SpeakerModel`` and ``voxaug.SpeakerIndex`` are the Python API. They load on first use, so that
``import voxaug`` (and ``voxaug --help``) imports neither torch nor FAISS.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPLIT = {"voxaug.cli": "cli", "voxaug.embeddings": "embeddings"}
"""Subpackages that a source checkout keeps beside voxaug/ (pyproject.toml's package-dir)."""


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`_SPLIT`'s subpackages in the checkout and nothing else there: `python -m voxaug` or a script run in
    its root imports this voxaug ahead of an installed one. Its root on ``__path__`` made every folder in it (tests,
    docs, voxaug itself, as ``voxaug.voxaug``, a second copy of every module) a subpackage."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in _SPLIT:
            return None
        folder = os.path.join(_CHECKOUT, _SPLIT[name])
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])


if all(os.path.isfile(os.path.join(_CHECKOUT, *parts))
       for parts in (("pyproject.toml",), ("cli", "__init__.py"), ("embeddings", "__init__.py"))):
    sys.meta_path.append(_CheckoutFinder())
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
