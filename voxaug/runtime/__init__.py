"""Torch-free inference: a numpy log-mel front end and an ONNX Runtime speaker model.

Everything here needs only numpy, soundfile and onnxruntime, so a runtime-only install can
featurise clips and embed them with a model written by ``voxaug export``.
"""
