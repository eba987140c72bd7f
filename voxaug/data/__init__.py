"""Dataset sources (HW4 layout, clip folders), the packed feature store, splits and batching.

Import the submodules themselves (``voxaug.data.sources``, ``voxaug.data.store``): this package imports
nothing, so torch-free modules such as ``voxaug.data.split`` stay torch-free."""
