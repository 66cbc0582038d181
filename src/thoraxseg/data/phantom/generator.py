"""Rendering of a synthetic thorax CT: tissue intensities, texture, partial volume, noise, files.

A patient (:class:`~thoraxseg.data.phantom.anatomy.Anatomy`) is painted back to
front on a float32 HU canvas — air, table, skin/fat, muscle, rib cage,
abdomen, lungs with vessel and airway trees, bones, mediastinum, heart — each
layer blended by its fractional voxel occupancy (partial-volume edges). The
slab integral along ``z`` is taken by averaging sub-slices (``small``) or by a
slice-profile filter (``full``); then correlated noise is added and the result
is rounded to int16 HU. Labels (uint8, :mod:`thoraxseg.labels`) are the organ
shapes sampled at voxel centres: esophagus (whole tube), heart (whole heart),
trachea (air lumen above the carina) and aorta (lumen, root to abdomen).

Arrays are ``(x, y, z)`` NIfTI order, voxel axes pointing to the patient's
left, posterior and cranial (``('L', 'P', 'S')``), like SegTHOR.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from thoraxseg import __version__
from thoraxseg.data.layout import (
    CLEAN_LABEL_NAME,
    COURSE_CLEAN_LABEL_NAME,
    COURSE_PATIENTS,
    COURSE_REFERENCE_PATIENT,
)
from thoraxseg.data.phantom.anatomy import Anatomy, PatientParams, grid_for, sample_patient
from thoraxseg.data.phantom.geometry import (
    FAR,
    Field,
    Grid,
    ellipse_sdf,
    ellipsoid_sdf,
    max_occupancy_segments,
    occupancy,
    thin_factor,
)
from thoraxseg.data.transforms import (
    COURSE_CENTER,
    COURSE_ROTATION_DEG,
    COURSE_SHIFT,
    course_matrix,
    grid_scale,
    move_label,
)
from thoraxseg.data.volume import Volume, save_label, save_volume
from thoraxseg.errors import InputError
from thoraxseg.labels import Organ
from thoraxseg.utils.atomic import atomic_dir, write_json_atomic
from thoraxseg.utils.progress import make_progress

#: Accepted ``size`` values.
SIZES: tuple[str, ...] = ("small", "full")
#: Sub-slices averaged per slice (slab partial volume) for each size.
Z_OVERSAMPLE: dict[str, int] = {"small": 3, "full": 1}
#: Tissue masks that :func:`render` can return (see ``masks``).
TISSUES: tuple[str, ...] = ("lung", "bone", "fat", "muscle")
#: HU range written (scanner range); outside the reconstruction circle is -1024.
HU_MIN, HU_MAX = -1024, 3071
AIR_HU: float = -1000.0


@dataclass
class PhantomCase:
    """One generated patient.

    Attributes
    ----------
    patient_id
        ``Patient_XX``.
    image
        CT volume, int16 HU, axes ``(x, y, z)``, affine voxel → RAS mm.
    labels
        uint8 label array on the same grid (0 background, 1–4 organs).
    params
        The patient's parameters.
    masks
        Boolean tissue masks (:data:`TISSUES`) when requested, else None.
    """

    patient_id: str
    image: Volume
    labels: np.ndarray
    params: PatientParams
    masks: dict[str, np.ndarray] | None = None


# ------------------------------------------------------------------------------------------
class _Canvas:
    """A float32 HU image being painted, with its grid."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.h = float(grid.spacing[0])
        self.img = np.full(grid.shape, AIR_HU, dtype=np.float32)

    def paint(self, sl: tuple[slice, slice, slice], occ: np.ndarray, value: Any) -> None:
        """``img[sl] += occ * (value - img[sl])`` (occ in 0..1, value scalar or array)."""
        view = self.img[sl]
        delta = np.subtract(np.float32(value) if np.isscalar(value) else value, view, dtype=np.float32)
        delta *= occ
        view += delta

    def paint_field(self, f: Field | None, value: Any, offset: float = 0.0, factor: float = 1.0) -> None:
        """Paint the inside of ``f`` dilated by ``offset`` mm."""
        if f is None:
            return
        occ = occupancy(f.d - np.float32(offset), self.h)
        if factor != 1.0:
            occ *= np.float32(factor)
        self.paint(f.sl, occ, value)


