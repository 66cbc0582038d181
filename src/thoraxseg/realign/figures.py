"""Before/after overlay figure of a label fix (axial and coronal), as a PNG.

The CT is reoriented to RAS+ (nibabel) and shown in radiological convention: patient's right on
the left of the screen, anterior up (axial), superior up (coronal), with the true voxel aspect
ratio. Contours: clean label (green), moved label before the fix (red, dashed), fixed label
(yellow). Slices pass through the clean (or fixed) organ's centroid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thoraxseg.data.volume import Volume, load_image, load_label, to_ras
from thoraxseg.labels import label_name
from thoraxseg.realign.geometry import centroid, mask_bbox
from thoraxseg.utils.atomic import atomic_path

VolumeLike = Volume | str | Path | np.ndarray

_COLORS = {"clean": "#33cc33", "before": "#ff3030", "after": "#ffd21f"}


def _as_array(v: VolumeLike | None, loader: object, affine: np.ndarray | None) -> tuple[np.ndarray | None,
                                                                                         np.ndarray | None]:
    if v is None:
        return None, affine
    if isinstance(v, np.ndarray):
        return v, affine
    if isinstance(v, Volume):
        return v.array, v.affine
    vol = loader(v)  # type: ignore[operator]
    return vol.array, vol.affine


def overlay_png(
    image: VolumeLike,
    before: VolumeLike | None,
    after: VolumeLike | None,
    clean: VolumeLike | None,
    label: int,
    out: str | Path,
    title: str | None = None,
    window: tuple[float, float] = (-1000.0, 400.0),
    zoom_margin_mm: float = 40.0,
    dpi: int = 110,
) -> Path:
    """Draw axial and coronal views of ``image`` with the label's contours before/after the fix.

    Parameters
    ----------
    image
        CT (Volume, NIfTI path, or ``(x, y, z)`` array in HU — an array is taken as RAS-ordered
        with unit spacing).
    before, after, clean
        Label volumes (Volume, path or array on the image grid), or None to leave one out.
    label
        Label code whose contours are drawn.
    out
        PNG path (written atomically).
    title
        Figure title; default names the organ.
    window
        Display window (HU): low, high.
    zoom_margin_mm
        The views show the box around all contours (in 3D) plus this margin.
    dpi
        Resolution.

    Returns
    -------
    Path
        ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ct, affine = _as_array(image, load_image, None)
    assert ct is not None
    if affine is None:
        affine = np.eye(4)
    layers: dict[str, np.ndarray] = {}
    for name, vol in (("clean", clean), ("before", before), ("after", after)):
        arr, _ = _as_array(vol, load_label, affine)
        if arr is not None:
            if arr.shape != ct.shape:
                raise ValueError(f"{name} label shape {arr.shape} differs from image shape {ct.shape}")
            layers[name] = arr == label
    ct_ras, ras_spacing = to_ras(ct, affine)
    spacing = np.asarray(ras_spacing)  # mm per RAS voxel axis
    masks = {k: to_ras(v, affine)[0] for k, v in layers.items()}
    ref = next((masks[k] for k in ("clean", "after", "before") if k in masks and masks[k].any()), None)
    center = np.rint(centroid(ref)).astype(int) if ref is not None else np.asarray(ct_ras.shape) // 2

    # zoom on the organ: union of all contours plus a margin (mm), in RAS voxel indices
    union = np.zeros(ct_ras.shape, dtype=bool)
    for mask in masks.values():
        union |= mask
    box = mask_bbox(union) if union.any() else None
    margin = np.ceil(zoom_margin_mm / spacing).astype(int)
    if box is None:
        lo, hi = np.zeros(3, int), np.asarray(ct_ras.shape)
    else:
        lo = np.maximum(box[0] - margin, 0)
        hi = np.minimum(box[1] + margin, np.asarray(ct_ras.shape))

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 5.4), facecolor="black")
    views = (
        ("axial", lambda a: a[:, :, center[2]].T, spacing[1] / spacing[0], (0, 1), center[2]),
        ("coronal", lambda a: a[:, center[1], :].T, spacing[2] / spacing[0], (0, 2), center[1]),
    )
    for ax, (name, cut, aspect, (u, v), index) in zip(axes, views, strict=True):
        ax.imshow(cut(ct_ras), cmap="gray", vmin=window[0], vmax=window[1], origin="lower", aspect=aspect,
                  interpolation="nearest")
        for key in ("clean", "before", "after"):  # clean drawn first and wider, so it shows under "fixed"
            if key not in masks:
                continue
            sl = cut(masks[key])
            if sl.any():
                ax.contour(sl.astype(np.float32), levels=[0.5], colors=_COLORS[key],
                           linewidths=3.2 if key == "clean" else 1.5, linestyles="--" if key == "before" else "-")
        # radiological convention: patient's right on the screen's left (x limits reversed)
        ax.set_xlim(hi[u] - 0.5, lo[u] - 0.5)
        ax.set_ylim(lo[v] - 0.5, hi[v] - 0.5)
        ax.set_title(f"{name} (slice {index})", color="white", fontsize=10)
        ax.set_axis_off()
    handles = [Line2D([0], [0], color=_COLORS[k], lw=2, ls="--" if k == "before" else "-")
               for k in ("clean", "before", "after") if k in masks]
    names = {"clean": "clean", "before": "moved (before fix)", "after": "fixed"}
    fig.legend(handles, [names[k] for k in ("clean", "before", "after") if k in masks], loc="lower center",
               ncol=3, frameon=False, labelcolor="white", fontsize=10)
    try:
        organ = label_name(label)
    except KeyError:
        organ = f"label {label}"
    fig.suptitle(title or f"{organ}: before / after realignment", color="white", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out_path = Path(out)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor="black", format="png")
    plt.close(fig)
    return out_path
