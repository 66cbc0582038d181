"""Make ``docs/img/phantom_vs_real.png``: a full-size phantom next to the real CT ``Patient_R1``.

One axial, one coronal and one sagittal slice of each, labels overlaid with
:data:`thoraxseg.labels.LABEL_COLORS`, CT window W400/L40 (plus a lung-window
axial), both displayed anatomically upright: anterior up in axial, cranial up
in coronal/sagittal, the patient's left on the image right (radiological view).
Both volumes are stored with ``('L', 'P', 'S')`` voxel axes, so one display
routine serves both. Pixels are drawn at their true size in mm.

Usage::

    python scripts/make_phantom_figure.py [--seed 0] [--index 0] [--realct DIR] [--out PNG]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap

from thoraxseg.data.phantom import generate_case
from thoraxseg.data.volume import Volume, load_image, load_label
from thoraxseg.labels import LABEL_COLORS, ORGAN_NAMES, ORGANS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REALCT = ROOT.parent / "shared" / "data" / "realct" / "Patient_R1"


def _overlay_cmap() -> ListedColormap:
    colors = [(0, 0, 0, 0)] + [(*LABEL_COLORS[int(o)], 0.22) for o in ORGANS]
    return ListedColormap(colors)


def _views(image: Volume, labels: np.ndarray, center: tuple[int, int, int]) -> list[tuple[np.ndarray, ...]]:
    """(ct, labels, extent) of the axial, coronal and sagittal slices through ``center`` (voxels)."""
    if nib.aff2axcodes(image.affine) != ("L", "P", "S"):
        raise SystemExit(f"expected ('L', 'P', 'S') voxel axes, got {nib.aff2axcodes(image.affine)}")
    a = image.array.astype(np.float32)
    sx, sy, sz = image.spacing
    nx, ny, nz = a.shape
    i, j, k = center
    axial = (a[:, :, k].T, labels[:, :, k].T, (0, nx * sx, ny * sy, 0))  # rows: anterior → posterior
    coronal = (a[:, j, ::-1].T, labels[:, j, ::-1].T, (0, nx * sx, 0, nz * sz))  # rows: cranial → caudal
    sagittal = (a[i, :, ::-1].T, labels[i, :, ::-1].T, (0, ny * sy, 0, nz * sz))  # columns: anterior → posterior
    return [axial, coronal, sagittal]


def _crop_like(image: Volume, labels: np.ndarray, center: np.ndarray, size_mm: np.ndarray) -> tuple[Volume, np.ndarray]:
    """Crop a box of ``size_mm`` (x, y, z) centred at voxel ``center`` — the real CT's field of view."""
    sp = np.asarray(image.spacing)
    half = np.round(size_mm / sp / 2.0).astype(int)
    lo = np.maximum(center - half, 0)
    hi = np.minimum(center + half, image.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    aff = image.affine.copy()
    aff[:3, 3] = image.affine[:3, :3] @ lo + image.affine[:3, 3]
    return Volume(image.array[sl], aff), labels[sl]


def make_figure(out: Path, seed: int = 0, index: int = 0, realct: Path = DEFAULT_REALCT) -> Path:
    """Render the comparison figure to ``out`` and return it."""
    case = generate_case(seed, index, "full")
    real_img = load_image(realct / f"{realct.name}.nii.gz")
    real_lab = load_label(realct / "GT.nii.gz").array
    rh = np.argwhere(real_lab == 2)
    rc = rh.mean(axis=0)
    real_size = np.asarray(real_img.shape) * np.asarray(real_img.spacing)
    # phantom: the same field of view (mm) as the real crop, placed around the heart like the real one
    real_offset_mm = (rc - np.asarray(real_img.shape) / 2.0) * np.asarray(real_img.spacing)
    heart = np.argwhere(case.labels == 2).mean(axis=0)
    center = np.round(heart - real_offset_mm / np.asarray(case.image.spacing)).astype(int)
    ph_img, ph_lab = _crop_like(case.image, case.labels, center, real_size)
    hp = np.argwhere(ph_lab == 2)
    hc = hp.mean(axis=0).astype(int)
    rows = [("synthetic phantom (--size full)", ph_img, ph_lab,
             (int(hc[0]) - 10, int(hc[1]) + 8, int(np.percentile(hp[:, 2], 62)))),
            (f"real CT {realct.name} (CTA)", real_img, real_lab,
             (int(rc[0]) - 12, int(rc[1]) + 10, int(np.percentile(rh[:, 2], 62))))]
    whole = [(case.image, case.labels, int(np.percentile(np.argwhere(case.labels == 2)[:, 2], 62)))]
    cmap = _overlay_cmap()
    fig, axes = plt.subplots(2, 4, figsize=(17, 9.4), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for r, (title, img, lab, center) in enumerate(rows):
        views = _views(img, lab, center)
        names = ["axial", "coronal", "sagittal"]
        for c, (ct, lb, ext) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(ct, cmap="gray", vmin=40 - 200, vmax=40 + 200, extent=ext, interpolation="bilinear")
            ax.imshow(np.ma.masked_equal(lb, 0), cmap=cmap, vmin=-0.5, vmax=4.5, extent=ext, interpolation="nearest")
            for o in ORGANS:
                if (lb == int(o)).any():
                    ax.contour((lb == int(o)).astype(np.float32), levels=[0.5], colors=[LABEL_COLORS[int(o)]],
                               linewidths=0.8, origin="upper", extent=ext)
            ax.set_title(f"{names[c]} (W400/L40)", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        if r == 0:  # the whole phantom slice, lung window
            img0, lab0, k0 = whole[0]
            ct, _, ext = _views(img0, lab0, (0, 0, k0))[0]
            title4 = "whole phantom slice (lung window)"
        else:
            ct, _, ext = views[0]
            title4 = "axial (lung window)"
        ax = axes[r, 3]
        ax.imshow(ct, cmap="gray", vmin=-600 - 750, vmax=-600 + 750, extent=ext, interpolation="bilinear")
        ax.set_title(f"{title4} W1500/L-600", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=11)
    handles = [plt.Rectangle((0, 0), 1, 1, color=LABEL_COLORS[int(o)]) for o in ORGANS]
    fig.legend(handles, list(ORGAN_NAMES), loc="lower center", ncol=4, frameon=False, fontsize=11)
    fig.suptitle("Synthetic thorax phantom (top) vs real thoracic CT (bottom); anterior up, patient left on the right",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0, help="patient index in the cohort (0-based)")
    parser.add_argument("--realct", type=Path, default=DEFAULT_REALCT, help="folder with Patient_R1.nii.gz + GT.nii.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "phantom_vs_real.png")
    args = parser.parse_args()
    print(make_figure(args.out, args.seed, args.index, args.realct))


if __name__ == "__main__":
    main()
