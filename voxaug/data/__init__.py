"""Dataset sources (HW4 layout, clip folders), the packed feature store, splits and batching."""

from voxaug.data.sources import DatasetSource, Utterance, open_source
from voxaug.data.store import PackedStore

__all__ = ["DatasetSource", "PackedStore", "Utterance", "open_source"]
