"""The itk-elastix comparison method recovers a known transform (slow: importing itk takes 15-40 s)."""

from __future__ import annotations

import numpy as np
import pytest

from thoraxseg.data.transforms import course_matrix, transform_mask
from thoraxseg.labels import Organ
from thoraxseg.realign.estimate import estimate_matrix
from thoraxseg.realign.geometry import centroid, relative_rotation_deg, translation_error_vox
from thoraxseg.realign.synthetic import synthetic_thorax


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_elastix_recovers_known_transform() -> None:
    pytest.importorskip("itk")
    spacing = (10 / 3, 10 / 3, 7.5)
    _, labels = synthetic_thorax((96, 96, 32), spacing)
    clean = labels == int(Organ.HEART)
    corruption = course_matrix(-20.0, (48, 48, 0), (4, 3, 1))
    moved = transform_mask(clean, corruption)
    matrix, info = estimate_matrix(moved, clean, spacing, method="elastix", elastix_iterations=250)
    truth = np.linalg.inv(corruption)
    # elastix registers cleanly but less precisely than the sweep (see benchmarks/realign.py)
    assert relative_rotation_deg(matrix, truth, spacing) < 0.5
    assert translation_error_vox(matrix, truth, centroid(clean)) < 0.5
    assert np.allclose(info["affine_scale"], 1.0, atol=0.02)  # the affine stage stays near-rigid
