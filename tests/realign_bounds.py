"""What a mask pair determines: the bounds the realignment tests hold an estimate to.

A rigid correction is recovered from nearest-neighbour-resampled masks. Within the resampling noise
of the IoU, rotations cannot be told apart (thick slices, parts moved off the grid), and where in that
flat optimum an optimiser stops depends on floating-point rounding — another CPU kernel, another
thread count. So a test holds an estimate to what the data determines, computed from the data
(:func:`thoraxseg.realign.geometry.identifiable_rotation_deg`), never to a fixed angle alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thoraxseg.data.overlap import iou
from thoraxseg.realign.geometry import (
    centroid,
    identifiable_rotation_deg,
    relative_rotation_deg,
    transform_mask_cropped,
    translation_error_vox,
)

# Where the data pins the rotation down more finely than this, this is the bound (the sweep's
# documented accuracy on the test grids); an identifiable rotation above 1° means the test problem
# itself is ill-posed and the test would prove nothing.
ROTATION_FLOOR_DEG = 0.1
ILL_POSED_DEG = 1.0


def assert_recovers(estimate: np.ndarray, truth: np.ndarray, moved: np.ndarray, clean: np.ndarray,
                    spacing: Sequence[float], *, mode: str = "grid-constant",
                    max_translation_vox: float = 0.5) -> dict[str, float]:
    """Assert that ``estimate`` is as good a correction as the data allows; return the figures.

    * IoU with the clean mask at least the exact inverse's minus the resampling noise;
    * rotation within the identifiable angle of the exact inverse (at least 0.1°);
    * translation at the clean centroid within ``max_translation_vox`` (half a voxel: the
      nearest-neighbour quantum).
    """
    bound, noise = identifiable_rotation_deg(moved, clean, truth, spacing, mode=mode)
    figures = {
        "rotation_error_deg": relative_rotation_deg(estimate, truth, spacing),
        "translation_error_vox": translation_error_vox(estimate, truth, centroid(clean)),
        "iou_estimate": iou(transform_mask_cropped(moved, estimate, mode), clean),
        "iou_exact_inverse": iou(transform_mask_cropped(moved, truth, mode), clean),
        "identifiable_deg": bound,
        "iou_noise": noise,
    }
    assert bound < ILL_POSED_DEG, figures
    assert figures["iou_estimate"] >= figures["iou_exact_inverse"] - noise, figures
    assert figures["rotation_error_deg"] <= max(ROTATION_FLOOR_DEG, bound), figures
    assert figures["translation_error_vox"] < max_translation_vox, figures
    return figures
