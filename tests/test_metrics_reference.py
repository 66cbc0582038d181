"""Agreement with the reference packages (test-only): MONAI (HD, HD95, ASSD, Dice, IoU) and
DeepMind surface-distance (NSD), to 1e-3, on random anisotropic shapes and on the real CT label."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.metrics import compute_metrics
from thoraxseg.metrics._surfel_table import decode_normals
from thoraxseg.metrics.surface import surfel_area_table

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")
sd = pytest.importorskip("surface_distance")

TOL = 1e-3

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _monai(gt: np.ndarray, pred: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """Per-class MONAI values (classes 1..4) from label volumes, as the MONAI docs prescribe (one-hot)."""
    n = 5
    y = torch.nn.functional.one_hot(torch.from_numpy(gt.astype(np.int64)), n).permute(3, 0, 1, 2)[None].float()
    yp = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), n).permute(3, 0, 1, 2)[None].float()
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": monai_metrics.compute_dice(yp, y, include_background=False)[0].numpy(),
            "iou": monai_metrics.compute_iou(yp, y, include_background=False)[0].numpy(),
            "hd": monai_metrics.compute_hausdorff_distance(yp, y, spacing=sp)[0].numpy(),
            "hd95": monai_metrics.compute_hausdorff_distance(yp, y, percentile=95, directed=False,
                                                             spacing=sp)[0].numpy(),
            "assd": monai_metrics.compute_average_surface_distance(yp, y, symmetric=True, spacing=sp)[0].numpy(),
        }


def _deepmind_nsd(gt: np.ndarray, pred: np.ndarray, spacing, tol: float) -> float:
    r = sd.compute_surface_distances(gt, pred, [float(s) for s in spacing])
    return float(sd.compute_surface_dice_at_tolerance(r, tol))


def _assert_agree(ours: list[dict], gt: np.ndarray, pred: np.ndarray, spacing, tol: float) -> int:
    """Compare every organ present in both volumes; returns how many organs were compared."""
    ref = _monai(gt, pred, spacing)
    compared = 0
    for i, row in enumerate(ours):
        code = i + 1
        g, p = gt == code, pred == code
        if not (g.any() and p.any()):
            continue
        compared += 1
        for k in ("dice", "iou", "hd", "hd95", "assd"):
            assert row[k] == pytest.approx(float(ref[k][i]), abs=TOL), (row["organ"], k)
        assert row["nsd"] == pytest.approx(_deepmind_nsd(g, p, spacing, tol), abs=TOL), row["organ"]
    return compared


def test_surfel_table_is_deepminds() -> None:
    from surface_distance import lookup_tables

    for code in range(256):
        np.testing.assert_allclose(np.asarray(decode_normals(code)).reshape(-1, 3),
                                   np.asarray(lookup_tables._NEIGHBOUR_CODE_TO_NORMALS[code]).reshape(-1, 3))
    for spacing in [(1.0, 1.0, 1.0), (0.98, 0.98, 2.5), (0.5, 1.7, 3.0)]:
        np.testing.assert_allclose(surfel_area_table(spacing),
                                   lookup_tables.create_table_neighbour_code_to_surface_area(spacing), rtol=1e-12)


def _shapes(seed: int, shape: tuple[int, int, int], kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Random multi-organ label pairs: noise, blobs (smoothed noise), or boxes; organs may touch the border."""
    rng = np.random.default_rng(seed)
    if kind == 0:
        gt = rng.integers(0, 5, shape)
        pred = np.where(rng.random(shape) < 0.3, rng.integers(0, 5, shape), gt)
    elif kind == 1:
        field = ndimage.gaussian_filter(rng.random((4, *shape)), 1.0)
        gt = np.where(field.max(0) > np.quantile(field.max(0), 0.4), field.argmax(0) + 1, 0)
        noise = ndimage.gaussian_filter(rng.random(shape), 0.7)
        pred = np.where(noise > np.quantile(noise, 0.85), 0, gt)
        pred = np.where((noise < np.quantile(noise, 0.05)) & (gt == 0), 2, pred)
    else:
        gt = np.zeros(shape, int)
        pred = np.zeros(shape, int)
        for code in range(1, 5):
            for vol in (gt, pred):
                lo = [int(rng.integers(0, s)) for s in shape]
                hi = [int(rng.integers(lo_ + 1, s + 1)) for lo_, s in zip(lo, shape, strict=True)]
                vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = code
    return gt.astype(np.uint8), pred.astype(np.uint8)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(*[st.integers(3, 14)] * 3),
    kind=st.integers(0, 2),
    spacing=st.tuples(*[st.floats(0.3, 4.0, allow_nan=False).map(lambda v: round(v, 3))] * 3),
    tol=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
)
def test_random_anisotropic_shapes_match_monai_and_deepmind(seed, shape, kind, spacing, tol) -> None:
    gt, pred = _shapes(seed, shape, kind)
    ours = compute_metrics(gt, pred, spacing, tol)
    _assert_agree(ours, gt, pred, spacing, tol)


