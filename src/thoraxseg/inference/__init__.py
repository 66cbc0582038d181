"""Inference: whole-volume prediction back in the source geometry, and post-processing."""
