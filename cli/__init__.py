"""The `voxaug` command: one module per sub-command, combined in `main.py`."""
