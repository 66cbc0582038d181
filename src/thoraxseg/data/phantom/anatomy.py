"""Per-patient anatomy of the synthetic thorax: parameters (mm, HU) and shapes (SDFs).

Every quantity is in the patient frame of :mod:`~thoraxseg.data.phantom.geometry`
(``X`` left, ``Y`` posterior, ``Z`` cranial, mm; ``Z = 0`` at the carina), so the
same parameters give the same patient on any voxel grid (``small`` is the
``full`` patient on a 4× coarser grid).

:func:`sample_patient` draws a :class:`PatientParams` (sizes, positions,
rotation, contrast level, noise…) from a NumPy generator; :class:`Anatomy`
derives from it the centre lines, ellipsoids and vessel trees, and rasterises
them as signed distance fields on a :class:`~thoraxseg.data.phantom.geometry.Grid`.

Examples
--------
>>> import numpy as np
>>> p = sample_patient(np.random.default_rng(0))
>>> 0.85 < p.scale < 1.2 and 150 <= p.hu_contrast <= 350
True
>>> a = Anatomy(p)
>>> bool(a.heart_center[0] > 0 and a.heart_center[2] < 0)   # left of midline, below the carina
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from thoraxseg.data.phantom.geometry import (
    FAR,
    Field,
    Grid,
    Tube,
    ellipse_sdf,
    ellipsoid_sdf,
    render_segments,
    rotation_from_angles,
    segment_sdf,
    smooth_min,
)

#: SegTHOR in-plane grid of ``--size full`` (voxels).
FULL_INPLANE: int = 512
#: Coarsening factor of ``--size small`` in-plane (128 × 128).
SMALL_FACTOR: int = 4
#: Coarsening factor of ``--size small`` along z. Equal to the in-plane factor, as
#: :func:`thoraxseg.data.transforms.grid_scale` assumes: the course corruption then
#: moves a small heart by the same millimetres as a full one.
SMALL_Z_FACTOR: int = 4
#: SegTHOR slice-count range (full size).
SLICES_RANGE: tuple[int, int] = (135, 284)
#: SegTHOR slice-spacing range (mm, full size).
SLICE_SPACING_RANGE: tuple[float, float] = (2.0, 3.7)


@dataclass
class PatientParams:
    """Everything that makes one synthetic patient (mm, degrees, HU).

    The patient frame is ``X`` left, ``Y`` posterior, ``Z`` cranial with the origin
    at the body centre (in-plane) and the carina (``Z``).
    """

    # placement in the field of view (full-size grid)
    spacing_xy: float  #: in-plane voxel size of the full grid (mm)
    slice_spacing: float  #: slice spacing of the full grid (mm)
    n_slices: int  #: slice count of the full grid
    z_top: float  #: Z of the most cranial slice centre (mm)
    center_du: float  #: body centre offset from the FOV centre along i (mm)
    center_dv: float  #: body centre offset from the FOV centre along j (mm)
    rotation_deg: float  #: in-plane rotation of the patient (degrees)
    # body habitus
    scale: float  #: overall size factor
    adiposity: float  #: 0 lean … 1 obese
    body_half_width: float
    body_half_depth_ant: float
    body_half_depth_post: float
    fat_ant: float  #: subcutaneous fat, anterior/lateral (mm)
    fat_post: float  #: subcutaneous fat, posterior (mm)
    muscle_lat: float  #: chest-wall muscle + ribs, lateral (mm)
    muscle_ant: float  #: pectoral muscle + sternum, anterior (mm)
    # skeleton
    kyphosis: float  #: posterior bulge of the mid-thoracic spine (mm)
    vertebra_height: float  #: vertebral level height incl. disc (mm)
    vertebra_phase: float  #: Z of a disc centre (mm)
    # lungs and diaphragm
    z_apex: float  #: lung apex height above the carina (mm)
    z_dome_right: float  #: right hemidiaphragm dome (mm, negative)
    z_dome_left: float  #: left hemidiaphragm dome (mm, negative)
    dome_drop: float  #: dome-to-recess drop one radius out (mm)
    # airway
    trachea_radius: float  #: outer radius (mm)
    trachea_wall: float  #: wall thickness (mm)
    trachea_dx: float
    # esophagus
    esophagus_a: float  #: lateral semi-axis of the collapsed tube (mm)
    esophagus_b: float  #: antero-posterior semi-axis (mm)
    esophagus_dx: float  #: left shift of its course (mm)
    esophagus_air_radius: float  #: air lumen radius (mm); 0 = no air
    esophagus_air_z0: float  #: air lumen Z range (mm)
    esophagus_air_z1: float
    esophagus_sleeve: float  #: peri-esophageal soft-tissue sleeve (mm)
    # vessels and heart
    aorta_radius: float  #: ascending aorta radius (mm)
    arch_height: float  #: arch top above the carina (mm)
    heart_scale: float
    heart_dx: float
    heart_dy: float
    heart_dz: float  #: vertical shift of the heart (mm)
    heart_yaw: float  #: extra rotation of the heart about Z (degrees)
    heart_epi_fat: float  #: epicardial fat under the pericardium (mm)
    # intensities (HU)
    hu_fat: float
    hu_muscle: float
    hu_lung: float
    hu_lung_gradient: float  #: posterior (dependent) minus anterior lung density
    hu_contrast: float  #: aorta / left-heart blood
    hu_right_blood: float  #: right heart / pulmonary artery blood
    hu_vein: float  #: systemic veins (SVC, brachiocephalic)
    hu_myocardium: float
    hu_esophagus: float
    hu_sleeve: float  #: peri-esophageal tissue (a few HU off the esophagus)
    hu_cortex: float
    hu_marrow: float
    hu_liver: float
    noise_sd: float  #: image noise standard deviation (HU)
    tree_seed: int  #: seed of the pulmonary vessel trees

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats rounded to 4 decimals)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k] = round(float(v), 4) if isinstance(v, float) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatientParams:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def sample_patient(rng: np.random.Generator) -> PatientParams:
    """Draw one adult patient: habitus, organ sizes and positions, contrast, noise, grid."""
    u = rng.uniform
    s = float(np.clip(rng.normal(1.0, 0.055), 0.88, 1.14))
    ob = float(u(0.0, 1.0))
    contrast = float(u(150.0, 350.0))
    z_apex = 118.0 * s + u(-8, 8)
    z_dome_r = -118.0 * s + u(-12, 12)
    z_dome_l = z_dome_r - u(8, 22)
    dome_drop = 38.0 * s + u(-5, 5)
    top_margin = u(15.0, 45.0)
    bottom_margin = u(25.0, 60.0)
    z_top = z_apex + top_margin
    z_bottom = z_dome_l - 2.2 * dome_drop - bottom_margin
    extent = z_top - z_bottom
    spacing = float(u(2.0, 3.0))
    n = round(extent / spacing) + 1
    n = int(np.clip(n, *SLICES_RANGE))
    spacing = float(np.clip(extent / (n - 1), *SLICE_SPACING_RANGE))
    muscle_hu = u(38.0, 55.0)
    eso_hu = muscle_hu + u(-4.0, 6.0)
    has_air = u() < 0.45
    fat_ant = 4.0 + 26.0 * ob**1.6
    fat_post = 3.0 + 13.0 * ob**1.6
    air_z0 = u(-120.0, 40.0)
    return PatientParams(
        spacing_xy=float(u(0.90, 1.37)) if s > 1.0 else float(u(0.90, 1.2)),
        slice_spacing=spacing,
        n_slices=n,
        z_top=z_top,
        center_du=u(-12.0, 12.0),
        center_dv=u(-8.0, 22.0),
        rotation_deg=u(-6.0, 6.0),
        scale=s,
        adiposity=ob,
        body_half_width=149.0 * s * u(0.95, 1.05) + fat_ant,
        body_half_depth_ant=101.0 * s * u(0.94, 1.06) + fat_ant,
        body_half_depth_post=105.0 * s * u(0.96, 1.04) + fat_post,
        fat_ant=fat_ant,
        fat_post=fat_post,
        muscle_lat=13.0 * s + u(-2, 3),
        muscle_ant=15.0 * s + u(-1, 4),
        kyphosis=u(4.0, 14.0),
        vertebra_height=25.0 * s + u(-1.5, 1.5),
        vertebra_phase=u(0.0, 25.0),
        z_apex=z_apex,
        z_dome_right=z_dome_r,
        z_dome_left=z_dome_l,
        dome_drop=dome_drop,
        trachea_radius=10.0 * s + u(-1.5, 1.5),
        trachea_wall=u(1.6, 2.4),
        trachea_dx=u(-3.0, 3.0),
        esophagus_a=9.0 * s + u(-1.5, 1.5),
        esophagus_b=5.5 * s + u(-1.0, 1.0),
        esophagus_dx=u(2.0, 9.0),
        esophagus_air_radius=float(u(1.8, 4.0)) if has_air else 0.0,
        esophagus_air_z0=air_z0,
        esophagus_air_z1=air_z0 + u(25.0, 110.0),
        esophagus_sleeve=u(2.5, 6.0),
        aorta_radius=14.5 * s + u(-1.5, 2.5),
        arch_height=34.0 * s + u(-6, 6),
        heart_scale=s * u(1.08, 1.26),
        heart_dx=u(-8.0, 10.0),
        heart_dy=u(-5.0, 5.0),
        heart_dz=u(-10.0, 4.0),
        heart_yaw=u(-10.0, 10.0),
        heart_epi_fat=u(0.5, 3.0),
        hu_fat=u(-110.0, -85.0),
        hu_muscle=muscle_hu,
        hu_lung=u(-880.0, -830.0),
        hu_lung_gradient=u(20.0, 70.0),
        hu_contrast=contrast,
        hu_right_blood=float(np.clip(contrast * u(0.55, 1.15), 90.0, 400.0)),
        hu_vein=u(60.0, 160.0),
        hu_myocardium=u(45.0, 70.0) + 0.2 * contrast,
        hu_esophagus=eso_hu,
        hu_sleeve=eso_hu - u(5.0, 12.0),
        hu_cortex=u(800.0, 1150.0),
        hu_marrow=u(300.0, 380.0),
        hu_liver=u(55.0, 70.0) + 0.15 * contrast,
        noise_sd=u(10.0, 30.0),
        tree_seed=int(rng.integers(0, 2**31 - 1)),
    )


def grid_for(p: PatientParams, size: str) -> Grid:
    """The voxel grid of patient ``p`` for ``size`` ``'full'`` (SegTHOR) or ``'small'`` (4× coarser).

    ``full``: 512 × 512 × ``n_slices`` (135–227) at ``spacing_xy`` (0.9–1.37 mm)
    in-plane and ``slice_spacing`` (2.0–3.0 mm). ``small``: 128 × 128 ×
    ``round(n_slices / 4)`` (34–57) with the same field of view: 4× the in-plane
    spacing (3.6–5.5 mm) and the slices spread over the same cranio-caudal extent
    (8–12.4 mm apart).
    """
    if size == "full":
        n_xy, sxy, nz, sz = FULL_INPLANE, p.spacing_xy, p.n_slices, p.slice_spacing
    elif size == "small":
        n_xy = FULL_INPLANE // SMALL_FACTOR
        sxy = p.spacing_xy * SMALL_FACTOR
        nz = max(2, round(p.n_slices / SMALL_Z_FACTOR))
        sz = p.slice_spacing * (p.n_slices - 1) / (nz - 1)
    else:
        raise ValueError(f"unknown size {size!r}; expected 'small' or 'full'")
    center = (sxy * (n_xy - 1) / 2.0 + p.center_du, sxy * (n_xy - 1) / 2.0 + p.center_dv)
    z_bottom = p.z_top - sz * (nz - 1)
    return Grid((n_xy, n_xy, nz), (sxy, sxy, sz), center, p.rotation_deg, -z_bottom)


# ------------------------------------------------------------------------------------------
class Anatomy:
    """Derived geometry of one patient (all mm, patient frame) and its rasterisation.

    Attributes set here are plain NumPy/float values; the ``*_field`` methods
    return :class:`~thoraxseg.data.phantom.geometry.Field` SDFs on a grid.
    """

    def __init__(self, p: PatientParams) -> None:
        self.p = p
        s = p.scale
        self.s = s
        # --- skeleton reference lines
        self.vb_a = 20.0 * s  # vertebral body lateral semi-axis
        self.vb_b = 15.5 * s  # AP semi-axis
        self.canal_r = 7.5 * s
        # posterior chain: spinous tip → canal → vertebral body centre (at mid-thorax)
        y_spinous = p.body_half_depth_post - p.fat_post - 14.0 * s
        self.y_canal0 = y_spinous - 33.0 * s
        self.canal_offset = self.vb_b + 2.5 * s + self.canal_r
        self.y_vb0 = self.y_canal0 - self.canal_offset - p.kyphosis
        # --- cavity (inner rib-cage surface), two half-ellipses
        self.cav_w0 = p.body_half_width - p.fat_ant - p.muscle_lat
        self.cav_bp = (self.y_canal0 + 12.0 * s) / 0.9
        # --- airway and mediastinum lines
        y_vf_car = self.y_vb(0.0) - self.vb_b
        self.y_eso_car = y_vf_car - 2.0 - p.esophagus_b
        self.y_car = self.y_eso_car - p.esophagus_b - 1.5 - p.trachea_radius
        self.x_car = p.trachea_dx
        self._build_heart()
        self._build_vessels()
        self._build_airways()
        self._build_ribs()
        self._trees: tuple[np.ndarray, ...] | None = None

    # -- 1D profiles ---------------------------------------------------------------------
    def y_vb(self, z: np.ndarray | float) -> np.ndarray | float:
        """Y (mm) of the vertebral-body centre at height ``z`` (thoracic kyphosis)."""
        t = (np.asarray(z, dtype=np.float64) + 40.0) / 190.0
        return self.y_vb0 + self.p.kyphosis * (1.0 - np.clip(t * t, 0.0, 1.6))

    def ba(self, z: np.ndarray | float) -> np.ndarray | float:
        """Anterior half-depth of the body outline (mm) at height ``z``: thinner at the top."""
        zz = np.asarray(z, dtype=np.float64)
        # thinner at the thoracic inlet, deepest over the heart (lower chest)
        bulge = 10.0 * self.s / (1.0 + np.exp(-(zz + 150.0) / 15.0)) / (1.0 + np.exp((zz + 35.0) / 15.0))
        return self.p.body_half_depth_ant * (0.935 - 0.065 * np.tanh((zz - 40.0) / 80.0)) + bulge

    def cav_w(self, z: np.ndarray | float) -> np.ndarray | float:
        """Half-width of the rib cage (mm) at ``z``: narrows towards the thoracic inlet."""
        z_w = -60.0 * self.s
        t = np.clip((np.asarray(z, dtype=np.float64) - z_w) / (self.p.z_apex + 20.0 - z_w), 0.0, 1.0)
        return self.cav_w0 * np.sqrt(1.0 - 0.8 * t * t)

    def cav_ba(self, z: np.ndarray | float) -> np.ndarray | float:
        """Anterior half-depth of the rib cage (mm): the back of the sternum."""
        pect = 1.0 / (1.0 + np.exp(-(np.asarray(z, dtype=np.float64) + 30.0) / 25.0))  # pectoralis, upper chest
        return self.ba(z) - self.p.fat_ant - self.p.muscle_ant * (1.0 + 0.6 * pect)

    def diaphragm_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (mm) of the diaphragm under ``(x, y)``: two domes, the right one higher."""
        p = self.p
        rx, ry = 0.6 * self.cav_w0, 0.95 * self.cav_bp
        xr, xl, yd = -0.42 * self.cav_w0, 0.42 * self.cav_w0, -15.0 * self.s
        zr = p.z_dome_right - p.dome_drop * (((x - xr) / rx) ** 2 + ((y - yd) / ry) ** 2)
        zl = p.z_dome_left - p.dome_drop * (((x - xl) / rx) ** 2 + ((y - yd) / ry) ** 2)
        return -smooth_min(-zr, -zl, 20.0)

    def diaphragm_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """SDF (mm) of the region *below* the diaphragm surface (first order)."""
        zd = self.diaphragm_z(x, y)
        eps = 0.5
        gx = (self.diaphragm_z(x + eps, y) - zd) / eps
        gy = (self.diaphragm_z(x, y + eps) - zd) / eps
        return (z - zd) / np.sqrt(1.0 + gx * gx + gy * gy)

    # -- 2D per-slice outlines (broadcast X, Y (ni, nj, 1) with Z (1, 1, nk)) ------------
    def body_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Skin surface: two half-ellipses (flatter back), mm."""
        bp = np.float32(self.p.body_half_depth_post)
        w = np.float32(self.p.body_half_width)
        # front: depth varies with z; back: constant (2D, broadcast) and flattened on the table
        back = np.maximum(ellipse_sdf(x, y, w, bp * np.float32(1.12)), y - bp)
        front = ellipse_sdf(x, y, w, self.ba(z).astype(np.float32))
        return np.where(y < 0, front, back)

    def fat_thickness(self, y: np.ndarray) -> np.ndarray:
        """Subcutaneous fat thickness (mm): anterior/lateral vs posterior, blended."""
        p = self.p
        t = 1.0 / (1.0 + np.exp(np.clip(y / 25.0, -30, 30)))
        return (p.fat_post + (p.fat_ant - p.fat_post) * t).astype(np.float32)

    def cavity_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Inner surface of the rib cage (thorax and upper abdomen), mm."""
        w = self.cav_w(z).astype(np.float32)
        if np.ndim(y) == 3 and y.shape[2] == 1 and np.size(z) > 1:  # grid evaluation: pick b per voxel late
            ant = ellipse_sdf(x, y, w, self.cav_ba(z).astype(np.float32))
            post = ellipse_sdf(x, y, w, np.float32(self.cav_bp))
            return np.where(y < 0, ant, post)
        b = np.where(y < 0, self.cav_ba(z).astype(np.float32), np.float32(self.cav_bp))
        return ellipse_sdf(x, y, w, b)

    def spine_block_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Vertebral body, posterior elements and paraspinal muscles that the lungs wrap around."""
        s = self.s
        yv = self.y_vb(z).astype(np.float32)
        body = ellipse_sdf(x, y - yv, self.vb_a + 2.0, self.vb_b + 2.0)
        yc = yv + np.float32(self.canal_offset)
        neck = np.maximum(np.abs(x) - 22.0 * s, (yv - y))
        back = ellipse_sdf(x, y - yc - 14.0 * s, np.float32(44.0 * s), np.float32(22.0 * s))
        return np.minimum(np.minimum(body, neck), back)

    def apex_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height (mm) of the lung tops over ``(x, y)``: one dome per lung, apex posterior-medial."""
        p = self.p
        xa, ya = 0.40 * self.cav_w0, 8.0 * self.s
        kx = 62.0 / (0.6 * self.cav_w0) ** 2
        ky = 55.0 / (80.0 * self.s) ** 2
        right = p.z_apex - kx * (x + xa) ** 2 - ky * (y - ya) ** 2
        left = p.z_apex - kx * (x - xa) ** 2 - ky * (y - ya) ** 2
        return -smooth_min(-right, -left, 15.0)

    def apex_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """SDF (mm, first order) of the region under the lung-top domes."""
        za = self.apex_z(x, y)
        eps = 0.5
        gx = (self.apex_z(x + eps, y) - za) / eps
        gy = (self.apex_z(x, y + eps) - za) / eps
        return (z - za) / np.sqrt(1.0 + gx * gx + gy * gy)

    def lung_sdf_points(self, pts: np.ndarray) -> np.ndarray:
        """Approximate lung SDF at points ``(n, 3)`` (mm) — used to grow the vessel trees."""
        x, y, z = (pts[:, i].astype(np.float32) for i in range(3))
        d = np.maximum(self.cavity_sdf(x, y, z), -self.diaphragm_sdf(x, y, z))
        d = np.maximum(d, self.apex_sdf(x, y, z))
        d = np.maximum(d, -(self.spine_block_sdf(x, y, z) - 3.0))
        d = np.maximum(d, -(self.heart_sdf(x, y, z) - 4.0))
        d = np.maximum(d, -(np.abs(x) - 14.0))
        d = np.maximum(d, -(self._aorta_coarse.sdf_points(pts).astype(np.float32) - 4.0))
        return d

    # -- heart ---------------------------------------------------------------------------
    def _build_heart(self) -> None:
        """Four chambers in a long-axis frame: apex left-anterior-inferior, atria at the base."""
        p = self.p
        k = p.heart_scale
        rot = rotation_from_angles(p.heart_yaw, 0.0)
        u = rot @ np.array([0.67, -0.61, -0.42])
        u /= np.linalg.norm(u)
        v = np.cross(u, [0.0, 0.0, 1.0])
        v /= np.linalg.norm(v)  # right-anterior
        w = np.cross(v, u)  # cranial-ish
        frame = np.stack([u, v, w], axis=1)
        self.heart_axes = frame
        # posterior surface (left atrium) sits just in front of the esophagus at Z ≈ -60
        y_back = float(self.y_vb(-60.0)) - self.vb_b - 2.0 * p.esophagus_b - 4.0
        cx = 27.0 * self.s + p.heart_dx
        cy = y_back - 42.0 * k + p.heart_dy
        # the base (atria) starts just under the pulmonary arteries; the apex rests on the left dome
        cz = -24.0 * self.s - 52.0 * k + p.heart_dz
        self.heart_center = np.array([cx, cy, cz])

        def local(a: float, b: float, c: float) -> np.ndarray:
            return self.heart_center + frame @ (np.array([a, b, c]) * k)

        def offset(dx: float, dy: float, dz: float) -> np.ndarray:
            return self.heart_center + rot @ (np.array([dx, dy, dz]) * k)

        # (name, centre, outer semi-axes, axes (columns), wall thickness)
        self.chambers = [
            ("lv", local(8.0, -14.0, 0.0), np.array([50.0, 28.0, 28.0]) * k, frame, 10.0 * k),
            ("rv", local(4.0, 13.0, -4.0), np.array([46.0, 18.0, 34.0]) * k, frame, 4.0 * k),
            ("la", offset(-10.0, 27.0, 30.0), np.array([31.0, 15.0, 20.0]) * k, rot, 2.5 * k),
            ("ra", offset(-32.0, 0.0, 20.0), np.array([24.0, 24.0, 30.0]) * k, rot, 2.5 * k),
        ]
        pts = np.vstack([c + np.abs(ax) @ r for _, c, r, ax, _ in self.chambers]
                        + [c - np.abs(ax) @ r for _, c, r, ax, _ in self.chambers])
        self.heart_bounds = (pts.min(axis=0) - 8.0, pts.max(axis=0) + 8.0)
        self.la_center = self.chambers[2][1]
        self.aortic_root = offset(-6.0, 4.0, 30.0)
        self.pa_root = offset(12.0, -24.0, 28.0)

    def heart_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Whole-heart SDF: smooth union of the four chambers, flattened against the chest wall, mm."""
        d = None
        for _, c, r, ax, _ in self.chambers:
            e = ellipsoid_sdf(x, y, z, c, r, ax)
            d = e if d is None else smooth_min(d, e, 10.0 * self.p.heart_scale)
        assert d is not None
        return np.maximum(d, self.cavity_sdf(x, y, z) + 4.0)

    def chamber_sdfs(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        """Blood-pool SDF of each chamber (outer ellipsoid shrunk by its wall), mm.

        The right ventricle wraps the left one: its blood pool stops at the left
        ventricle's outer wall (the septum).
        """
        out = {}
        lv_outer = None
        for name, c, r, ax, wall in self.chambers:
            if name == "lv":
                lv_outer = ellipsoid_sdf(x, y, z, c, r, ax)
            d = ellipsoid_sdf(x, y, z, c, np.maximum(r - wall, 3.0), ax)
            if name == "rv" and lv_outer is not None:
                d = np.maximum(d, -lv_outer)
            out[name] = d
        return out

    # -- great vessels -----------------------------------------------------------------
    def _build_vessels(self) -> None:
        p, s = self.p, self.s
        yc = self.y_car
        ra = p.aorta_radius
        zt = p.arch_height
        root = self.aortic_root
        yv = lambda z: float(self.y_vb(z))  # noqa: E731
        x_desc = self.vb_a + 0.55 * ra + 3.0
        ctrl = [
            root,
            (root[0] - 6.0, 0.5 * (root[1] + yc - 33.0), 0.5 * (root[2] - 10.0)),
            (-12.0 * s, yc - 33.0 * s, 0.0),
            (-7.0 * s, yc - 32.0 * s, zt - 14.0),
            (8.0 * s, yc - 30.0 * s, zt - 2.0),
            (24.0 * s, yc - 16.0 * s, zt),
            (29.0 * s, yc + 2.0 * s, zt - 6.0),
            (x_desc, yv(zt - 20) - 14.0, zt - 24.0),
            (x_desc, yv(-40) - 15.0, -40.0),
            (x_desc - 4.0, yv(-100) - 16.0, -100.0),
            (10.0 * s, yv(p.z_dome_left - 20) - self.vb_b - 8.0, p.z_dome_left - 20.0),
            (6.0 * s, yv(-400) - self.vb_b - 9.0, -400.0),
        ]
        radii = [ra * 1.0, ra * 1.05, ra * 1.05, ra * 0.98, ra * 0.92, ra * 0.88, ra * 0.85,
                 ra * 0.8, ra * 0.78, ra * 0.75, ra * 0.7, ra * 0.66]
        self.aorta = Tube.smooth(ctrl, radii, step=5.0)
        self._aorta_coarse = Tube(self.aorta.points[::4], self.aorta.radii[::4])
        z_top = p.z_top + 20.0
        self.arch_branches = [
            Tube.smooth([(2.0 * s, yc - 31.0 * s, zt - 2), (-12.0 * s, yc - 30.0 * s, zt + 30),
                         (-24.0 * s, yc - 28.0 * s, z_top)], [6.5 * s, 6.0 * s, 5.5 * s]),
            Tube.smooth([(14.0 * s, yc - 26.0 * s, zt), (16.0 * s, yc - 27.0 * s, zt + 30),
                         (21.0 * s, yc - 24.0 * s, z_top)], [4.5 * s, 4.3 * s, 4.2 * s]),
            Tube.smooth([(26.0 * s, yc - 10.0 * s, zt - 2), (31.0 * s, yc - 6.0 * s, zt + 30),
                         (48.0 * s, yc + 2.0 * s, z_top)], [5.5 * s, 5.0 * s, 5.0 * s]),
        ]
        ra_c = self.chambers[3][1]
        self.svc = Tube.smooth([(-40.0 * s, yc - 27.0 * s, zt + 25), (-38.0 * s, yc - 28.0 * s, 0.0),
                                (ra_c[0] + 2.0, ra_c[1] - 4.0, ra_c[2] + 10.0)], [9.0 * s, 9.5 * s, 10.0 * s])
        self.veins = [
            # left brachiocephalic vein crossing in front of the arch branches
            Tube.smooth([(60.0 * s, yc - 26.0 * s, zt + 45), (20.0 * s, yc - 40.0 * s, zt + 36),
                         (-38.0 * s, yc - 28.0 * s, zt + 24)], [6.0 * s, 6.0 * s, 6.5 * s]),
            # right brachiocephalic / jugular
            Tube.smooth([(-42.0 * s, yc - 24.0 * s, z_top), (-40.0 * s, yc - 27.0 * s, zt + 25)],
                        [7.0 * s, 8.0 * s]),
            Tube.smooth([(38.0 * s, yc - 22.0 * s, z_top), (56.0 * s, yc - 24.0 * s, zt + 50),
                         (60.0 * s, yc - 26.0 * s, zt + 45)], [6.0 * s, 6.0 * s, 6.0 * s]),
        ]
        # pulmonary trunk and arteries
        bif = np.array([8.0 * s, yc - 18.0 * s, -24.0 * s])
        self.pa_trunk = Tube.smooth([self.pa_root, 0.5 * (self.pa_root + bif) + np.array([4.0, -4.0, 4.0]), bif],
                                    [13.0 * s, 13.0 * s, 12.0 * s])
        self.rpa_end = np.array([-46.0 * s, yc - 6.0 * s, -30.0 * s])
        self.lpa_end = np.array([52.0 * s, yc + 8.0 * s, -22.0 * s])
        self.rpa = Tube.smooth([bif, (-14.0 * s, yc - 10.0 * s, -30.0 * s), self.rpa_end], [10.0 * s, 9.5 * s, 8.5 * s])
        self.lpa = Tube.smooth([bif, (30.0 * s, yc - 8.0 * s, -18.0 * s), self.lpa_end], [10.0 * s, 9.5 * s, 8.5 * s])
        # pulmonary veins into the left atrium
        la = self.la_center
        k = p.heart_scale
        self.pulm_veins = []
        self.pv_ends = []
        for side in (-1.0, 1.0):
            for dz in (10.0, -10.0):
                a = la + np.array([side * 22.0 * k, 4.0, dz * k])
                b = a + np.array([side * 30.0 * s, 4.0 * s, 0.6 * dz])
                self.pulm_veins.append(Tube.smooth([a, b], [7.0 * s, 6.0 * s]))
                self.pv_ends.append(b)
        # azygos (right prevertebral, arching into the SVC above the right main bronchus)
        self.azygos = Tube.smooth([(-10.0 * s, yv(-160) - self.vb_b - 2.0, -160.0),
                                   (-11.0 * s, yv(-40) - self.vb_b - 2.0, -40.0),
                                   (-14.0 * s, yv(8) - self.vb_b - 4.0, 8.0 * s),
                                   (-26.0 * s, yc - 4.0 * s, 16.0 * s),
                                   (-38.0 * s, yc - 22.0 * s, 12.0 * s)], [4.0 * s] * 5)
        # inferior vena cava (in the liver, into the right atrium)
        self.ivc = Tube.smooth([(-22.0 * s, yv(-300) - self.vb_b - 12.0, -300.0),
                                (-24.0 * s, yv(p.z_dome_right) - self.vb_b - 16.0, p.z_dome_right - 10.0),
                                (ra_c[0] + 4.0, ra_c[1] + 4.0, ra_c[2] - 20.0)], [11.0 * s, 12.0 * s, 12.0 * s])

    # -- airway ----------------------------------------------------------------------
    def trachea_center(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre (X, Y) of the trachea at height ``z`` (it runs obliquely backwards)."""
        return self.x_car + 0.02 * np.asarray(z), self.y_car - 0.16 * np.asarray(z)

    def esophagus_center(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre (X, Y) of the esophagus at ``z``: behind the trachea, then left-anterior to the hiatus."""
        p = self.p
        zz = np.asarray(z, dtype=np.float64)
        zh = p.z_dome_left - 12.0
        zg = self.z_ge
        ctrl_z = np.array([zg, zh, -100.0, -40.0, 0.0, 400.0])
        gap = p.trachea_radius + p.esophagus_b + 1.5
        _, yt = self.trachea_center(ctrl_z)
        yvf = np.asarray(self.y_vb(ctrl_z)) - self.vb_b
        ctrl_x = np.array([48.0, 26.0, 12.0, 6.0, 4.0, 2.0]) * self.s + p.esophagus_dx * np.array([0, 0.3, .8, 1, 1, 1])
        ctrl_y = np.array([yvf[0] - 40.0, yvf[1] - 28.0, yvf[2] - p.esophagus_b - 7.0,
                           yvf[3] - p.esophagus_b - 2.5, yt[4] + gap, yt[5] + gap])
        return np.interp(zz, ctrl_z, ctrl_x), np.interp(zz, ctrl_z, ctrl_y)

    @property
    def z_ge(self) -> float:
        """Z of the gastro-esophageal junction (end of the esophagus label), mm."""
        return self.p.z_dome_left - 38.0

    def _build_airways(self) -> None:
        s = self.s
        car = np.array([self.x_car, self.y_car, 0.0])
        r = self.p.trachea_radius
        # (start, end, outer radius); all unlabelled bronchi
        rmb_end = car + np.array([-24.0, 5.0, -18.0]) * s
        lmb_end = car + np.array([40.0, 8.0, -30.0]) * s
        bi_end = rmb_end + np.array([-8.0, 6.0, -26.0]) * s
        self.bronchi = [
            (car + np.array([-2.0, 0.0, 4.0]), rmb_end, 0.78 * r, 0.7 * r),
            (car + np.array([2.0, 0.0, 4.0]), lmb_end, 0.7 * r, 0.62 * r),
            (rmb_end, rmb_end + np.array([-22.0, -2.0, 10.0]) * s, 0.52 * r, 0.45 * r),  # RUL
            (rmb_end, bi_end, 0.62 * r, 0.55 * r),  # intermedius
            (bi_end, bi_end + np.array([-12.0, -24.0, -12.0]) * s, 0.4 * r, 0.35 * r),  # middle lobe
            (bi_end, bi_end + np.array([-14.0, 18.0, -30.0]) * s, 0.52 * r, 0.42 * r),  # RLL
            (lmb_end, lmb_end + np.array([10.0, -18.0, 18.0]) * s, 0.5 * r, 0.42 * r),  # LUL
            (lmb_end, lmb_end + np.array([10.0, 16.0, -32.0]) * s, 0.52 * r, 0.42 * r),  # LLL
        ]

    # -- ribs, sternum, clavicles ------------------------------------------------------
    def rib_cage_point(self, side: float, phi: np.ndarray, z: np.ndarray, offset: float) -> np.ndarray:
        """Points on the rib cage at angle ``phi`` (0 = back, π = front) and height ``z``, ``offset`` mm outside."""
        w = np.asarray(self.cav_w(z)) + offset
        b = np.where(np.cos(phi) >= 0, self.cav_bp, np.asarray(self.cav_ba(z))) + offset
        return np.stack([side * w * np.sin(phi), b * np.cos(phi), np.asarray(z, dtype=np.float64)], axis=-1)

    def _build_ribs(self) -> None:
        p, s = self.p, self.s
        self.rib_r = 4.6 * s
        level = p.vertebra_height
        self.ribs: list[Tube] = []
        self.cartilages: list[Tube] = []
        for k in range(1, 13):
            z_head = p.z_apex - 14.0 * s - (k - 1) * level
            drop = {1: 28.0, 2: 55.0}.get(k, 78.0 + 5.0 * min(k - 3, 4)) * s
            phi_end = {11: 1.95, 12: 1.55}.get(k, 2.45 if k <= 7 else 2.35)
            for side in (-1.0, 1.0):
                phi0 = 0.36
                phis = np.linspace(phi0, phi_end, 14)
                frac = (phis - phi0) / (math.pi - phi0)
                zs = z_head - drop * frac**0.9 + 4.0 * s * np.sin(frac * math.pi)
                pts = self.rib_cage_point(side, phis, zs, self.rib_r + 1.0)
                head = np.array([side * (self.vb_a + 3.0), float(self.y_vb(z_head)) + 4.0, z_head])
                tub = np.array([side * 40.0 * s, float(self.y_vb(z_head)) + self.canal_offset + 2.0,
                                z_head + 2.0])
                ctrl = np.vstack([head, tub, pts])
                radii = np.full(len(ctrl), self.rib_r)
                radii[0] = 0.9 * self.rib_r
                self.ribs.append(Tube.smooth(ctrl, radii, step=6.0))
                if k <= 10:
                    phi_c = np.linspace(phi_end, 2.98 if k <= 7 else 2.75, 5)
                    fr = (phi_c - phi0) / (math.pi - phi0)
                    zc = z_head - drop * fr**0.9
                    if k >= 8:  # lower cartilages rise to join the costal margin
                        zc = zc + np.linspace(0.0, 18.0, len(zc))
                    cp = self.rib_cage_point(side, phi_c, zc, self.rib_r + 1.0)
                    self.cartilages.append(Tube.smooth(cp, np.full(len(cp), 0.85 * self.rib_r), step=5.0))
        z_jug = p.z_apex - 42.0 * s
        self.sternum_z = (p.z_dome_right - 12.0, z_jug)
        self.sternum_angle = z_jug - 48.0 * s
        self.clavicles = []
        for side in (-1.0, 1.0):
            ya = -float(self.cav_ba(z_jug)) - 8.0
            self.clavicles.append(Tube.smooth(
                [(side * 24.0 * s, ya, z_jug + 4.0), (side * 70.0 * s, ya - 4.0, z_jug + 12.0),
                 (side * 128.0 * s, -26.0 * s, z_jug + 26.0)], [7.0 * s, 6.0 * s, 6.5 * s]))

    def sternum_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Sternum (manubrium + body) as a rounded slab behind the anterior fat, mm."""
        s = self.s
        zlo, zhi = self.sternum_z
        half_w = np.where(z > self.sternum_angle, 24.0 * s, 14.0 * s).astype(np.float32)
        half_t = np.float32(6.5 * s)
        yc = -(self.cav_ba(z).astype(np.float32) + half_t + 0.5)
        qx = np.abs(x) - (half_w - half_t)
        qy = np.abs(y - yc)
        d = np.sqrt(np.maximum(qx, 0.0) ** 2 + qy * qy) + np.minimum(qx, 0.0) * 0.0 - half_t
        d = np.where(qx < 0, qy - half_t, d)
        return np.maximum(d, np.maximum(np.float32(zlo) - z, z - np.float32(zhi)))

    def scapula_sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Both scapulae: thin curved plates behind the upper ribs, mm."""
        s = self.s
        off = self.rib_r * 2.0 + 10.0 * s
        w = self.cav_w(z).astype(np.float32) + off
        b = np.float32(self.cav_bp + off)
        e = ellipse_sdf(x, y, w, b)
        plate = np.abs(e) - 2.5 * s
        phi = np.arctan2(np.abs(x) / w, y / b)  # 0 at the back
        z_top = self.p.z_apex - 10.0 * s
        z_bot = z_top - 150.0 * s
        t = np.clip((z - z_bot) / (z_top - z_bot), 0.0, 1.0)
        lo = 0.62 - 0.22 * t
        hi = 0.72 + 0.75 * t
        radius = 0.5 * (w + b)
        ang = np.maximum(lo - phi, phi - hi) * radius
        return np.maximum(np.maximum(plate, ang), np.maximum(z_bot - z, z - (z_top + 20.0)))

    # -- vertebral column ------------------------------------------------------------
    def vertebra_phase(self, z: np.ndarray) -> np.ndarray:
        """Position within the vertebral level, 0..1 (0 = centre of an intervertebral disc)."""
        level = self.p.vertebra_height
        return np.mod((np.asarray(z) - self.p.vertebra_phase) / level + 0.5, 1.0) - 0.5

    # -- vessel trees -----------------------------------------------------------------
    def vessel_trees(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pulmonary artery and vein trees: ``(p0, p1, r0, r1, kind)`` of every segment (mm).

        ``kind`` is 0 for arteries (which carry a bronchus alongside) and 1 for veins.
        Grown once per patient from :attr:`PatientParams.tree_seed`.
        """
        if self._trees is None:
            self._trees = self._grow_trees()
        return self._trees  # type: ignore[return-value]

    def _grow_trees(self) -> tuple[np.ndarray, ...]:
        """Space-colonisation growth of artery and vein trees towards points spread in the lungs.

        Branch radii follow Murray's law (``r_parent³ = Σ r_child³``) from 0.45 mm
        terminal twigs, so trunks thicken with the territory they supply.
        """
        rng = np.random.default_rng(self.p.tree_seed)
        s = self.s
        lo = np.array([-self.cav_w0, -float(self.cav_ba(-60.0)), self.p.z_dome_left - 2.5 * self.p.dome_drop])
        hi = np.array([self.cav_w0, self.cav_bp, self.p.z_apex])
        cand = lo + (hi - lo) * rng.random((40000, 3))
        inside = cand[self.lung_sdf_points(cand) < -4.0]
        families = []
        art_roots = [(self.rpa_end, np.array([-1.0, 0.2, -0.2])), (self.lpa_end, np.array([1.0, 0.2, -0.1]))]
        vein_roots = [(end, np.array([np.sign(end[0]), 0.0, 0.0])) for end in self.pv_ends]
        half = len(inside) // 2
        for kind, roots, attract in ((0, art_roots, inside[:half]), (1, vein_roots, inside[half:])):
            nodes, parents = _colonise(roots, attract, rng, step=4.5 * s, influence=40.0 * s, kill=5.5 * s)
            radii = _murray_radii(parents, 0.45)
            families.append((nodes, parents, radii, kind))
        p0s, p1s, r0s, r1s, kinds = [], [], [], [], []
        for nodes, parents, radii, kind in families:
            child = np.nonzero(parents >= 0)[0]
            par = parents[child]
            p0s.append(nodes[par])
            p1s.append(nodes[child])
            r0s.append(np.minimum(radii[par], radii[child] * 1.15))
            r1s.append(radii[child])
            kinds.append(np.full(len(child), kind))
        return (np.concatenate(p0s), np.concatenate(p1s), np.concatenate(r0s), np.concatenate(r1s),
                np.concatenate(kinds))

    # -- fields on a grid ---------------------------------------------------------------
    def heart_field(self, grid: Grid, pad: float) -> Field | None:
        """Whole-heart SDF on its bounding box (padded by ``pad`` mm)."""
        lo, hi = self.heart_bounds
        bx = grid.box(lo - pad, hi + pad)
        if bx is None:
            return None
        x, y = grid.xy(bx[0], bx[1])
        z = grid.z(bx[2])
        return Field(bx, self.heart_sdf(x, y, z).astype(np.float32))

    def vertical_tube_field(self, grid: Grid, center_fn: Any, a: float, b: float, z0: float, z1: float,
                            pad: float) -> Field | None:
        """Elliptical tube (semi-axes ``a`` lateral, ``b`` AP) around a near-vertical centre line, ``z0..z1``."""
        zs = np.linspace(z0, z1, 64)
        cx, cy = center_fn(zs)
        r = max(a, b) + pad
        bx = grid.box((cx.min() - r, cy.min() - r, z0 - pad), (cx.max() + r, cy.max() + r, z1 + pad))
        if bx is None:
            return None
        x, y = grid.xy(bx[0], bx[1])
        z = grid.z(bx[2])
        zc = z.astype(np.float64)
        ccx, ccy = center_fn(zc)
        d = ellipse_sdf(x - ccx.astype(np.float32), y - ccy.astype(np.float32), np.float32(a), np.float32(b))
        d = np.maximum(d, np.maximum(np.float32(z0) - z, z - np.float32(z1)))
        return Field(bx, d.astype(np.float32))

    def bronchi_field(self, grid: Grid, offset: float, pad: float) -> Field | None:
        """Main and lobar bronchi (outer radius + ``offset`` mm)."""
        p0 = np.array([b[0] for b in self.bronchi])
        p1 = np.array([b[1] for b in self.bronchi])
        r0 = np.array([b[2] for b in self.bronchi]) + offset
        r1 = np.array([b[3] for b in self.bronchi]) + offset
        return render_segments(grid, p0, p1, np.maximum(r0, 0.3), np.maximum(r1, 0.3), pad)


def _colonise(roots: list[tuple[np.ndarray, np.ndarray]], attractors: np.ndarray, rng: np.random.Generator,
              step: float, influence: float, kill: float, max_iter: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Space-colonisation tree growth (Runions et al. 2007), vectorised per iteration.

    Each attractor keeps its nearest node; only the nodes added in an iteration
    are searched (k-d tree), so an iteration costs O(attractors · log(new nodes)).
    Returns node positions ``(n, 3)`` and parent indices (``-1`` for roots);
    parents always precede their children.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray([r[0] for r in roots], dtype=np.float64)
    head = np.asarray([np.asarray(r[1]) / np.linalg.norm(r[1]) for r in roots], dtype=np.float64)
    par = np.full(len(pts), -1, dtype=np.int64)
    att = attractors.copy()
    best_d, best_i = cKDTree(pts).query(att, distance_upper_bound=influence)
    for _ in range(max_iter):
        alive = best_d > kill
        att, best_d, best_i = att[alive], best_d[alive], best_i[alive]
        if len(att) == 0:
            break
        ok = np.isfinite(best_d)
        if ok.any():
            vec = att[ok] - pts[best_i[ok]]
            vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
            acc = np.zeros_like(pts)
            np.add.at(acc, best_i[ok], vec)
            growing = np.nonzero(np.abs(acc).sum(axis=1) > 1e-9)[0]
            direc = acc[growing] / np.linalg.norm(acc[growing], axis=1, keepdims=True)
            direc = 0.8 * direc + 0.2 * head[growing] + rng.normal(0.0, 0.08, direc.shape)
        else:  # nothing in reach yet: extend the tips along their heading
            growing = np.setdiff1d(np.arange(len(pts)), par[par >= 0])
            direc = head[growing]
        direc /= np.linalg.norm(direc, axis=1, keepdims=True)
        new = pts[growing] + direc * step
        base = len(pts)
        pts = np.vstack([pts, new])
        head = np.vstack([head, direc])
        par = np.concatenate([par, growing])
        d_new, i_new = cKDTree(new).query(att, distance_upper_bound=influence)
        closer = d_new < best_d
        best_d = np.where(closer, d_new, best_d)
        best_i = np.where(closer, i_new + base, best_i)
    return pts, par


def _murray_radii(parents: np.ndarray, r_leaf: float) -> np.ndarray:
    """Radius of every node by Murray's law, leaves ``r_leaf`` (children come after parents)."""
    cube = np.zeros(len(parents))
    has_child = np.zeros(len(parents), dtype=bool)
    has_child[parents[parents >= 0]] = True
    cube[~has_child] = r_leaf**3
    for i in range(len(parents) - 1, -1, -1):
        if parents[i] >= 0:
            cube[parents[i]] += cube[i]
    return np.cbrt(cube)


__all__ = [
    "FAR",
    "FULL_INPLANE",
    "SMALL_FACTOR",
    "SMALL_Z_FACTOR",
    "Anatomy",
    "PatientParams",
    "grid_for",
    "sample_patient",
    "segment_sdf",
]
