"""voxaug's Python API: ``SpeakerModel`` (a checkpoint or an ONNX export) and ``SpeakerIndex`` (enrol, identify).

The command line's `embed`, `enroll` and `identify` call these same classes, so there is one code path.
"""
