"""External DICOM tools used by the export tests: dciodvfy (dicom3tools) and plastimatch (Debian packages).

Tests that need them skip only outside CI: under CI (``CI=true``) ``make test`` installs both
(``make dicom-tools``) and a missing tool fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None and not os.environ.get("CI"),
                                    reason="dciodvfy not installed (make dicom-tools)")
needs_plastimatch = pytest.mark.skipif(shutil.which("plastimatch") is None and not os.environ.get("CI"),
                                       reason="plastimatch not installed (make dicom-tools)")


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for one DICOM file (warnings are not errors)."""
    exe = shutil.which("dciodvfy")
    assert exe is not None, "dciodvfy (Debian dicom3tools) is required: make dicom-tools"
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line.strip() for line in (res.stdout + res.stderr).splitlines() if line.strip().startswith("Error")]


def plastimatch_masks(rtstruct: Path, ct_folder: Path, out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rasterise an RTSTRUCT with plastimatch on the referenced CT's grid.

    Returns ``{ROI name: (mask (x, y, z) bool, affine voxel → RAS mm)}`` as plastimatch wrote them.
    """
    exe = shutil.which("plastimatch")
    assert exe is not None, "plastimatch (Debian) is required: make dicom-tools"
    subprocess.run([exe, "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_folder),
                    "--output-prefix", str(out), "--prefix-format", "nrrd"], check=True, capture_output=True,
                   timeout=300)
    masks = {}
    for f in sorted(out.glob("*.nrrd")):
        img = sitk.ReadImage(str(f))
        aff = np.eye(4)
        aff[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
        aff[:3, 3] = img.GetOrigin()
        masks[f.stem] = (np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)) > 0,
                         np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff)
    return masks