def _box_coords(grid: Grid, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = grid.xy(box[0], box[1])
    return x, y, grid.z(box[2])


def _smooth_noise(grid: Grid, box: tuple[slice, slice, slice], cell_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture (zero mean, unit-ish SD, float32) on ``box``: cubic B-spline of a random lattice.

    Separable: the lattice is interpolated along each axis with a small dense
    matrix (BLAS), far faster than ``ndimage.zoom`` on large boxes.
    """
    mats = []
    for axis in range(3):
        n = box[axis].stop - box[axis].start
        step = grid.spacing[axis]
        pos = np.arange(n) * step / cell_mm
        m = math.ceil(pos[-1]) + 4 if n else 4
        t = pos[:, None] - (np.arange(m)[None, :] - 1.0)
        a = np.abs(t)
        w = np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
        mats.append(w.astype(np.float32))
    lattice = rng.standard_normal(tuple(mt.shape[1] for mt in mats)).astype(np.float32)
    t1 = lattice @ mats[2].T  # (a, b, nk)
    t2 = np.einsum("jb,abk->ajk", mats[1], t1, optimize=True)
    ni = mats[0].shape[0]
    out = (mats[0] @ t2.reshape(t2.shape[0], -1)).reshape(ni, t2.shape[1], t2.shape[2])
    return out * np.float32(1.0 / 0.55)


def _bone_value(d: np.ndarray, cortex: float, marrow: float, thickness: float) -> np.ndarray:
    """Bone HU from depth under the surface: cortex within ``thickness`` mm, marrow deeper."""
    w = np.clip(1.0 + d * np.float32(1.0 / thickness), 0.0, 1.0)
    return np.float32(marrow) + np.float32(cortex - marrow) * w


# ------------------------------------------------------------------------------------------
def render(anat: Anatomy, grid: Grid, rng: np.random.Generator,
           masks: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint the noise-free CT (float32 HU) and the organ labels (uint8) of ``anat`` on ``grid``.

    With ``masks`` (a dict), also fill boolean tissue masks on the grid — voxels
    well inside lung parenchyma (no vessel), bone, subcutaneous fat and chest-wall
    muscle — for tests and diagnostics. The phases run in a fixed order (each draws
    from ``rng`` in turn): table, body wall and abdomen, organ fields, lungs,
    skeleton, mediastinum, labels.
    """
    cv = _Canvas(grid)
    if masks is not None:
        for name in TISSUES:
            masks[name] = np.zeros(grid.shape, dtype=bool)
    zs = grid.z_of_slices()
    z_lo, z_hi = float(zs[0]) - 5.0, float(zs[-1]) + 5.0
    _paint_table(cv, anat)  # scanner frame: horizontal whatever the patient rotation
    body = _paint_body(cv, anat, rng, z_lo, z_hi, masks)
    fields = _organ_fields(anat, grid, rng)
    _paint_lungs(cv, anat, rng, body, fields, z_lo, z_hi, masks)
    halo = _paint_skeleton(cv, anat, z_lo, z_hi, masks)
    _paint_mediastinum(cv, anat, fields)
    lab = _organ_labels(grid, anat, fields)
    if masks is not None:
        masks["muscle"] &= ~halo
        for name in TISSUES:
            masks[name] &= lab == 0
    return cv.img, lab


@dataclass
class _Body:
    """The body box and the signed distances (mm) the lungs are cut from (crops of the body box)."""

    box: tuple[slice, slice, slice]
    d_cav: np.ndarray  #: rib-cage interior
    d_below: np.ndarray  #: below the diaphragm


@dataclass
class _OrganFields:
    """Signed-distance fields (mm, negative inside) of the mediastinal structures; None when off the grid."""

    heart: Field | None
    aorta: Field | None
    branches: list[Field | None]
    svc: Field | None
    veins: list[Field | None]
    pa: list[Field | None]
    pv: list[Field | None]
    azygos: Field | None
    ivc: Field | None
    trachea: Field | None
    esophagus: Field | None
    bronchi: Field | None


def _paint_body(cv: _Canvas, anat: Anatomy, rng: np.random.Generator, z_lo: float, z_hi: float,
                masks: dict[str, np.ndarray] | None) -> _Body:
    """Fat, muscle, the rib-cage interior, the diaphragm and the upper abdomen."""
    p, grid, h = anat.p, cv.grid, cv.h
    inner = np.float32(-0.6 * h)
    w_b = p.body_half_width + 4.0
    wb = grid.box((-w_b, -p.body_half_depth_ant * 1.02 - 4.0, z_lo), (w_b, p.body_half_depth_post + 4.0, z_hi))
    if wb is None:  # pragma: no cover - the body is always in the field of view
        raise RuntimeError("body outside the field of view")
    x, y, z = _box_coords(grid, wb)
    tex = _smooth_noise(grid, wb, 9.0, rng)
    # smooth random displacement (mm) of every outline: no perfect ellipses
    d_body = anat.body_sdf(x, y, z) + 2.5 * tex
    cv.paint(wb, occupancy(d_body, h), np.float32(p.hu_fat) + 12.0 * tex)
    d_mus = d_body + anat.fat_thickness(y) * (1.0 + 0.25 * tex)
    if masks is not None:
        masks["fat"][wb] = (d_body < inner) & (d_mus > -inner)
    del d_body
    cv.paint(wb, occupancy(d_mus, h), np.float32(p.hu_muscle) + 6.0 * tex)
    # a thin fat plane between the superficial (pectoral, latissimus) and deep chest-wall muscles
    plane = np.maximum(np.abs(d_mus + np.float32(0.45 * p.muscle_ant) * (1.0 + 0.4 * tex)) - 0.8, y - 10.0)
    cv.paint(wb, occupancy(plane, h) * np.float32(0.8), np.float32(p.hu_fat))
    del plane
    d_cav = anat.cavity_sdf(x, y, z) - 1.5 * tex
    if masks is not None:
        masks["muscle"][wb] = (d_mus < inner) & (d_cav > -inner)
    del d_mus
    cv.paint(wb, occupancy(d_cav, h), np.float32(p.hu_fat + 12.0) + 12.0 * tex)
    d_below = anat.diaphragm_sdf(x, y, z)
    # diaphragm muscle sheet, then the upper abdomen
    sheet = np.maximum(d_cav, np.abs(d_below - 2.5) - 2.5)
    cv.paint(wb, occupancy(sheet, h), np.float32(p.hu_muscle))
    del sheet
    d_abd = np.maximum(d_cav + 1.0, d_below)
    _paint_abdomen(cv, anat, wb, x, y, z, d_abd, tex)
    del d_abd
    return _Body(wb, d_cav, d_below)


def _organ_fields(anat: Anatomy, grid: Grid, rng: np.random.Generator) -> _OrganFields:
    """The organ fields (needed for the mediastinal envelope), with organic irregularity of the soft organs."""
    p = anat.p
    f_heart = anat.heart_field(grid, pad=14.0)
    f_aorta = anat.aorta.field(grid, pad=8.0)
    f_branches = [t.field(grid, pad=6.0) for t in anat.arch_branches]
    f_svc = anat.svc.field(grid, pad=6.0)
    f_veins = [t.field(grid, pad=6.0) for t in anat.veins]
    f_pa = [anat.pa_trunk.field(grid, pad=6.0), anat.rpa.field(grid, pad=6.0), anat.lpa.field(grid, pad=6.0)]
    f_pv = [t.field(grid, pad=5.0) for t in anat.pulm_veins]
    f_azy = anat.azygos.field(grid, pad=4.0)
    f_ivc = anat.ivc.field(grid, pad=4.0)
    z_tr_bot = -0.6 * p.trachea_radius
    f_tr = anat.vertical_tube_field(grid, anat.trachea_center, p.trachea_radius, p.trachea_radius * 0.92,
                                    z_tr_bot, p.z_top + 30.0, pad=6.0)
    f_eso = anat.vertical_tube_field(grid, anat.esophagus_center, p.esophagus_a, p.esophagus_b,
                                     anat.z_ge, p.z_top + 30.0, pad=p.esophagus_sleeve + 6.0)
    f_bro = anat.bronchi_field(grid, offset=0.0, pad=6.0)
    # organic irregularity of the soft organs (mm of outline displacement)
    for f, amp, cell in ((f_heart, 2.5, 14.0), (f_eso, 1.0, 8.0)):
        if f is not None:
            f.d += np.float32(amp) * _smooth_noise(grid, f.sl, cell, rng)
    return _OrganFields(f_heart, f_aorta, f_branches, f_svc, f_veins, f_pa, f_pv, f_azy, f_ivc, f_tr, f_eso, f_bro)


def _paint_lungs(cv: _Canvas, anat: Anatomy, rng: np.random.Generator, body: _Body, fields: _OrganFields,
                 z_lo: float, z_hi: float, masks: dict[str, np.ndarray] | None) -> None:
    """Lung parenchyma inside the rib cage, outside the mediastinal envelope, with vessel and airway trees."""
    p, s, grid, h = anat.p, anat.s, cv.grid, cv.h
    inner = np.float32(-0.6 * h)
    wb, d_cav, d_below = body.box, body.d_cav, body.d_below
    f = fields
    f_heart, f_aorta, f_svc, f_azy, f_tr, f_eso, f_bro, f_ivc = (f.heart, f.aorta, f.svc, f.azygos, f.trachea,
                                                                 f.esophagus, f.bronchi, f.ivc)
    f_branches, f_veins, f_pa, f_pv = f.branches, f.veins, f.pa, f.pv
    z_lung_lo = min(p.z_dome_left, p.z_dome_right) - 2.6 * p.dome_drop
    lb = grid.box((-anat.cav_w0 - 2, -float(anat.cav_ba(-100.0)) - 2, z_lung_lo), (anat.cav_w0 + 2, anat.cav_bp + 2,
                                                                                  p.z_apex + 4))
    if lb is not None:  # the lung box lies inside the body box (crop the body-box SDFs)
        lb = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(lb, wb, strict=True))
    f_lung = None
    if lb is not None:
        lx, ly, lz = _box_coords(grid, lb)
        env = np.broadcast_to(np.abs(lx - np.float32(p.trachea_dx)) - np.float32(3.0 * s), tuple(
            sl.stop - sl.start for sl in lb)).astype(np.float32)
        # the spine block (vertebrae + paraspinal muscles) only near the spine
        yv = anat.y_vb(np.linspace(z_lo, z_hi, 40))
        spb = grid.box((-60.0 * s, float(np.min(yv)) - anat.vb_b - 6.0, z_lung_lo),
                       (60.0 * s, anat.cav_bp + 2.0, p.z_apex + 4))
        if spb is not None:
            spb = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(spb, lb, strict=True))
            sx_, sy_, sz_ = _box_coords(grid, spb)
            loc_sp = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(spb, lb, strict=True))
            np.minimum(env[loc_sp], anat.spine_block_sdf(sx_, sy_, sz_), out=env[loc_sp])
        margins = [(f_heart, p.heart_epi_fat + 5.0), (f_aorta, 5.0), (f_svc, 4.0), (f_azy, 3.0), (f_tr, 4.0),
                   (f_eso, p.esophagus_sleeve + 4.0), (f_bro, 2.5), (f_ivc, 3.0)]
        margins += [(f, 4.0) for f in f_branches + f_veins + f_pa] + [(f, 2.0) for f in f_pv]
        for f, m in margins:
            if f is not None:
                np.minimum(env, f.crop(lb) - np.float32(m), out=env)
        loc = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(lb, wb, strict=True))
        d_lung = np.maximum(d_cav[loc], 4.5 - d_below[loc])
        np.maximum(d_lung, anat.apex_sdf(lx, ly, lz), out=d_lung)
        np.maximum(d_lung, -env, out=d_lung)
        del env
        f_lung = Field(lb, d_lung)
        # parenchyma: dependent (posterior) density gradient + soft texture
        ymin, ymax = -float(anat.cav_ba(-60.0)), anat.cav_bp
        grad = np.clip((ly - ymin) / (ymax - ymin), 0.0, 1.0) ** 2
        tex_l = _smooth_noise(grid, lb, 6.0, rng)
        lung_val = np.float32(p.hu_lung) + np.float32(p.hu_lung_gradient) * grad + 14.0 * tex_l
        cv.paint(lb, occupancy(d_lung, h), lung_val)
        del lung_val, tex_l
        trees = _paint_lung_trees(cv, anat, f_lung)
        if masks is not None:
            masks["lung"][lb] = (d_lung < inner) & (trees < 0.02)
        del trees


