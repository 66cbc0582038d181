"""3D surface renders of the four organs (marching cubes + matplotlib), as PNG bytes.

Each organ mask is cropped to its bounding box, subsampled with a per-axis
stride so the voxels are roughly isotropic and at most ~``max_voxels`` per axis,
lightly smoothed (Gaussian, σ = 0.7 voxel) and meshed with
:func:`skimage.measure.marching_cubes` at level 0.5 **with the voxel spacing**
(mm), so shapes have their true proportions. All organs of one panel go into a
single :class:`~mpl_toolkits.mplot3d.art3d.Poly3DCollection`, so matplotlib's
per-face depth sort handles organs in front of each other; faces are shaded
with a fixed headlight (Lambert).

Volumes are RAS+ canonical (axes towards Right, Anterior, Superior); the default
view looks at the patient from the front (anterior), patient right on the
viewer's left; the default camera is anterior-left oblique (:data:`VIEW`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from scipy import ndimage
from skimage.measure import marching_cubes

from thoraxseg.labels import LABEL_COLORS, ORGANS
from thoraxseg.report.figures import new_figure, organ_legend, to_png

#: Camera: elevation and azimuth in degrees (azimuth 90° = camera in front of the patient, 120° = anterior-left
#: oblique, so the heart does not hide the great vessels).
VIEW: tuple[float, float] = (15.0, 120.0)


def organ_mesh(mask: np.ndarray, spacing: Sequence[float], max_voxels: int = 72, sigma: float = 0.7
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Surface mesh of a boolean mask in mm (world = voxel index × spacing, RAS+ axes).

    Parameters
    ----------
    mask
        Boolean volume, axes ``(x, y, z)``.
    spacing
        Voxel size in mm along ``(x, y, z)``.
    max_voxels
        Upper bound on the subsampled grid size along each axis of the bounding box.
    sigma
        Gaussian smoothing (voxels of the subsampled grid) before meshing; 0 = none.

    Returns
    -------
    (vertices, faces) or None
        Vertices in mm (N×3), triangle indices (M×3); None for an empty mask.

    Examples
    --------
    >>> m = np.zeros((20, 20, 10), bool); m[5:15, 5:15, 2:8] = True
    >>> v, f = organ_mesh(m, (1.0, 1.0, 2.5))
    >>> bool(v[:, 2].max() - v[:, 2].min() > 12)   # 6 slices × 2.5 mm
    True
    """
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    lo = idx.min(axis=0)
    hi = idx.max(axis=0) + 1
    sp = np.asarray(spacing, dtype=np.float64)
    extent_mm = (hi - lo) * sp
    target = max(float(sp.min()), float(extent_mm.max()) / max_voxels)
    stride = np.maximum(1, np.round(target / sp)).astype(int)
    sub = mask[lo[0]:hi[0]:stride[0], lo[1]:hi[1]:stride[1], lo[2]:hi[2]:stride[2]]
    field = np.pad(sub.astype(np.float32), 2)
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma)
    if field.max() <= 0.5:  # tiny structure smoothed away: mesh the raw mask instead
        field = np.pad(sub.astype(np.float32), 2)
    step = sp * stride
    verts, faces, _normals, _values = marching_cubes(field, level=0.5, spacing=tuple(step))
    verts += (lo - 2 * stride) * sp  # back to mm in the full grid
    return verts, faces


def _shade(triangles: np.ndarray, color: Sequence[float], light: np.ndarray) -> np.ndarray:
    """RGBA face colours: ambient 0.35 + Lambert 0.65 with a headlight along ``light``."""
    n = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = n / np.where(norm == 0, 1, norm)
    lambert = np.abs(n @ light)
    shade = 0.35 + 0.65 * lambert
    rgb = np.clip(np.asarray(color)[None, :] * shade[:, None] + 0.08 * lambert[:, None] ** 8, 0, 1)
    return np.concatenate([rgb, np.ones((rgb.shape[0], 1))], axis=1)


def _light_direction(elev: float, azim: float) -> np.ndarray:
    e, a = np.deg2rad(elev), np.deg2rad(azim)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def render_surfaces_png(panels: Sequence[tuple[str, np.ndarray]], spacing: Sequence[float],
                        view: tuple[float, float] = VIEW, max_voxels: int = 72) -> bytes:
    """One 3D panel per label volume (e.g. GT and each arm of one case), organs coloured by label.

    Parameters
    ----------
    panels
        ``(title, label_volume)`` pairs; volumes share one RAS+ grid with ``spacing`` (mm).
    view
        (elevation, azimuth) in degrees.
    """
    elev, azim = view
    light = _light_direction(elev, azim)
    meshes: list[list[tuple[np.ndarray, int]]] = []
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for _title, labels in panels:
        tri_list = []
        for organ in ORGANS:
            mesh = organ_mesh(labels == int(organ), spacing, max_voxels=max_voxels)
            if mesh is None:
                continue
            verts, faces = mesh
            tri_list.append((verts[faces], int(organ)))
            lo = np.minimum(lo, verts.min(axis=0))
            hi = np.maximum(hi, verts.max(axis=0))
        meshes.append(tri_list)
    n = len(panels)
    fig = new_figure(min(2.9 * n, 14.0), 3.9)
    if not np.all(np.isfinite(lo)):
        lo, hi = np.zeros(3), np.ones(3)
    pad = 0.02 * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    for k, ((title, _), tri_list) in enumerate(zip(panels, meshes, strict=True)):
        ax = fig.add_subplot(1, n, k + 1, projection="3d")
        if tri_list:
            tris = np.concatenate([t for t, _ in tri_list])
            colors = np.concatenate([_shade(t, LABEL_COLORS[o], light) for t, o in tri_list])
            ax.add_collection3d(Poly3DCollection(tris, facecolors=colors, edgecolors="none", linewidths=0))
        else:
            ax.text2D(0.5, 0.5, "no organ", transform=ax.transAxes, ha="center", color="#888")
        for axis, set_lim in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
            set_lim(lo[axis], hi[axis])
        ax.set_box_aspect(tuple(hi - lo), zoom=1.25)  # true proportions (mm)
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(title, fontsize=10, pad=0)
    organ_legend(fig, styles=())
    fig.subplots_adjust(left=0, right=1, top=0.94, bottom=0.06, wspace=0)
    return to_png(fig)
