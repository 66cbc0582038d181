"""Connected-component post-processing of multi-organ label volumes (cc3d).

Each of the four organs is a single connected structure in the thorax, so every
component of an organ but the largest is a false positive. Axis order and
spacing do not matter here (26-connectivity on the voxel grid).

Examples
--------
>>> import numpy as np
>>> lab = np.zeros((10, 10, 10), np.uint8)
>>> lab[1:5, 1:5, 1:5] = 2      # heart, 64 voxels
>>> lab[8, 8, 8] = 2            # a stray heart voxel
>>> out = keep_largest_component(lab)
>>> int((out == 2).sum())
64
"""

from __future__ import annotations

from collections.abc import Iterable

import cc3d
import numpy as np

from thoraxseg.labels import ORGANS


def keep_largest_component(
    labels: np.ndarray, organs: Iterable[int] = tuple(int(o) for o in ORGANS), connectivity: int = 26
) -> np.ndarray:
    """Keep, for each organ label, only its largest connected component; the rest becomes background.

    Parameters
    ----------
    labels
        Integer label volume (any axis order), values 0..4.
    organs
        Label codes to clean (default: the four organs).
    connectivity
        6, 18 or 26 (3D neighbourhood).

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.
    """
    out = labels.copy()
    for organ in organs:
        mask = labels == organ
        if not mask.any():
            continue
        largest = cc3d.largest_k(mask, k=1, connectivity=connectivity)
        out[mask & (largest == 0)] = 0
    return out