def _paint_skeleton(cv: _Canvas, anat: Anatomy, z_lo: float, z_hi: float,
                    masks: dict[str, np.ndarray] | None) -> np.ndarray:
    """Spine, ribs, cartilages, clavicles, sternum and scapulae; returns the bones' partial-volume halo mask."""
    p, s, grid, h = anat.p, anat.s, cv.grid, cv.h
    inner = np.float32(-0.6 * h)
    _paint_spine(cv, anat, z_lo, z_hi, masks)
    halo = masks["bone"].copy() if masks is not None else np.zeros((1, 1, 1), dtype=bool)
    if masks is not None:  # partial-volume halo of the spine
        halo = ndimage.binary_dilation(halo, iterations=2)
    bone = (p.hu_cortex, p.hu_marrow)
    for tube in anat.ribs:
        f = tube.field(grid, pad=2.0)
        if f is not None:
            cv.paint(f.sl, occupancy(f.d, h), _bone_value(f.d, bone[0], bone[1], 1.6))
            if masks is not None:
                masks["bone"][f.sl] |= f.d < inner
                halo[f.sl] |= f.d < 1.5 * h
    for tube in anat.cartilages:
        f = tube.field(grid, pad=2.0)
        if f is not None:
            cv.paint(f.sl, occupancy(f.d, h), np.float32(95.0) + 60.0 * np.clip(1.0 + f.d, 0, 1))
            if masks is not None:
                halo[f.sl] |= f.d < 1.5 * h
    for tube in anat.clavicles:
        f = tube.field(grid, pad=2.0)
        if f is not None:
            cv.paint(f.sl, occupancy(f.d, h), _bone_value(f.d, bone[0], bone[1], 2.0))
            if masks is not None:
                halo[f.sl] |= f.d < 1.5 * h
    zj = anat.sternum_z
    sb = grid.box((-30.0 * s, -float(anat.cav_ba(-100.0)) - 20.0 * s, zj[0] - 5), (30.0 * s,
                  -float(anat.cav_ba(100.0)) + 5.0, zj[1] + 5))
    if sb is not None:
        sx_, sy_, sz_ = _box_coords(grid, sb)
        d = anat.sternum_sdf(sx_, sy_, sz_)
        cv.paint(sb, occupancy(d, h), _bone_value(d, bone[0], bone[1], 1.6))
        if masks is not None:
            masks["bone"][sb] |= d < inner
            halo[sb] |= d < 1.5 * h
    scb = grid.box((-anat.cav_w0 - 40, -10.0, p.z_apex - 180.0), (anat.cav_w0 + 40, anat.cav_bp + 40, p.z_apex + 20))
    if scb is not None:
        sx_, sy_, sz_ = _box_coords(grid, scb)
        d = anat.scapula_sdf(sx_, sy_, sz_)
        cv.paint(scb, occupancy(d, h), _bone_value(d, bone[0] * 0.9, bone[1], 1.5))
        if masks is not None:
            halo[scb] |= d < 1.5 * h
    return halo


