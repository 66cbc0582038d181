"""A tiny synthetic SegTHOR-layout cohort for the 2D-arm tests (and a check that it is valid).

Each "patient" is a small CT (default 32×32×8 voxels, 2×2×3 mm, int16 HU) with an
elliptic soft-tissue body in air and the four organs as simple shapes whose HU
differ: esophagus (tube, 15 HU), heart (ellipsoid, 60 HU), trachea (air tube,
−950 HU), aorta (contrast tube, 250 HU). Positions jitter per patient (seeded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thoraxseg.data.layout import labelled_cases
from thoraxseg.data.volume import Volume, load_image, load_label, save_label, save_volume


def make_toy_case(shape: tuple[int, int, int] = (32, 32, 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CT ``(x, y, z)`` int16 HU and label uint8 of one toy patient."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    cx, cy = nx / 2 + rng.uniform(-1.5, 1.5), ny / 2 + rng.uniform(-1.5, 1.5)
    ct = np.full(shape, -1000.0)
    lab = np.zeros(shape, np.uint8)
    body = ((x - cx) / (0.45 * nx)) ** 2 + ((y - cy) / (0.38 * ny)) ** 2 <= 1
    ct[body] = 40.0
    lung = body & (((x - cx) / (0.35 * nx)) ** 2 + ((y - cy) / (0.28 * ny)) ** 2 <= 1)
    ct[lung] = -850.0
    s = nx / 32.0
    heart = ((x - cx - 3 * s) / (6 * s)) ** 2 + ((y - cy + 4 * s) / (5 * s)) ** 2 + ((z - nz * 0.6) / (nz * 0.35)) ** 2 <= 1
    aorta = ((x - cx + 4 * s) ** 2 + (y - cy - 4 * s) ** 2 <= (2.2 * s) ** 2)
    trachea = ((x - cx) ** 2 + (y - cy + 1 * s) ** 2 <= (2.0 * s) ** 2) & (z >= nz * 0.3)
    esophagus = ((x - cx + 0.5 * s) ** 2 + (y - cy - 4.5 * s) ** 2 <= (1.6 * s) ** 2)
    for mask, code, hu in ((heart, 2, 60.0), (aorta, 4, 250.0), (trachea, 3, -950.0), (esophagus, 1, 15.0)):
        ct[mask] = hu
        lab[mask] = code
    ct += rng.normal(0, 10, shape)
    return np.round(ct).astype(np.int16), lab


def make_toy_cohort(root: Path, cases: int = 4, shape: tuple[int, int, int] = (32, 32, 8), seed: int = 0) -> Path:
    """Write ``root/train/Patient_XX/{Patient_XX.nii.gz, GT.nii.gz}``; returns ``root``."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-30.0, -30.0, -12.0]
    for i in range(1, cases + 1):
        ct, lab = make_toy_case(shape, seed * 1000 + i)
        folder = root / "train" / f"Patient_{i:02d}"
        vol = Volume(ct, affine)
        save_volume(vol, folder / f"Patient_{i:02d}.nii.gz")
        save_label(lab, vol, folder / "GT.nii.gz")
    return root


def test_toy_cohort_is_a_valid_labelled_dataset(tmp_path: Path) -> None:
    root = make_toy_cohort(tmp_path, cases=2, shape=(24, 20, 6))
    cases = labelled_cases(root)
    assert [c.patient_id for c in cases] == ["Patient_01", "Patient_02"]
    img, lab = load_image(cases[0].image_path), load_label(cases[0].label_path)
    assert img.shape == lab.shape == (24, 20, 6)
    assert set(np.unique(lab.array).tolist()) == {0, 1, 2, 3, 4}
    assert img.array[lab.array == 4].mean() > img.array[lab.array == 2].mean() > img.array[lab.array == 3].mean()
