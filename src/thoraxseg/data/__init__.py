"""Data: NIfTI I/O with full geometry, SegTHOR layouts, validation, synthetic cohort.

Array axis order everywhere in thoraxseg is the NIfTI voxel order ``(x, y, z)``
= ``(i, j, k)`` as stored on disk (nibabel's order): ``array[i, j, k]`` is the voxel
whose world position (mm) is ``affine @ [i, j, k, 1]``. For SegTHOR a volume is
``512 × 512 × Z``; ``z`` is the slice (cranio-caudal) axis.
"""

from thoraxseg.data.layout import Case, discover_cases, find_case_image
from thoraxseg.data.volume import Volume, load_image, load_label, load_volume, save_label, save_volume

__all__ = [
    "Case",
    "Volume",
    "discover_cases",
    "find_case_image",
    "load_image",
    "load_label",
    "load_volume",
    "save_label",
    "save_volume",
]