def _paint_mediastinum(cv: _Canvas, anat: Anatomy, fields: _OrganFields) -> None:
    """Vessels (contrast, venous, right-heart blood), heart, esophagus, airway and thyroid."""
    p = anat.p
    f_eso, f_azy, f_ivc, f_svc, f_aorta, f_heart, f_tr, f_bro = (fields.esophagus, fields.azygos, fields.ivc,
                                                                 fields.svc, fields.aorta, fields.heart,
                                                                 fields.trachea, fields.bronchi)
    if f_eso is not None:
        cv.paint_field(f_eso, p.hu_sleeve, offset=p.esophagus_sleeve)
    blood_a, blood_r, vein = p.hu_contrast, p.hu_right_blood, p.hu_vein
    cv.paint_field(f_azy, 45.0)
    cv.paint_field(f_ivc, 0.5 * (vein + p.hu_liver))
    for f in fields.veins:
        cv.paint_field(f, vein)
    cv.paint_field(f_svc, vein)
    for f in fields.pa:
        cv.paint_field(f, blood_r)
    for f in fields.pv:
        cv.paint_field(f, blood_a)
    for f in fields.branches:
        cv.paint_field(f, blood_a)
    cv.paint_field(f_aorta, blood_a)
    if f_heart is not None:
        _paint_heart(cv, anat, f_heart)
    if f_eso is not None:
        _paint_esophagus(cv, anat, f_eso)
    _paint_airway(cv, anat, f_tr, f_bro)
    _paint_thyroid(cv, anat)


def _organ_labels(grid: Grid, anat: Anatomy, fields: _OrganFields) -> np.ndarray:
    """SegTHOR labels at voxel centres (uint8; later organs win: esophagus, trachea, aorta, heart)."""
    p = anat.p
    lab = np.zeros(grid.shape, dtype=np.uint8)
    f_eso, f_tr = fields.esophagus, fields.trachea
    if f_eso is not None:
        _label(lab, f_eso, Organ.ESOPHAGUS)
    if f_tr is not None:
        zc = grid.z(f_tr.sl[2])
        lumen = f_tr.d + np.float32(p.trachea_wall)
        _label(lab, Field(f_tr.sl, np.where(zc >= 0.0, lumen, FAR).astype(np.float32)), Organ.TRACHEA)
    _label(lab, fields.aorta, Organ.AORTA)
    _label(lab, fields.heart, Organ.HEART)
    return lab


def _label(lab: np.ndarray, f: Field | None, organ: Organ) -> None:
    if f is None:
        return
    view = lab[f.sl]
    view[f.d <= 0] = int(organ)


def _paint_table(cv: _Canvas, anat: Anatomy) -> None:
    """Curved carbon-fibre table under the patient (in the scanner frame)."""
    grid, p = cv.grid, anat.p
    t = np.linspace(0, 2 * math.pi, 181)
    bx = p.body_half_width * np.sin(t)
    by = np.minimum(1.12 * p.body_half_depth_post * np.abs(np.cos(t)), p.body_half_depth_post)
    phi = math.radians(grid.rotation_deg)
    v = math.sin(phi) * bx + math.cos(phi) * by
    v_top = float(v.max()) + grid.center_uv[1] + 1.5
    nx, ny, _ = grid.shape
    sx, sy, _ = grid.spacing
    u = (np.arange(nx) * sx - grid.center_uv[0])[:, None]
    vv = (np.arange(ny) * sy)[None, :]
    surf = v_top - 0.0012 * u * u
    depth = vv - surf  # mm below the table top
    half_w = 230.0
    edge = np.abs(u) - half_w
    occ_all = np.clip(0.5 - np.maximum(np.abs(depth - 20.0) - 20.0, edge) / sx, 0, 1)
    occ_core = np.clip(0.5 - np.maximum(np.abs(depth - 20.0) - 18.0, edge + 2.0) / sx, 0, 1)
    val2d = AIR_HU + occ_all * (250.0 - AIR_HU)
    val2d = val2d + occ_core * (-920.0 - val2d)
    mask = occ_all > 0
    if mask.any():
        cols = np.nonzero(mask.any(axis=0))[0]
        sl = (slice(0, nx), slice(int(cols[0]), int(cols[-1]) + 1), slice(0, grid.shape[2]))
        cv.img[sl] = val2d[:, sl[1], None].astype(np.float32)


