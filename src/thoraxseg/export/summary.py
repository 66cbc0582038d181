"""Per-organ measurements and QC flags of a predicted label volume (``summary.json``).

For each organ: volume (mL), mean and standard deviation of HU inside it, number of
26-connected components, the fraction of its voxels outside the body, and QC flags:

- ``missing`` — no voxel;
- ``volume_below_training_range`` / ``volume_above_training_range`` — volume outside the
  [min, max] seen in the model's training labels (when the model records it);
- ``label_on_air`` — more than :data:`ON_AIR_FRACTION` of the organ lies outside the body
  (air around the patient; the trachea's lumen is inside the body and does not count);
- ``fragments`` — more than one connected component.

The body is the largest 26-connected component of voxels above :data:`BODY_HU`, with holes
filled slice by slice (lungs, airways), on the label's ``(x, y, z)`` grid.
"""

from __future__ import annotations

from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from thoraxseg.data.volume import Volume
from thoraxseg.labels import ORGANS, label_name

#: HU threshold separating the body from the air around it.
BODY_HU = -500.0
#: An organ with more than this fraction of its voxels outside the body is flagged ``label_on_air``.
ON_AIR_FRACTION = 0.01


def body_mask(ct: np.ndarray) -> np.ndarray:
    """Boolean ``(x, y, z)`` mask of the patient's body (largest component above −500 HU, holes filled per slice)."""
    above = ct > BODY_HU
    if not above.any():
        return above
    comps = cc3d.connected_components(above.view(np.uint8), connectivity=26)  # uint8: see data.postprocess
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    body = comps == int(np.argmax(sizes))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def summarize(labels: np.ndarray, ct: Volume, training_volumes_ml: dict[str, list[float]] | None = None
              ) -> dict[str, Any]:
    """Per-organ measurements and flags (see module docstring); ``labels`` on ``ct``'s grid.

    Returns
    -------
    dict
        ``{"organs": {name: {...}}, "flags": [organ:flag, ...]}``.
    """
    if labels.shape != ct.shape:
        raise ValueError(f"labels {labels.shape} differ from the CT grid {ct.shape}")
    hu = ct.array
    body = body_mask(hu)
    organs: dict[str, Any] = {}
    flags: list[str] = []
    for organ in ORGANS:
        name = label_name(organ)
        mask = labels == int(organ)
        n = int(mask.sum())
        entry: dict[str, Any] = {"label": int(organ), "voxels": n, "volume_ml": round(n * ct.voxel_volume_ml, 3)}
        organ_flags: list[str] = []
        if n == 0:
            organ_flags.append("missing")
            entry.update(mean_hu=None, std_hu=None, components=0, outside_body_fraction=None)
        else:
            values = hu[mask].astype(np.float64)
            _, components = cc3d.connected_components(mask.view(np.uint8), connectivity=26, return_N=True)
            outside = float(np.mean(~body[mask]))
            entry.update(mean_hu=round(float(values.mean()), 1), std_hu=round(float(values.std()), 1),
                         components=int(components), outside_body_fraction=round(outside, 4))
            if outside > ON_AIR_FRACTION:
                organ_flags.append("label_on_air")
            if components > 1:
                organ_flags.append("fragments")
        seen = (training_volumes_ml or {}).get(name)
        entry["training_volume_range_ml"] = seen
        if n and seen is not None:
            if entry["volume_ml"] < seen[0]:
                organ_flags.append("volume_below_training_range")
            elif entry["volume_ml"] > seen[1]:
                organ_flags.append("volume_above_training_range")
        entry["flags"] = organ_flags
        flags += [f"{name}:{f}" for f in organ_flags]
        organs[name] = entry
    return {"organs": organs, "flags": flags}
