"""Metrics engine: known values, empty-mask policy, symmetry, surfaces (no reference packages)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from thoraxseg.data.overlap import overlap_metrics
from thoraxseg.errors import ConfigError
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.metrics import METRIC_NAMES, compute_metrics
from thoraxseg.metrics.surface import (
    corner_codes,
    directed_surface_distances,
    distance_metrics,
    padded_mask,
    voxel_surface,
)


def _one(gt: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0, 1.0), tol: float = 2.0, code: int = 2) -> dict:
    rows = compute_metrics(gt.astype(np.uint8) * code, pred.astype(np.uint8) * code, spacing, tol, organs=[code])
    return rows[0]


def _box(shape=(12, 12, 12), lo=(3, 3, 3), hi=(9, 9, 9)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


masks = st.integers(0, 2**31 - 1).flatmap(
    lambda seed: st.tuples(st.just(seed), st.tuples(*[st.integers(2, 12)] * 3), st.floats(0.1, 0.7))
)
spacings = st.tuples(*[st.sampled_from([0.5, 0.7, 0.98, 1.0, 1.5, 2.5, 3.0])] * 3)


def _random_mask(seed: int, shape: tuple[int, int, int], density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.random(shape) < density
    return ndimage.binary_closing(m) if seed % 3 == 0 else m


# ----------------------------------------------------------------------------- known values
def test_identical_masks_are_perfect() -> None:
    m = _box()
    r = _one(m, m, (0.8, 0.8, 2.5))
    assert (r["dice"], r["iou"], r["precision"], r["recall"], r["nsd"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (r["hd"], r["hd95"], r["assd"]) == (0.0, 0.0, 0.0)
    assert r["vol_gt_ml"] == pytest.approx(216 * 0.8 * 0.8 * 2.5 / 1000)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_voxel_shift_distance_is_that_axis_spacing(axis: int) -> None:
    spacing = (0.7, 1.3, 2.5)
    gt = _box()
    pred = np.roll(gt, 1, axis=axis)
    r = _one(gt, pred, spacing, tol=0.1)
    assert r["hd"] == pytest.approx(spacing[axis])
    assert r["dice"] == pytest.approx(5 / 6)  # 6-voxel side shifted by one
    # only the faces across the shift move: most surface voxels have distance 0, a few spacing[axis]
    assert 0 < r["assd"] < spacing[axis]
    assert 0 < r["nsd"] < 1


def test_far_apart_hausdorff_in_mm() -> None:
    gt = np.zeros((30, 5, 5), bool)
    gt[2, 2, 2] = True
    pred = np.zeros_like(gt)
    pred[22, 2, 2] = True
    r = _one(gt, pred, (0.5, 1.0, 1.0), tol=2.0)
    assert r["hd"] == pytest.approx(10.0)
    assert r["hd95"] == pytest.approx(10.0)
    assert r["assd"] == pytest.approx(10.0)
    assert r["nsd"] == 0.0 and r["dice"] == 0.0


def test_hd95_is_max_of_directed_percentiles() -> None:
    # GT = large slab, pred = slab + one far outlier voxel: pred->GT has one large distance among many zeros
    gt = _box((40, 12, 12), (2, 2, 2), (10, 10, 10))
    pred = gt.copy()
    pred[35, 5, 5] = True
    r = _one(gt, pred)
    eg, ep = voxel_surface(padded_mask(gt)), voxel_surface(padded_mask(pred))
    d_pg = directed_surface_distances(ep, eg, (1.0, 1.0, 1.0))
    d_gp = directed_surface_distances(eg, ep, (1.0, 1.0, 1.0))
    assert r["hd"] == pytest.approx(26.0)
    assert r["hd95"] == pytest.approx(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
    assert r["hd95"] < 1.0  # a single outlier does not move the 95th percentile
    assert r["assd"] == pytest.approx(np.concatenate([d_pg, d_gp]).mean())


def test_overlap_counts() -> None:
    m = overlap_metrics(tp=30, n_gt=40, n_pred=50, voxel_ml=0.002)
    assert m["dice"] == pytest.approx(60 / 90)
    assert m["iou"] == pytest.approx(30 / 60)
    assert m["precision"] == pytest.approx(30 / 50)
    assert m["recall"] == pytest.approx(30 / 40)
    assert (m["vol_gt_ml"], m["vol_pred_ml"]) == (0.08, 0.1)
    with pytest.raises(ValueError):
        overlap_metrics(tp=41, n_gt=40, n_pred=50, voxel_ml=1.0)


# ----------------------------------------------------------------------------- empty masks
def test_both_empty_is_not_applicable() -> None:
    z = np.zeros((6, 6, 6), bool)
    r = _one(z, z)
    assert r["organ"] == "heart"
    assert all(math.isnan(r[k]) for k in METRIC_NAMES)


def test_prediction_missing_organ() -> None:
    r = _one(_box(), np.zeros((12, 12, 12), bool))
    assert (r["dice"], r["iou"], r["recall"], r["nsd"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(r["precision"])
    assert all(math.isnan(r[k]) for k in ("hd", "hd95", "assd"))
    assert r["vol_gt_ml"] > 0 and r["vol_pred_ml"] == 0.0


def test_false_positive_organ() -> None:
    r = _one(np.zeros((12, 12, 12), bool), _box())
    assert (r["dice"], r["iou"], r["precision"], r["nsd"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(r["recall"]) and math.isnan(r["hd"])


def test_all_organs_in_label_order_and_multilabel_independent() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 5, (10, 11, 9)).astype(np.uint8)
    pred = rng.integers(0, 5, (10, 11, 9)).astype(np.uint8)
    rows = compute_metrics(gt, pred, (1.0, 0.9, 2.0), 2.0)
    assert [r["organ"] for r in rows] == list(ORGAN_NAMES)
    for code, row in enumerate(rows, start=1):
        single = _one(gt == code, pred == code, (1.0, 0.9, 2.0), 2.0, code=code)
        for k in METRIC_NAMES:
            assert (math.isnan(row[k]) and math.isnan(single[k])) or row[k] == single[k]


def test_rejects_bad_arguments() -> None:
    m = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(m, np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(m, m, (1, 0, 1))
    with pytest.raises(ConfigError, match="tolerance"):
        compute_metrics(m, m, (1, 1, 1), tolerance_mm=-1)


# ----------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(a=masks, b=masks, spacing=spacings, tol=st.sampled_from([0.0, 1.0, 2.0, 5.0]))
def test_symmetry_ranges_and_no_inf(a, b, spacing, tol) -> None:
    shape = a[1]
    g = _random_mask(a[0], shape, a[2])
    p = _random_mask(b[0], shape, b[2])
    r = _one(g, p, spacing, tol)
    s = _one(p, g, spacing, tol)
    for k in METRIC_NAMES:
        assert not math.isinf(r[k])
    for k in ("dice", "iou", "hd", "hd95", "assd", "nsd"):
        assert (math.isnan(r[k]) and math.isnan(s[k])) or r[k] == pytest.approx(s[k], abs=1e-9)
    assert (math.isnan(r["precision"]) and math.isnan(s["recall"])) or r["precision"] == s["recall"]
    assert (r["vol_gt_ml"], r["vol_pred_ml"]) == (s["vol_pred_ml"], s["vol_gt_ml"])
    if g.any() and p.any():
        assert 0 <= r["dice"] <= 1 and 0 <= r["nsd"] <= 1
        assert 0 <= r["assd"] <= r["hd"] + 1e-9
        assert 0 <= r["hd95"] <= r["hd"] + 1e-9


@settings(max_examples=30, deadline=None)
@given(a=masks, spacing=spacings, shift=st.tuples(*[st.integers(-3, 3)] * 3))
def test_translation_invariance_with_margin(a, spacing, shift) -> None:
    g = _random_mask(a[0], a[1], a[2])
    p = np.roll(g, 1, axis=0)
    big = tuple(s + 8 for s in g.shape)
    off = tuple(4 + d for d in shift)
    G = np.zeros(big, bool)
    P = np.zeros(big, bool)
    sl = tuple(slice(o, o + s) for o, s in zip(off, g.shape, strict=True))
    G[sl], P[sl] = g, p
    r, R = _one(g, p, spacing), _one(G, P, spacing)
    for k in METRIC_NAMES:
        assert (math.isnan(r[k]) and math.isnan(R[k])) or r[k] == pytest.approx(R[k], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(a=masks)
def test_voxel_surface_is_erosion_xor(a) -> None:
    m = _random_mask(a[0], a[1], a[2])
    expected = m ^ ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    np.testing.assert_array_equal(voxel_surface(padded_mask(m)), expected)


@settings(max_examples=40, deadline=None)
@given(a=masks)
def test_corner_codes_match_2x2x2_correlation(a) -> None:
    m = _random_mask(a[0], a[1], a[2])
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    ext = np.zeros(tuple(s + 1 for s in m.shape), np.uint8)  # one zero voxel on the high side
    ext[:-1, :-1, :-1] = m
    expected = ndimage.correlate(ext.astype(np.int32), kernel, mode="constant", cval=0)
    # DeepMind's corner i covers voxels i-1 and i, the zero voxel -1 coming from cval
    np.testing.assert_array_equal(corner_codes(padded_mask(m)), expected)


def test_nsd_tolerance_is_inclusive() -> None:
    gt = _box()
    pred = np.roll(gt, 2, axis=2)  # corners move by exactly 2 slices = 5.0 mm
    at = distance_metrics(gt, pred, (1.0, 1.0, 2.5), 5.0)["nsd"]
    below = distance_metrics(gt, pred, (1.0, 1.0, 2.5), 4.999)["nsd"]
    assert at == pytest.approx(1.0)
    assert below < 1.0


# ----------------------------------------------------------------------------- scattered foreground
def _scattered(seed: int, shape=(40, 36, 30)) -> tuple[np.ndarray, np.ndarray]:
    """An organ plus stray islands far from it (some touching the border, some only in one mask)."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint8)
    gt[3:12, 4:13, 2:9] = 2
    pred = np.roll(gt, int(rng.integers(-1, 2)), axis=int(rng.integers(0, 3)))
    for vol in (gt, pred, pred):
        for _ in range(int(rng.integers(1, 6))):
            c = [int(rng.integers(0, s)) for s in shape]
            r = [int(rng.integers(0, 3)) for _ in shape]
            vol[max(0, c[0] - r[0]):c[0] + r[0] + 1, max(0, c[1] - r[1]):c[1] + r[1] + 1,
                max(0, c[2] - r[2]):c[2] + r[2] + 1] = 2
    return gt, pred


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spacing=spacings, block=st.sampled_from([2, 3, 4, 8]))
def test_piecewise_surfaces_equal_whole_crop(seed, spacing, block) -> None:
    from thoraxseg.metrics import engine

    gt, pred = _scattered(seed)
    whole = compute_metrics(gt, pred, spacing, 2.0, organs=[2])[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "SPLIT_MIN_VOXELS", 0)
        mp.setattr(engine, "BLOCK", block)
        g, p = gt == 2, pred == 2
        assert len(engine.crop_pieces(g | p)) >= 1
        pieces = compute_metrics(gt, pred, spacing, 2.0, organs=[2])[0]
    for k in METRIC_NAMES:
        assert pieces[k] == pytest.approx(whole[k], abs=1e-12), k


def test_crop_pieces_split_far_islands() -> None:
    from thoraxseg.metrics import engine

    union = np.zeros((160, 160, 64), bool)  # 1.6 M voxels: above the split threshold
    union[10:30, 10:30, 5:20] = True
    union[140:142, 150:152, 60:62] = True
    union[150, 5, 40] = True
    pieces = engine.crop_pieces(union)
    assert len(pieces) == 3
    covered = sum(int(union[box].sum()) if other is None else int((union[box] & ~other).sum()) for box, other in pieces)
    assert covered == int(union.sum())  # every foreground voxel in exactly one piece
    assert engine.crop_pieces(union[:40, :40, :30]) == [((slice(0, 40), slice(0, 40), slice(0, 30)), None)]