def _paint_abdomen(cv: _Canvas, anat: Anatomy, wb: tuple[slice, slice, slice], x: np.ndarray, y: np.ndarray,
                   z: np.ndarray, d_abd: np.ndarray, tex: np.ndarray) -> None:
    """Upper abdomen under the diaphragm: fat, liver, stomach (air–fluid level), spleen, kidneys."""
    p, s, h = anat.p, anat.s, cv.h
    cv.paint(wb, occupancy(d_abd, h), np.float32(p.hu_fat + 15.0) + 10.0 * tex)
    # liver: right and anterior, across the midline in front
    xb = 25.0 * s - 0.55 * (y + 15.0 * s)
    d_liver = np.maximum(d_abd + 1.5, x - xb)
    cv.paint(wb, occupancy(d_liver, h), np.float32(p.hu_liver) + 4.0 * tex)
    del d_liver
    zl = p.z_dome_left
    grid = cv.grid

    def sub(center: tuple[float, float, float], radii: tuple[float, float, float], pad: float = 3.0) -> Any:
        bx = grid.box(np.subtract(center, radii) - pad, np.add(center, radii) + pad)
        if bx is None:
            return None
        loc = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(bx, wb, strict=True))
        bx_x, bx_y = grid.xy(bx[0], bx[1])
        return bx, loc, bx_x, bx_y, grid.z(bx[2])

    # stomach: wall, fluid, air on top (anterior in the supine patient)
    c_st = (0.45 * anat.cav_w0, -8.0 * s, zl - 58.0 * s)
    r_st = (40.0 * s, 40.0 * s, 50.0 * s)
    b = sub(c_st, r_st)
    if b is not None:
        bx, loc, sx, sy, sz = b
        d_st = np.maximum(ellipsoid_sdf(sx, sy, sz, c_st, r_st), d_abd[loc])
        cv.paint(bx, occupancy(d_st, h), np.float32(p.hu_muscle + 5.0))
        d_in = d_st + 3.5
        cv.paint(bx, occupancy(d_in, h), np.float32(18.0) + 8.0 * tex[loc])
        y_level = c_st[1] - r_st[1] + 8.0 + 20.0 * (p.tree_seed % 97) / 97.0
        cv.paint(bx, occupancy(np.maximum(d_in, sy - np.float32(y_level)), h), np.float32(-990.0))
    # spleen, postero-lateral left
    c_sp = (0.74 * anat.cav_w0, 0.5 * anat.cav_bp, zl - 62.0 * s)
    r_sp = (24.0 * s, 46.0 * s, 48.0 * s)
    b = sub(c_sp, r_sp)
    if b is not None:
        bx, loc, sx, sy, sz = b
        d_sp = np.maximum(ellipsoid_sdf(sx, sy, sz, c_sp, r_sp), d_abd[loc] + 1.0)
        cv.paint(bx, occupancy(d_sp, h), np.float32(p.hu_liver + 12.0) + 4.0 * tex[loc])
    # kidneys (upper poles reach the lowest slices)
    for side in (-1.0, 1.0):
        zk = (p.z_dome_right if side < 0 else zl) - 150.0 * s
        c_k = (side * 62.0 * s, float(anat.y_vb(zk)) + 8.0 * s, zk)
        r_k = (26.0 * s, 24.0 * s, 55.0 * s)
        b = sub(c_k, r_k)
        if b is not None:
            bx, loc, sx, sy, sz = b
            d_k = ellipsoid_sdf(sx, sy, sz, c_k, r_k)
            cv.paint(bx, occupancy(d_k, h), np.float32(140.0 + 0.35 * p.hu_contrast) + 6.0 * tex[loc])


def _paint_lung_trees(cv: _Canvas, anat: Anatomy, f_lung: Field) -> np.ndarray:
    """Pulmonary vessels (tapering, branching) with bronchi beside the larger arteries.

    Returns the combined occupancy of vessels and bronchi on the lung box.
    """
    grid, p, h = cv.grid, anat.p, cv.h
    p0, p1, r0, r1, kind = anat.vessel_trees()
    lb = f_lung.sl
    keep = r0 >= 0.15 * h  # thinner twigs are below the noise on this grid
    p0, p1, r0, r1, kind = p0[keep], p1[keep], r0[keep], r1[keep], kind[keep]
    art = kind == 0
    occ_a = max_occupancy_segments(grid, lb, p0[art], p1[art], r0[art], r1[art])
    occ_v = max_occupancy_segments(grid, lb, p0[~art], p1[~art], r0[~art], r1[~art])
    hu_art = np.float32(0.65 * p.hu_right_blood + 15.0)
    hu_vein = np.float32(0.65 * p.hu_contrast + 15.0)
    near_lung = occupancy(f_lung.d - 6.0, h)
    ves = np.maximum(occ_a, occ_v)
    val = np.where(occ_a >= occ_v, hu_art, hu_vein)
    del occ_a, occ_v
    cv.paint(lb, ves * near_lung, val)
    del val
    # bronchi run beside the larger arteries: a soft-tissue wall around an air lumen
    big = art & (r0 >= 1.6)
    if big.any():
        rng_dir = np.random.default_rng(p.tree_seed + 1)
        d = p1[big] - p0[big]
        ref = rng_dir.normal(size=3)
        perp = np.cross(d, ref)
        perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
        rbr = 0.8 * r0[big]
        off = perp * (r0[big] + rbr + 0.8)[:, None]
        a, b = p0[big] + off, p1[big] + off
        wall = max_occupancy_segments(grid, lb, a, b, rbr, 0.85 * rbr)
        cv.paint(lb, wall * near_lung, np.float32(p.hu_muscle + 10.0))
        lum = rbr - (0.35 + 0.16 * rbr)
        lumen = max_occupancy_segments(grid, lb, a, b, lum, 0.85 * lum)
        cv.paint(lb, lumen * near_lung, np.float32(-960.0))
        np.maximum(ves, wall, out=ves)
    return ves