def test_nsd_ties_at_tolerance_match_deepmind() -> None:
    # integer spacings make many distances exactly equal to the tolerance
    rng = np.random.default_rng(7)
    for _ in range(10):
        g = ndimage.binary_opening(rng.random((12, 12, 8)) < 0.6)
        p = ndimage.binary_opening(rng.random((12, 12, 8)) < 0.6)
        if not (g.any() and p.any()):
            continue
        for spacing, tol in [((1.0, 1.0, 2.0), 2.0), ((0.5, 0.5, 1.5), 1.5), ((1.0, 1.0, 1.0), 1.0)]:
            ours = compute_metrics(g.astype(np.uint8) * 3, p.astype(np.uint8) * 3, spacing, tol, organs=[3])
            assert ours[0]["nsd"] == pytest.approx(_deepmind_nsd(g, p, spacing, tol), abs=1e-9)


@pytest.mark.realct
def test_real_ct_perturbed_labels_match(realct_dir) -> None:
    from thoraxseg.data.volume import load_label

    vol = load_label(realct_dir / "GT.nii.gz")
    gt = vol.array
    heart, aorta = gt == 2, gt == 4
    pred = np.zeros_like(gt)
    pred[ndimage.binary_dilation(np.roll(heart, (2, -1, 1), axis=(0, 1, 2)), iterations=1)] = 2
    pred[ndimage.binary_erosion(aorta, iterations=1)] = 4
    pred[30:34, 40:44, 10:12] = 1  # a false-positive esophagus blob (GT has none)
    ours = compute_metrics(gt, pred, vol.spacing, 2.0)
    assert _assert_agree(ours, gt, pred, vol.spacing, 2.0) == 2
    rows = {r["organ"]: r for r in ours}
    assert rows["esophagus"]["dice"] == 0.0 and math.isnan(rows["esophagus"]["hd"])
    assert all(math.isnan(v) for k, v in rows["trachea"].items() if k != "organ")
    assert rows["heart"]["vol_gt_ml"] == pytest.approx(668.8, abs=0.1)  # README: 198,166 voxels of 1.5 mm
    assert 0.5 < rows["heart"]["dice"] < 1.0 and rows["heart"]["hd"] > 3.0
    assert [r["organ"] for r in ours] == list(ORGAN_NAMES)


def test_scattered_islands_piecewise_match_references(monkeypatch: pytest.MonkeyPatch) -> None:
    from thoraxseg.metrics import engine

    monkeypatch.setattr(engine, "SPLIT_MIN_VOXELS", 0)
    monkeypatch.setattr(engine, "BLOCK", 4)
    rng = np.random.default_rng(11)
    shape = (48, 40, 24)
    gt = np.zeros(shape, np.uint8)
    gt[5:20, 6:18, 3:12] = 2
    gt[30:38, 25:33, 14:22] = 4
    pred = np.roll(gt, 1, axis=0)
    for _ in range(12):  # stray islands of both organs, some touching the border
        c = [int(rng.integers(0, s)) for s in shape]
        pred[c[0]:c[0] + 2, c[1]:c[1] + 2, c[2]:c[2] + 1] = int(rng.choice([2, 4]))
    assert len(engine.crop_pieces((gt == 2) | (pred == 2))) > 1
    spacing = (0.8, 1.1, 2.7)
    ours = compute_metrics(gt, pred, spacing, 2.0)
    assert _assert_agree(ours, gt, pred, spacing, 2.0) == 2
