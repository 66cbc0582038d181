"""Connected-component clean-up: the largest piece of each organ, pieces stacked across missed slices kept."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from thoraxseg.data.postprocess import SLICE_GAP_MM, clean_up, keep_largest_component

AORTA = 4


def _two_pieces(missed: int) -> np.ndarray:
    """An aorta cut into a 4-slice piece and a 3-slice piece with ``missed`` empty slices between them."""
    lab = np.zeros((12, 12, 10 + missed), np.uint8)
    lab[3:7, 3:7, 0:4] = AORTA
    lab[3:7, 3:7, 4 + missed:7 + missed] = AORTA
    return lab


@pytest.mark.parametrize(("missed", "slice_mm", "kept"), [
    (2, 2.0, True),     # nearest slices 6 mm apart
    (4, 2.0, True),     # 10 mm apart: exactly the limit
    (5, 2.0, False),    # 12 mm apart
    (2, 5.0, False),    # 15 mm apart, two missed slices
    (1, 12.4, True),    # one missed slice is always bridged: 24.8 mm on the thickest phantom grid
    (1, 30.0, True),
])
def test_pieces_stacked_within_the_gap_are_kept_and_beyond_it_dropped(missed: int, slice_mm: float,
                                                                      kept: bool) -> None:
    lab = _two_pieces(missed)
    out = keep_largest_component(lab, spacing=(1.0, 1.0, slice_mm))
    assert int((out == AORTA).sum()) == (16 * 7 if kept else 16 * 4)
    assert (out[:, :, :4] == lab[:, :, :4]).all()  # the larger piece is always kept


def test_a_stray_piece_beside_the_organ_is_dropped_whatever_the_gap() -> None:
    lab = _two_pieces(1)
    lab[10:12, 10:12, 0:4] = AORTA  # same slices, 3 voxels away in-plane: not stacked on the organ
    out = keep_largest_component(lab, spacing=(1.0, 1.0, 1.0), slice_gap_mm=100.0)
    assert not out[10:12, 10:12].any()
    assert int((out == AORTA).sum()) == 16 * 7


def test_the_largest_group_wins_over_the_largest_single_component() -> None:
    lab = np.zeros((20, 12, 12), np.uint8)
    lab[1:5, 1:5, 0:3] = AORTA     # 48 voxels
    lab[1:5, 1:5, 5:8] = AORTA     # 48 more, two missed slices below: one piece of 96
    lab[12:17, 1:6, 0:3] = AORTA   # 75 voxels, the largest component, apart in-plane
    out = keep_largest_component(lab, spacing=(1.0, 1.0, 3.0))
    assert int((out == AORTA).sum()) == 96 and not out[12:17].any()
    plain = keep_largest_component(lab)
    assert int((plain == AORTA).sum()) == 75


def test_without_spacing_or_gap_it_is_the_plain_largest_component() -> None:
    lab = _two_pieces(2)
    for out in (keep_largest_component(lab), keep_largest_component(lab, spacing=(1, 1, 2), slice_gap_mm=0)):
        assert (out == np.where(cc3d.largest_k(lab == AORTA, k=1) > 0, AORTA, 0)).all()


def test_the_gap_is_in_mm_so_thin_slices_bridge_more_slices() -> None:
    lab = _two_pieces(8)  # 8 missed slices
    assert int((keep_largest_component(lab, spacing=(1, 1, 1.0)) == AORTA).sum()) == 16 * 7   # 9 mm
    assert int((keep_largest_component(lab, spacing=(1, 1, 1.25)) == AORTA).sum()) == 16 * 4  # 11.25 mm
    assert int((keep_largest_component(lab, spacing=(1, 1, 1.25), slice_gap_mm=12) == AORTA).sum()) == 16 * 7
    assert SLICE_GAP_MM == 10.0  # the figures above are computed for this default


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 1.0, float("nan"))])
def test_bad_spacing_is_refused(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="spacing"):
        keep_largest_component(_two_pieces(1), spacing=spacing)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 9)),
              elements=st.sampled_from([0, 0, 0, 1, 2, 4, 7])),
       st.floats(0.5, 15.0), st.floats(0.0, 40.0))
def test_properties(lab: np.ndarray, slice_mm: float, gap: float) -> None:
    out = keep_largest_component(lab, spacing=(0.8, 0.8, slice_mm), slice_gap_mm=gap)
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert ((out == lab) | (out == 0)).all()          # only removes
    assert (out[lab == 7] == 7).all()                 # codes outside the organs are untouched
    for organ in (1, 2, 4):
        mask = lab == organ
        if mask.any():  # at least as much as the plain largest component, and never nothing
            assert (out == organ).sum() >= cc3d.largest_k(mask, k=1).astype(bool).sum()
    again = keep_largest_component(out, spacing=(0.8, 0.8, slice_mm), slice_gap_mm=gap)
    assert (again == out).all()                        # idempotent


def test_clean_up_modes_are_the_stacked_the_plain_largest_and_none() -> None:
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[2:6, 2:6, 0:4] = 1        # esophagus, 64 voxels
    lab[2:6, 2:6, 6:8] = 1        # below two missed slices (4 mm on 2 mm slices): the same organ
    lab[10, 10, 10] = 1           # a stray voxel apart
    spacing = (1.0, 1.0, 2.0)
    counts = {m: int((clean_up(lab, m, spacing) == 1).sum()) for m in (True, "largest", False)}
    assert counts == {True: 96, "largest": 64, False: 97}
    np.testing.assert_array_equal(clean_up(lab, True, spacing), keep_largest_component(lab, spacing=spacing))
    np.testing.assert_array_equal(clean_up(lab, "largest", spacing), keep_largest_component(lab))
    with pytest.raises(ValueError, match="postprocess must be"):
        clean_up(lab, "stacked", spacing)  # type: ignore[arg-type]


@pytest.mark.parametrize("spacing", [None, (1.0, 1.0, 1.0)])
def test_degenerate_grids_where_cc3d_cannot_size_its_labels(spacing: tuple[float, ...] | None) -> None:
    # cc3d fails on a bool 1 x 1 x 3 array with two voxels apart ("maximum length exception"; found by
    # test_properties); the clean-up hands it uint8
    lab = np.array([[[1, 0, 1]]], np.uint8)
    out = keep_largest_component(lab, spacing=spacing, slice_gap_mm=0.0 if spacing else SLICE_GAP_MM)
    assert int((out == 1).sum()) == 1
    assert np.array_equal(keep_largest_component(lab.transpose(2, 1, 0)), out.transpose(2, 1, 0))
