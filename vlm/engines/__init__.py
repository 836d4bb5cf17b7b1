"""Inference engines other than stock transformers for a loaded VLM's LLM (see :mod:`vlm.engines.onnx`)."""
