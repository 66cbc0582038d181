"""``preview.png``: axial, coronal and sagittal CT slices with the organ overlay, in radiological view.

The volume is reoriented to the closest RAS+ voxel order (nibabel), then shown as a
radiologist reads it: axial from the feet (patient's right on the image's left, anterior
at the top), coronal from the front (right on the left, superior at the top), sagittal from
the patient's left (anterior on the left, superior at the top). Each panel carries its
orientation letters and is drawn with the true in-plane voxel aspect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thoraxseg.data.volume import Volume, to_ras
from thoraxseg.labels import LABEL_COLORS, ORGANS, label_name
from thoraxseg.utils.atomic import atomic_path

#: CT display window (HU): soft tissue, wide enough for the airways.
WINDOW = (-1000.0, 600.0)


def radiological_views(ras: np.ndarray, point: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three display images through ``point`` (RAS voxel indices) of a RAS+ ordered array.

    Image rows run top → bottom, columns left → right on screen:
    ``axial`` rows A→P, columns R→L; ``coronal`` rows S→I, columns R→L; ``sagittal`` rows S→I, columns A→P.

    >>> v = np.zeros((4, 5, 6)); v[3, 4, 2] = 1  # patient's far right, most anterior
    >>> np.argwhere(radiological_views(v, (3, 4, 2))["axial"]).tolist()  # top row, left column
    [[0, 0]]
    """
    i, j, k = point
    return {
        "axial": ras[::-1, ::-1, k].T,
        "coronal": ras[::-1, j, ::-1].T,
        "sagittal": ras[i, ::-1, ::-1].T,
    }


#: Letters at (left, right, top, bottom) of each panel.
LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def write_preview(ct: Volume, labels: np.ndarray, path: str | Path, title: str = "") -> None:
    """Draw the three views through the centroid of the labelled organs (the volume centre when none)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ct_ras, sp = to_ras(ct.array, ct.affine)
    lab_ras, _ = to_ras(labels, ct.affine)
    idx = np.argwhere(lab_ras > 0)
    point = tuple(int(np.rint(v)) for v in (idx.mean(0) if len(idx) else (np.array(lab_ras.shape) - 1) / 2))
    cts, labs = radiological_views(ct_ras, point), radiological_views(lab_ras, point)
    # pixel aspect (row spacing / column spacing) of each display
    aspect = {"axial": sp[1] / sp[0], "coronal": sp[2] / sp[0], "sagittal": sp[2] / sp[1]}
    colors = np.zeros((max(LABEL_COLORS) + 1, 4))
    for code, rgb in LABEL_COLORS.items():
        colors[code] = (*rgb, 0.5)
    cmap = ListedColormap(colors)
    fig = Figure(figsize=(13, 5), dpi=100, facecolor="black")
    axes = fig.subplots(1, 3)
    for ax, view in zip(axes, ("axial", "coronal", "sagittal"), strict=True):
        ax.imshow(cts[view], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect[view],
                  interpolation="nearest")
        ax.imshow(labs[view], cmap=cmap, vmin=0, vmax=len(colors) - 1, aspect=aspect[view], interpolation="nearest")
        ax.set_title(view, color="white")
        ax.set_axis_off()
        left, right, top, bottom = LETTERS[view]
        style = {"color": "yellow", "fontsize": 14, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    handles = [Patch(color=LABEL_COLORS[int(o)], label=label_name(o)) for o in ORGANS]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, labelcolor="white")
    if title:
        fig.suptitle(title, color="white")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor="black")
