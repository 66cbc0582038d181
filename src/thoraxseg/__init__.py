"""thoraxseg — segmentation of thoracic organs at risk in 3D CT (SegTHOR)."""

__version__ = "0.1.0"
