"""Connected-component post-processing of multi-organ label volumes (cc3d).

Each of the four organs is a single connected structure in the thorax, so a component of an organ
that lies apart from the organ is a false positive. But a slice-wise model often misses a few slices
of a long organ (the descending aorta, the esophagus) and so cuts it into pieces stacked along the
slice axis; keeping the largest 26-connected component alone then throws away the rest of the organ
(measured: a third of the aorta on 2 mm slices, `benchmarks/postprocess.py`). So pieces stacked
along the slice axis (axis 2 of an ``(x, y, z)`` array) with at most ``slice_gap_mm`` between their
nearest slices (or one missed slice), and overlapping in-plane footprints, count as one piece of the
organ; the largest such group (by voxel count) is kept. Without ``spacing``, the plain largest component.

:func:`clean_up` is what ``predict`` applies, by mode (:data:`Postprocess`): ``True`` (the default,
stacked pieces as above), ``"largest"`` (the largest component alone; ``qa``'s reference) or ``False``.

Examples
--------
>>> import numpy as np
>>> lab = np.zeros((10, 10, 12), np.uint8)
>>> lab[1:5, 1:5, 1:5] = 4      # aorta, 64 voxels
>>> lab[1:5, 1:5, 7:9] = 4      # more aorta, below two missed slices
>>> lab[8, 8, 8] = 4            # a stray voxel beside it
>>> int((keep_largest_component(lab, spacing=(1.0, 1.0, 2.0)) == 4).sum())
96
>>> int((keep_largest_component(lab) == 4).sum())  # no spacing: the largest component alone
64
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import cc3d
import numpy as np

from thoraxseg.labels import ORGANS

#: Pieces of an organ at most this far apart along the slice axis (mm, between the centres of their
#: nearest slices) are one organ; so are pieces one missed slice apart on any grid. On 2–3 mm slices
#: that bridges 3–4 missed slices, on 8–12 mm slices one. Chosen by measurement
#: (`benchmarks/postprocess.py`): on 2–3 mm slices 25–40 mm also kept pieces of the bronchi stacked
#: below the trachea and of the vessels above the heart (trachea HD95 6.3 → 12.8 mm), 10 mm did not.
SLICE_GAP_MM = 10.0

#: How ``predict`` cleans its labels (:func:`clean_up`): ``True`` keeps each organ's pieces stacked
#: along the slice axis (:func:`keep_largest_component` with the grid's spacing), ``"largest"`` the
#: largest 26-connected component alone, ``False`` nothing.
Postprocess = bool | Literal["largest"]


def clean_up(labels: np.ndarray, mode: Postprocess, spacing: Sequence[float]) -> np.ndarray:
    """Apply ``predict``'s clean-up ``mode`` (:data:`Postprocess`) to a label volume ``(x, y, z)``.

    Parameters
    ----------
    labels
        Integer label volume, values 0..4; axis 2 is the slice axis.
    mode
        ``True`` (stacked pieces), ``"largest"`` (largest component alone) or ``False`` (unchanged).
    spacing
        The grid's voxel size (mm) per axis.

    Returns
    -------
    numpy.ndarray
        ``labels`` itself for ``False``, else a cleaned copy.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((6, 6, 8), np.uint8)
    >>> lab[1:3, 1:3, 0:3] = 2
    >>> lab[1:3, 1:3, 4:6] = 2    # the same organ below one missed slice
    >>> [int((clean_up(lab, m, (1.0, 1.0, 3.0)) == 2).sum()) for m in (True, "largest", False)]
    [20, 12, 20]
    """
    if mode is False:
        return labels
    if mode is True:
        return keep_largest_component(labels, spacing=spacing)
    if mode == "largest":
        return keep_largest_component(labels)
    raise ValueError(f"postprocess must be True, False or 'largest', got {mode!r}")


def keep_largest_component(
    labels: np.ndarray,
    organs: Iterable[int] = tuple(int(o) for o in ORGANS),
    connectivity: int = 26,
    spacing: Sequence[float] | None = None,
    slice_gap_mm: float = SLICE_GAP_MM,
) -> np.ndarray:
    """Keep, for each organ label, its largest connected piece; the rest becomes background.

    Parameters
    ----------
    labels
        Integer label volume ``(x, y, z)``, values 0..4; axis 2 is the slice axis.
    organs
        Label codes to clean (default: the four organs).
    connectivity
        6, 18 or 26 (3D neighbourhood).
    spacing
        Voxel size (mm) per axis. With it, components stacked along axis 2 (touching in-plane
        footprints) with at most ``slice_gap_mm`` between their nearest slices, or one missed slice,
        form one piece; without it, the plain largest component.
    slice_gap_mm
        The largest gap (mm, slice centre to slice centre) bridged along axis 2 beyond one missed
        slice; 0 bridges none.

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype.
    """
    out = labels.copy()
    reach = _bridge_slices(spacing, slice_gap_mm)
    for organ in organs:
        mask = labels == organ
        if not mask.any():
            continue
        # in the organ's bounding box, extended along z by the reach (beyond it is background), every
        # slice's mask is carried `reach` slices on: pieces `reach + 1` or fewer slices apart then touch
        box = tuple(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3))
        sl = (slice(box[0][0], box[0][-1] + 1), slice(box[1][0], box[1][-1] + 1),
              slice(box[2][0], min(mask.shape[2], box[2][-1] + 1 + reach)))
        sub = mask[sl]
        grown = sub.copy()
        for k in range(1, min(reach, sub.shape[2] - 1) + 1):
            grown[:, :, k:] |= sub[:, :, :-k]
        # as uint8: on a bool array cc3d fails on some degenerate shapes (1 x 1 x 3, two voxels apart)
        groups = cc3d.connected_components(grown.view(np.uint8), connectivity=connectivity)
        counts = np.bincount(groups[sub])
        counts[0] = 0
        view = out[sl]
        view[sub & (groups != int(np.argmax(counts)))] = 0
    return out


def _bridge_slices(spacing: Sequence[float] | None, slice_gap_mm: float) -> int:
    """How far (slices) each slice's mask is carried along axis 2 so that the pieces to bridge meet.

    Pieces whose nearest slices are ``d`` slices apart (``d − 1`` missed) touch once the upper one is
    carried ``d − 1`` slices on; bridged are ``d ≤ max(2, slice_gap_mm / spacing[2])``.
    """
    if spacing is None or slice_gap_mm <= 0:
        return 0
    if len(spacing) != 3 or not spacing[2] > 0:
        raise ValueError(f"spacing must be three positive voxel sizes (mm), got {tuple(spacing)}")
    return max(1, int(np.floor(slice_gap_mm / float(spacing[2]) + 1e-9)) - 1)
