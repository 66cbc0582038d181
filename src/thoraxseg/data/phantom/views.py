"""The same phantom patient on other grids and fields of view (generalisation tests and benchmarks).

A model is judged by what it does on scans it has not seen: another field of view, another spacing.
:func:`field_of_view_variants` gives one patient as

* ``small``   — the 128 × 128 CPU grid (3.6–5.5 mm in-plane, 8–12 mm slices);
* ``full``    — the same anatomy regenerated on the SegTHOR-like grid (512 × 512, 0.9–1.4 mm, 2–3 mm slices);
* ``crop200`` — the small grid cropped to a ``crop_mm`` in-plane field of view centred on the organs
  (the mediastinum), as a cardiac or CTA reconstruction would be;
* ``pad650``  — the small grid padded with air to a ``pad_mm`` field of view (a large patient, or a
  wide reconstruction).

Every variant keeps world positions (mm): crops and pads move the affine's origin, never the anatomy.
"""

from __future__ import annotations

import numpy as np

from thoraxseg.data.phantom.generator import generate_case
from thoraxseg.data.volume import Volume, reframe

#: Names of the variants, in display order.
VARIANTS: tuple[str, ...] = ("small", "full", "crop200", "pad650")
AIR_HU = -1000


def field_of_view_variants(seed: int, index: int, crop_mm: float = 200.0, pad_mm: float = 650.0,
                           variants: tuple[str, ...] = VARIANTS) -> dict[str, tuple[Volume, Volume]]:
    """``{variant: (CT, labels)}`` of patient ``index`` (0-based) of the cohort with ``seed``.

    ``crop200`` / ``pad650`` are named after the defaults of ``crop_mm`` / ``pad_mm`` (in-plane field
    of view, mm); labels are uint8 volumes on their CT's grid.
    """
    out: dict[str, tuple[Volume, Volume]] = {}
    small = generate_case(seed, index, "small")
    image = small.image
    labels = Volume(small.labels, image.affine)
    sx, sy, _ = image.spacing
    nx, ny, nz = image.shape
    if "small" in variants:
        out["small"] = (image, labels)
    if "full" in variants:
        full = generate_case(seed, index, "full")
        out["full"] = (full.image, Volume(full.labels, full.image.affine))
    if "crop200" in variants:
        cx, cy = np.argwhere(small.labels > 0)[:, :2].mean(axis=0)
        hx, hy = round(crop_mm / 2 / sx), round(crop_mm / 2 / sy)
        lo = (max(0, round(cx) - hx), max(0, round(cy) - hy), 0)
        hi = (min(nx, lo[0] + 2 * hx), min(ny, lo[1] + 2 * hy), nz)
        out["crop200"] = (reframe(image, lo, hi), reframe(labels, lo, hi))
    if "pad650" in variants:
        px, py = max(0, round((pad_mm / sx - nx) / 2)), max(0, round((pad_mm / sy - ny) / 2))
        lo, hi = (-px, -py, 0), (nx + px, ny + py, nz)
        out["pad650"] = (reframe(image, lo, hi, fill=AIR_HU), reframe(labels, lo, hi))
    return out