def _paint_spine(cv: _Canvas, anat: Anatomy, z_lo: float, z_hi: float,
                 masks: dict[str, np.ndarray] | None = None) -> None:
    """Vertebral bodies (marrow + cortex + end plates), discs, posterior arches, processes, canal."""
    grid, p, s, h = cv.grid, anat.p, anat.s, cv.h
    y_lo = float(np.min(anat.y_vb(np.linspace(z_lo, z_hi, 50)))) - anat.vb_b - 4.0
    y_hi = float(np.max(anat.y_vb(np.linspace(z_lo, z_hi, 50)))) + anat.canal_offset + 45.0 * s
    bx = grid.box((-50.0 * s, y_lo, z_lo), (50.0 * s, y_hi, z_hi))
    if bx is None:  # pragma: no cover
        return
    x, y, z = _box_coords(grid, bx)
    zc = z.astype(np.float64)
    yv = np.asarray(anat.y_vb(zc), dtype=np.float32)
    yc = yv + np.float32(anat.canal_offset)
    level = p.vertebra_height
    phase = anat.vertebra_phase(zc) * level  # mm from the disc centre, -level/2..level/2
    disc_half = 2.6 * s
    in_disc = np.abs(phase) < disc_half
    endplate = np.clip(1.0 - (np.abs(phase) - disc_half) / 1.6, 0.0, 1.0).astype(np.float32)
    cortex, marrow = p.hu_cortex, p.hu_marrow
    trab = _smooth_noise(grid, bx, 2.5, np.random.default_rng(p.tree_seed + 7))
    d_vb = ellipse_sdf(x, y - yv, np.float32(anat.vb_a), np.float32(anat.vb_b))
    occ_vb = occupancy(d_vb, h)
    bone = _bone_value(d_vb, cortex, marrow, 1.4) + 45.0 * trab
    bone = bone + (np.float32(cortex * 0.85) - bone) * endplate
    disc_val = np.float32(p.hu_muscle + 35.0)
    val = np.where(in_disc, disc_val, bone)
    cv.paint(bx, occ_vb, val)
    if masks is not None:
        masks["bone"][bx] |= (d_vb < -0.6 * h) & ~in_disc
    del bone, val, occ_vb
    # posterior elements
    ring = np.maximum(ellipse_sdf(x, y - yc - 2.0 * s, np.float32(14.0 * s), np.float32(12.5 * s)),
                      -ellipse_sdf(x, y - yc, np.float32(anat.canal_r * 1.1), np.float32(anat.canal_r)))
    ring = np.where((phase > disc_half + 1.0) | (phase < -disc_half - 0.3 * level), ring, FAR)
    # spinous processes slope steeply caudally: their level phase shifts with depth
    ph_sp = np.mod((phase + 0.9 * (y - yc)) / level + 0.5, 1.0) - 0.5
    sp = _capsule2d(x, y, 0.0, yc + 8.0 * s, 0.0, yc + 34.0 * s, 3.6 * s)
    sp = np.where(np.abs(ph_sp - 0.1) < 0.28, sp, FAR)
    tp = np.minimum(_capsule2d(x, y, 9.0 * s, yc, 35.0 * s, yc + 7.0 * s, 4.6 * s),
                    _capsule2d(x, y, -9.0 * s, yc, -35.0 * s, yc + 7.0 * s, 4.6 * s))
    tp = np.where((phase > 0.1 * level) & (phase < 0.45 * level), tp, FAR)
    post = np.minimum(ring, np.minimum(sp, tp))
    cv.paint(bx, occupancy(post, h), _bone_value(post, cortex, marrow, 1.6) + 40.0 * trab)
    if masks is not None:
        masks["bone"][bx] |= post < -0.6 * h
    canal = ellipse_sdf(x, y - yc, np.float32(anat.canal_r * 1.1), np.float32(anat.canal_r))
    cv.paint(bx, occupancy(canal, h), np.float32(p.hu_muscle - 20.0))


def _capsule2d(x: np.ndarray, y: np.ndarray, ax: float, ay: Any, bx: float, by: Any, r: float) -> np.ndarray:
    """2D capsule SDF (per slice; ``ay``/``by`` may vary with z)."""
    dx = np.float32(bx - ax)
    dy = by - ay
    l2 = dx * dx + dy * dy
    t = np.clip(((x - np.float32(ax)) * dx + (y - ay) * dy) / l2, 0.0, 1.0)
    ex = x - np.float32(ax) - t * dx
    ey = y - ay - t * dy
    return np.sqrt(ex * ex + ey * ey) - np.float32(r)


def _paint_heart(cv: _Canvas, anat: Anatomy, f: Field) -> None:
    """Pericardium, epicardial fat, myocardium and the four contrast-filled chambers."""
    p, h = anat.p, cv.h
    grid = cv.grid
    x, y, z = _box_coords(grid, f.sl)
    epi = np.float32(p.heart_epi_fat)
    peri = np.maximum(f.d - epi - 2.2, -(f.d - epi))
    cv.paint(f.sl, occupancy(peri, h), np.float32(p.hu_muscle - 5.0))
    cv.paint(f.sl, occupancy(f.d, h), np.float32(p.hu_myocardium))
    ch = anat.chamber_sdfs(x, y, z)
    for name, d in ch.items():
        blood = p.hu_contrast if name in ("lv", "la") else p.hu_right_blood
        cv.paint(f.sl, occupancy(d, h), np.float32(blood))
    # aortic root and pulmonary trunk open into the ventricles
    for tube, blood in ((anat.aorta, p.hu_contrast), (anat.pa_trunk, p.hu_right_blood)):
        d = tube.field(grid, pad=2.0)
        if d is not None:
            occ = occupancy(d.crop(f.sl) + 2.0, h)
            cv.paint(f.sl, occ, np.float32(blood))


def _paint_esophagus(cv: _Canvas, anat: Anatomy, f: Field) -> None:
    """Collapsed muscular tube, sometimes with a small air lumen."""
    p, h = anat.p, cv.h
    cv.paint(f.sl, occupancy(f.d, h), np.float32(p.hu_esophagus))
    if p.esophagus_air_radius > 0:
        grid = cv.grid
        x, y, z = _box_coords(grid, f.sl)
        cx, cy = anat.esophagus_center(z.astype(np.float64))
        r = np.float32(p.esophagus_air_radius)
        d = ellipse_sdf(x - cx.astype(np.float32), y - cy.astype(np.float32), r * 1.6, r)
        d = np.maximum(d, np.maximum(np.float32(p.esophagus_air_z0) - z, z - np.float32(p.esophagus_air_z1)))
        d = np.maximum(d, f.d + 1.5)
        cv.paint(f.sl, occupancy(d, h) * thin_factor(float(r), h), np.float32(-950.0))


def _paint_airway(cv: _Canvas, anat: Anatomy, f_tr: Field | None, f_bro: Field | None) -> None:
    """Trachea and main/lobar bronchi: soft-tissue wall and air lumen."""
    p = anat.p
    wall_hu = np.float32(p.hu_muscle + 25.0)
    if f_tr is not None:
        cv.paint_field(f_tr, wall_hu)
    if f_bro is not None:
        cv.paint_field(f_bro, wall_hu)
    if f_tr is not None:
        cv.paint_field(f_tr, -995.0, offset=-p.trachea_wall)
    if f_bro is not None:
        cv.paint_field(f_bro, -995.0, offset=-1.6)


def _paint_thyroid(cv: _Canvas, anat: Anatomy) -> None:
    """Thyroid lobes beside the trachea at the thoracic inlet (iodine-bright)."""
    p, s, grid = anat.p, anat.s, cv.grid
    zt = p.z_apex + 5.0
    if zt - 30 > p.z_top:
        return
    for side in (-1.0, 1.0):
        xt, yt = anat.trachea_center(np.array(zt))
        c = (float(xt) + side * (p.trachea_radius + 9.0 * s), float(yt) - 2.0 * s, zt + 15.0)
        r = (9.0 * s, 11.0 * s, 24.0 * s)
        bx = grid.box(np.array(c) - np.array(r) - 3, np.array(c) + np.array(r) + 3)
        if bx is None:
            continue
        x, y, z = _box_coords(grid, bx)
        d = ellipsoid_sdf(x, y, z, c, r)
        cv.paint(bx, occupancy(d, cv.h), np.float32(110.0 + 0.1 * p.hu_contrast))


# ------------------------------------------------------------------------------------------
def make_noise(shape: tuple[int, int, int], noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    """CT-like noise (float32 HU, SD ``noise_sd``): white noise correlated in-plane by a 2×2 box sum."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise[1:] += noise[:-1]
    noise[:, 1:] += noise[:, :-1]
    noise *= np.float32(noise_sd / 2.0)  # the 2×2 sum doubles the SD
    return noise


def finish(img: np.ndarray, oversample: int, noise: np.ndarray) -> np.ndarray:
    """Slab-average sub-slices (or apply the slice profile), add ``noise``, clip to int16 HU.

    Outside the reconstruction circle (the inscribed circle of the in-plane grid)
    the value is -1024, as on scanners.
    """
    if oversample > 1:
        nx, ny, nzf = img.shape
        img = img.reshape(nx, ny, nzf // oversample, oversample).mean(axis=3, dtype=np.float32)
    else:
        img = ndimage.convolve1d(img, np.array([0.12, 0.76, 0.12], dtype=np.float32), axis=2, mode="nearest")
    img += noise
    nx, ny, _ = img.shape
    u = (np.arange(nx) - (nx - 1) / 2.0)[:, None]
    v = (np.arange(ny) - (ny - 1) / 2.0)[None, :]
    outside = (u * u + v * v) > (0.5 * min(nx, ny)) ** 2
    img[outside, :] = HU_MIN
    np.clip(img, HU_MIN, HU_MAX, out=img)
    return np.rint(img).astype(np.int16)


def case_seeds(seed: int, index: int) -> tuple[np.random.SeedSequence, ...]:
    """Independent seed sequences (anatomy, textures, image noise) of case ``index`` of a cohort with ``seed``."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(index),))
    return tuple(ss.spawn(3))


def generate_case(seed: int = 0, index: int = 0, size: str = "small", tissue_masks: bool = False) -> PhantomCase:
    """Generate patient ``index`` (0-based) of the cohort with ``seed``.

    The anatomy depends on ``(seed, index)`` only, so ``small`` and ``full`` give the
    same patient on two grids; the image noise also depends on ``size``.

    Parameters
    ----------
    seed
        Cohort seed.
    index
        Patient index (``Patient_{index+1:02d}``).
    size
        ``'small'`` (128 × 128 × 34–57, 3.6–5.5 mm in-plane, 8–12.4 mm slices) or ``'full'``
        (512 × 512 × 135–227, 0.9–1.37 mm in-plane, 2.0–3.0 mm slices).
    tissue_masks
        Also return boolean masks of lung parenchyma, bone, fat and muscle.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    ss_anat, ss_tex, ss_noise = case_seeds(seed, index)
    params = sample_patient(np.random.default_rng(ss_anat))
    anat = Anatomy(params)
    grid = grid_for(params, size)
    factor = Z_OVERSAMPLE[size]
    # the noise is drawn in a second thread while the anatomy is painted (NumPy releases the GIL)
    with ThreadPoolExecutor(max_workers=1) as pool:
        noise = pool.submit(make_noise, grid.shape, params.noise_sd, np.random.default_rng(ss_noise))
        masks: dict[str, np.ndarray] | None = {} if tissue_masks else None
        img, lab = render(anat, grid.oversampled_z(factor), np.random.default_rng(ss_tex), masks)
        noise_arr = noise.result()
    if factor > 1:
        lab = lab[:, :, factor // 2::factor]
        if masks is not None:
            masks = {k: np.ascontiguousarray(v[:, :, factor // 2::factor]) for k, v in masks.items()}
    ct = finish(img, factor, noise_arr)
    del noise_arr
    pid = f"Patient_{index + 1:02d}"
    return PhantomCase(pid, Volume(ct, grid.affine), np.ascontiguousarray(lab), params, masks)


def corruption_matrix(shape: tuple[int, int, int]) -> np.ndarray:
    """The course's heart-label corruption matrix for a grid of ``shape`` (voxel space, scipy convention)."""
    return course_matrix(scale=grid_scale(shape))


def _check_out(out: Path, overwrite: bool) -> bool:
    """Validate the output folder; return whether an existing folder will be replaced."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    entries = [e for e in out.iterdir()]
    if not entries:
        return True
    if not overwrite:
        raise InputError(out, "already exists and is not empty (use --overwrite to replace a phantom cohort)")
    if not (out / "phantom.json").is_file():
        raise InputError(out, "not a phantom cohort (no phantom.json); refusing to replace it even with --overwrite")
    return True


def course_indices(cases: int) -> list[int]:
    """0-based patient indices of a ``cases``-patient cohort in the course layout.

    ``cases`` ≥ 27 gives ``Patient_01..Patient_NN`` like the course's copy (at most its 40 patients);
    fewer keep the course's numbering with the reference ``Patient_27`` always included:
    ``Patient_01..Patient_{N-1}`` and ``Patient_27``. Each patient is the same as in the full cohort.

    >>> course_indices(3), len(course_indices(40)), course_indices(27)[-1]
    ([0, 1, 26], 40, 26)
    """
    ref = int(COURSE_REFERENCE_PATIENT.rsplit("_", 1)[1]) - 1
    if not 1 <= cases <= COURSE_PATIENTS:
        raise ValueError(f"the course layout has 1..{COURSE_PATIENTS} patients, not {cases}")
    return list(range(cases)) if cases > ref else [*range(cases - 1), ref]


def generate_cohort(
    out: str | Path,
    cases: int,
    size: str = "small",
    seed: int = 0,
    corrupt_heart: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    course_layout: bool = False,
) -> Path:
    """Write a synthetic cohort in the SegTHOR training layout; return ``out``.

    ``out/train/Patient_XX/{Patient_XX.nii.gz (int16 HU), GT.nii.gz (uint8)}`` for
    ``XX = 01..cases``, plus ``out/phantom.json`` (seed, size, grids, per-patient
    parameters, corruption matrix). The cohort is built in a temporary sibling
    folder and renamed into place, so ``out`` is never half-written.

    Parameters
    ----------
    out
        Output folder; must not exist or be empty (or, with ``overwrite``, be an
        earlier phantom cohort).
    cases
        Number of patients (≥ 1).
    size
        ``'small'`` or ``'full'`` (see :func:`generate_case`).
    seed
        Cohort seed: the same seed gives byte-identical files.
    corrupt_heart
        Move every heart label with the course's corruption
        (:func:`thoraxseg.data.transforms.course_matrix` scaled by
        :func:`~thoraxseg.data.transforms.grid_scale`); the first patient also
        keeps its clean label as ``GT_clean.nii.gz``.
    overwrite
        Replace an existing phantom cohort at ``out``.
    progress
        Show a progress bar on stderr.
    course_layout
        Write the course's SegTHOR copy (``data/segthor_train``) exactly: needs ``corrupt_heart``; the clean
        reference is ``Patient_27/GT2.nii.gz`` (next to its moved ``GT.nii.gz``) instead of
        ``Patient_01/GT_clean.nii.gz``; patients as :func:`course_indices` (``cases`` ≤ 40; fewer than
        27 keep the course's numbering and include Patient_27).
    """
    out = Path(out)
    if size not in SIZES:
        raise InputError(out, f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    if int(cases) < 1:
        raise InputError(out, f"need at least 1 case, got {cases}")
    if course_layout and not corrupt_heart:
        raise InputError(out, "the course layout is the course's corrupted copy: it needs corrupt_heart "
                              "(--corrupt-heart)")
    if course_layout and int(cases) > COURSE_PATIENTS:
        raise InputError(out, f"the course's copy has {COURSE_PATIENTS} patients; --cases {cases} is more")
    indices = course_indices(int(cases)) if course_layout else list(range(int(cases)))
    ref_index = indices[-1] if course_layout else 0
    clean_name = COURSE_CLEAN_LABEL_NAME if course_layout else CLEAN_LABEL_NAME
    replace = _check_out(out, overwrite)
    if replace and not any(out.iterdir()):
        out.rmdir()
    manifest: dict[str, Any] = {
        "generator": "thoraxseg phantom",
        "version": __version__,
        "seed": int(seed),
        "size": size,
        "cases": int(cases),
        "corrupt_heart": bool(corrupt_heart),
        "layout": "course" if course_layout else "segthor",
        "reference": (f"train/Patient_{ref_index + 1:02d}/{clean_name}" if corrupt_heart else None),
        "axis_order": "(x, y, z) NIfTI voxel order; voxel axes point to patient left, posterior, cranial "
                      "(nibabel aff2axcodes ('L', 'P', 'S')); affine maps voxels to RAS+ mm",
        "patient_frame": "params in mm/HU: X left, Y posterior, Z cranial; X=Y=0 body centre, Z=0 carina",
        "labels": {"1": "esophagus (whole tube to the GE junction)", "2": "heart (whole heart)",
                   "3": "trachea (air lumen above the carina)", "4": "aorta (lumen, root to abdomen)"},
        "corruption": None,
        "patients": [],
    }
    # the CT of one case is compressed in a second thread while the next case is painted
    with atomic_dir(out, overwrite=replace) as tmp, make_progress() as bar, \
            ThreadPoolExecutor(max_workers=1) as writer:
        task = bar.add_task(f"phantom ({size})", total=int(cases)) if progress else None
        pending = None
        for i in indices:
            case = generate_case(seed, i, size)
            folder = tmp / "train" / case.patient_id
            folder.mkdir(parents=True)
            if pending is not None:
                pending.result()
            pending = writer.submit(save_volume, case.image, folder / f"{case.patient_id}.nii.gz")
            row: dict[str, Any] = {
                "patient_id": case.patient_id,
                "shape": list(case.image.shape),
                "spacing_mm": [round(v, 6) for v in case.image.spacing],
                "organ_voxels": {o.name.lower(): int(np.count_nonzero(case.labels == int(o)))
                                 for o in (Organ.ESOPHAGUS, Organ.HEART, Organ.TRACHEA, Organ.AORTA)},
            }
            labels = case.labels
            if corrupt_heart:
                matrix = corruption_matrix(case.image.shape)
                if manifest["corruption"] is None:
                    manifest["corruption"] = {
                        "label": int(Organ.HEART),
                        "rotation_deg": COURSE_ROTATION_DEG,
                        "center_512": list(COURSE_CENTER),
                        "shift_512": list(COURSE_SHIFT),
                        "scale": list(grid_scale(case.image.shape)),
                        "convention": "out[o] = in[M @ o] (scipy.ndimage.affine_transform, order=0), voxel (x, y, z)",
                        "matrix": np.round(matrix, 10).tolist(),
                    }
                moved, clash = move_label(labels, int(Organ.HEART), matrix)
                row["heart_voxels_dropped_on_other_organs"] = clash
                if i == ref_index:
                    save_label(labels, case.image, folder / clean_name)
                labels = moved
            save_label(labels, case.image, folder / "GT.nii.gz")
            row["params"] = case.params.to_dict()
            manifest["patients"].append(row)
            if task is not None:
                bar.advance(task)
        if pending is not None:
            pending.result()
        write_json_atomic(tmp / "phantom.json", manifest)
        _share_permissions(tmp)
    return out


def _share_permissions(root: Path) -> None:
    """Give the cohort ordinary permissions (temp files/folders are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
