"""DICOM CT series ↔ :class:`~thoraxseg.data.volume.Volume`, with the geometry checked.

Reading (:func:`read_ct_series`) groups the files of a folder (or a zip of one) by
Series Instance UID, picks one series, checks it (modality CT, one Image Orientation
(Patient), one pixel grid, slices evenly spaced along the slice normal — a gap or a
duplicate position is an error), sorts the slices by their position along the normal
(never by file name or Instance Number), applies Rescale Slope/Intercept (→ HU) and
returns the volume in the project's conventions: array axes ``(x, y, z)`` = (DICOM
column, row, slice), affine voxel → RAS+ mm.

DICOM patient coordinates are LPS+ (x toward the patient's left, y posterior, z
superior); nibabel and :class:`Volume` use RAS+. The conversion is exactly one sign
flip of the world x and y rows: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps``
(:data:`LPS_TO_RAS`), done only here (and in the inverse writer).

Writing (:func:`write_ct_series`) produces one CT Image Storage file per slice from a
:class:`Volume` (used by the tests and the benchmark to make DICOM series from phantoms
and from NIfTI CTs).

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> aff = np.diag([-0.8, -0.8, 2.5, 1.0]); aff[:3, 3] = [100.0, 120.0, -50.0]
>>> ct = Volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000, aff)
>>> files = write_ct_series(ct, d / "series")
>>> back = read_ct_series(d / "series").volume
>>> bool(np.array_equal(back.array, ct.array)), bool(np.allclose(back.affine, ct.affine))
(True, True)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.data.volume import Volume
from thoraxseg.errors import InputError

#: LPS+ (DICOM patient) ↔ RAS+ (nibabel) world frame: flip x and y. Its own inverse.
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Relative tolerance on slice spacing (fraction of the median step): larger deviations are gaps.
SPACING_RTOL = 0.01
#: Tolerance on direction cosines between slices.
ORIENTATION_ATOL = 1e-4
#: Modalities of non-image objects that may sit next to a CT (structure sets, segmentations, reports):
#: not counted as series to choose from.
NON_IMAGE_MODALITIES = frozenset({"RTSTRUCT", "RTPLAN", "SEG", "SR", "KO", "PR", "REG"})


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """``UID ('description', modality, N slices)`` for error messages and listings."""
        desc = self.description or "no description"
        return f"{self.uid} ({desc!r}, {self.modality or '?'}, {len(self.files)} slices)"


@dataclass
class DicomSeries:
    """A CT series read into a volume, plus the slice headers (no pixel data) in volume order.

    Attributes
    ----------
    volume
        HU (int16), axes ``(x, y, z)`` = (column, row, sorted slice), affine voxel → RAS+ mm.
    datasets
        ``pydicom.Dataset`` headers of the slices, ``datasets[k]`` is slice ``z = k``.
    files
        Source file of each slice, same order.
    source
        The folder or zip that was read.
    """

    volume: Volume
    datasets: list[Any]
    files: list[Path]
    source: Path

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(getattr(self.datasets[0], "FrameOfReferenceUID", ""))


# ----------------------------------------------------------------------------------------------------------------
# geometry


def lps_affine(orientation: Sequence[float], pixel_spacing: Sequence[float], first_position: Sequence[float],
               slice_step: Sequence[float]) -> np.ndarray:
    """Voxel ``(column, row, slice)`` → LPS mm from DICOM attributes.

    Parameters
    ----------
    orientation
        Image Orientation (Patient): row direction cosines (along a row, i.e. increasing
        column), then column direction cosines (increasing row).
    pixel_spacing
        Pixel Spacing: (between rows, between columns) in mm.
    first_position
        Image Position (Patient) of the first sorted slice (centre of its first pixel), mm.
    slice_step
        Vector (mm) from one sorted slice's position to the next.

    >>> lps_affine([1, 0, 0, 0, 1, 0], [0.7, 0.8], [-10, -20, 30], [0, 0, 2.5]).tolist()[0]
    [0.8, 0.0, 0.0, -10.0]
    """
    row_dir = np.asarray(orientation[:3], float)
    col_dir = np.asarray(orientation[3:6], float)
    aff = np.eye(4)
    aff[:3, 0] = row_dir * float(pixel_spacing[1])
    aff[:3, 1] = col_dir * float(pixel_spacing[0])
    aff[:3, 2] = np.asarray(slice_step, float)
    aff[:3, 3] = np.asarray(first_position, float)
    return aff


# ----------------------------------------------------------------------------------------------------------------
# reading


@contextlib.contextmanager
def dicom_folder(path: str | Path) -> Iterator[Path]:
    """Yield a folder of DICOM files: ``path`` itself, or a zip extracted to a temporary folder.

    Raises
    ------
    InputError
        Missing path, or an unreadable zip.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "not found")
    if p.is_dir():
        yield p
        return
    if not zipfile.is_zipfile(p):
        raise InputError(p, "not a folder of DICOM files or a zip of one")
    with tempfile.TemporaryDirectory(prefix="thoraxseg-dicom-") as tmp:
        root = Path(tmp).resolve()
        try:
            with zipfile.ZipFile(p) as zf:
                for info in zf.infolist():
                    target = (root / info.filename).resolve()
                    if root not in target.parents and target != root:
                        raise InputError(p, f"zip member {info.filename!r} points outside the archive")
                zf.extractall(root)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(p, f"unreadable zip ({exc})") from None
        yield root


def _read_header(path: Path) -> Any | None:
    """The header of a DICOM file (no pixel data); None for a file that is not DICOM at all."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None  # not a DICOM file (README, DICOMDIR-less junk): ignored
    except Exception as exc:  # a DICOM file whose header is cut or corrupt
        raise InputError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def _is_dicomdir(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10"


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM image series under ``folder`` (recursively), largest first.

    Files that are not DICOM are ignored, and so are non-image objects next to the CT
    (:data:`NON_IMAGE_MODALITIES`: an RTSTRUCT, a SEG, a report).

    Raises
    ------
    InputError
        No DICOM file at all, or a DICOM file with a corrupt header.
    """
    root = Path(folder)
    series: dict[str, SeriesInfo] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None or _is_dicomdir(ds):
            continue
        if "SeriesInstanceUID" not in ds:
            raise InputError(path, "DICOM file without a Series Instance UID (truncated or incomplete header)")
        if str(getattr(ds, "Modality", "")) in NON_IMAGE_MODALITIES:
            continue
        uid = str(ds.SeriesInstanceUID)
        info = series.setdefault(uid, SeriesInfo(uid, str(getattr(ds, "SeriesDescription", "")),
                                                 str(getattr(ds, "Modality", ""))))
        info.files.append(path)
    if not series:
        raise InputError(root, "no DICOM image files found")
    return sorted(series.values(), key=lambda s: (-len(s.files), s.uid))


def _pick_series(root: Path, found: list[SeriesInfo], series_uid: str | None, shown: Path) -> SeriesInfo:
    if series_uid is not None:
        match = [s for s in found if s.uid == series_uid]
        if not match:
            listing = "; ".join(s.describe() for s in found)
            raise InputError(shown, f"no series with UID {series_uid}; found: {listing}")
        return match[0]
    if len(found) > 1:
        listing = "; ".join(s.describe() for s in found)
        raise InputError(shown, f"{len(found)} DICOM series, pick one with --series: {listing}")
    return found[0]


def _attr(ds: Any, name: str, path: Path) -> Any:
    value = getattr(ds, name, None)
    if value is None or value == "":
        raise InputError(path, f"missing {name}")
    return value


def read_ct_series(path: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Read one CT series from a folder (or a zip of one) into a :class:`Volume` in HU.

    Parameters
    ----------
    path
        Folder of DICOM files (searched recursively) or a ``.zip`` of one.
    series_uid
        Series Instance UID to read when the folder holds several series.

    Returns
    -------
    DicomSeries
        Volume (int16 HU, axes ``(x, y, z)``, affine voxel → RAS+ mm) and the sorted slice headers.

    Raises
    ------
    InputError
        Several series and no ``series_uid`` (the message lists UID, description and slice
        count of each), not CT, mixed orientations or pixel grids, a gap or duplicate slice
        position, a truncated or corrupt file, or HU values that do not fit int16.
    """
    source = Path(path)
    with dicom_folder(source) as root:
        found = list_series(root)
        info = _pick_series(root, found, series_uid, source)
        shown = {f: (source / f.relative_to(root) if source.is_dir() else Path(f"{source}!{f.relative_to(root)}"))
                 for f in info.files}
        headers = [(_read_header(f), f) for f in info.files]
        slices = _sorted_checked([(ds, shown[f], f) for ds, f in headers if ds is not None])
        volume = _read_pixels(slices)
    datasets = [ds for ds, _, _ in slices]
    files = [s for _, s, _ in slices]
    return DicomSeries(volume, datasets, files, source)


def _sorted_checked(slices: list[tuple[Any, Path, Path]]) -> list[tuple[Any, Path, Path]]:
    """Check one CT grid and one orientation; sort by position along the normal; check even spacing."""
    ds0, shown0, _ = slices[0]
    for ds, shown, _ in slices:
        modality = str(getattr(ds, "Modality", ""))
        if modality != "CT":
            raise InputError(shown, f"modality {modality or 'missing'}, expected CT")
        if "PixelData" not in ds and not hasattr(ds, "Rows"):
            raise InputError(shown, "no image (pixel data) in this file")
    orient0 = np.asarray(_attr(ds0, "ImageOrientationPatient", shown0), float)
    grid0 = (int(_attr(ds0, "Rows", shown0)), int(_attr(ds0, "Columns", shown0)))
    spacing0 = np.asarray(_attr(ds0, "PixelSpacing", shown0), float)
    for ds, shown, _ in slices[1:]:
        orient = np.asarray(_attr(ds, "ImageOrientationPatient", shown), float)
        if orient.shape != orient0.shape or not np.allclose(orient, orient0, atol=ORIENTATION_ATOL):
            raise InputError(shown, f"image orientation {np.round(orient, 4).tolist()} differs from "
                                    f"{np.round(orient0, 4).tolist()} of {shown0.name} (one orientation per series)")
        grid = (int(_attr(ds, "Rows", shown)), int(_attr(ds, "Columns", shown)))
        if grid != grid0:
            raise InputError(shown, f"{grid[0]}×{grid[1]} pixels differs from {grid0[0]}×{grid0[1]} of {shown0.name}")
        spacing = np.asarray(_attr(ds, "PixelSpacing", shown), float)
        if not np.allclose(spacing, spacing0, atol=1e-4):
            raise InputError(shown, f"pixel spacing {spacing.tolist()} differs from {spacing0.tolist()} of {shown0.name}")
    if orient0.shape != (6,):
        raise InputError(shown0, f"ImageOrientationPatient has {orient0.size} values, expected 6")
    normal = np.cross(orient0[:3], orient0[3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InputError(shown0, f"ImageOrientationPatient {orient0.tolist()} is not two orthonormal directions")
    positions = [np.asarray(_attr(ds, "ImagePositionPatient", shown), float) for ds, shown, _ in slices]
    order = np.argsort([float(p @ normal) for p in positions], kind="stable")
    slices = [slices[i] for i in order]
    positions = [positions[i] for i in order]
    if len(slices) < 2:
        raise InputError(shown0, "a single slice, not a 3D series")
    heights = np.array([p @ normal for p in positions])
    steps = np.diff(heights)
    step = float(np.median(steps))
    for k, d in enumerate(steps):
        a, b = slices[k][1], slices[k + 1][1]
        if d < max(1e-3, SPACING_RTOL * step):
            raise InputError(b, f"duplicate slice position {heights[k + 1]:.3f} mm along the normal (same as {a.name})")
    for k, d in enumerate(steps):
        a, b = slices[k][1], slices[k + 1][1]
        if abs(d - step) > SPACING_RTOL * step:
            raise InputError(b, f"uneven slice spacing: {d:.3f} mm after {a.name}, the series' step is {step:.3f} mm "
                                f"(a gap or a missing slice)")
        in_plane = positions[k + 1] - positions[k] - d * normal
        if np.linalg.norm(in_plane) > SPACING_RTOL * step + 1e-3:
            raise InputError(b, f"slice position shifted in-plane by {np.linalg.norm(in_plane):.3f} mm "
                                f"relative to {a.name} (sheared or mixed stacks)")
    return slices


def _read_pixels(slices: list[tuple[Any, Path, Path]]) -> Volume:
    """Decode every slice, apply rescale slope/intercept, stack to ``(x, y, z)`` int16 HU."""
    import pydicom

    ds0, shown0, _ = slices[0]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    out = np.empty((cols, rows, len(slices)), dtype=np.int16)
    for k, (_, shown, real) in enumerate(slices):
        try:
            ds = pydicom.dcmread(real)
            pixels = ds.pixel_array
        except Exception as exc:  # truncated/corrupt pixel data, unsupported transfer syntax
            raise InputError(shown, f"unreadable pixel data ({type(exc).__name__}: {exc})") from None
        if pixels.shape != (rows, cols):
            raise InputError(shown, f"pixel data of shape {pixels.shape}, expected ({rows}, {cols})")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        hu = pixels.astype(np.float64) * slope + intercept
        hu = np.rint(hu)  # HU are integers in this project (int16); rescaled stored values are rounded
        if hu.min() < -32768 or hu.max() > 32767:
            raise InputError(shown, f"HU range {hu.min():.0f}..{hu.max():.0f} does not fit int16")
        out[:, :, k] = hu.astype(np.int16).T
    steps = [np.asarray(ds.ImagePositionPatient, float) for ds, _, _ in slices]
    step = (steps[-1] - steps[0]) / (len(slices) - 1)
    aff_lps = lps_affine(np.asarray(ds0.ImageOrientationPatient, float), np.asarray(ds0.PixelSpacing, float),
                         steps[0], step)
    return Volume(out, LPS_TO_RAS @ aff_lps, None, shown0.parent)


# ----------------------------------------------------------------------------------------------------------------
# writing


def write_ct_series(
    volume: Volume,
    out: str | Path,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "CT",
    patient_id: str = "THORAXSEG-PHANTOM",
    patient_name: str = "Phantom^Thoraxseg",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "thoraxseg CT",
    series_number: int = 1,
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write a CT :class:`Volume` as one DICOM CT Image Storage file per slice (explicit VR little endian).

    Parameters
    ----------
    volume
        HU array ``(x, y, z)``; axes 0 and 1 become DICOM columns and rows, axis 2 the
        slices (``z = k`` → file ``k`` unless ``file_names`` says otherwise). The affine
        (RAS+) must have axis 2 orthogonal to axes 0 and 1.
    out
        Folder to create (its files are written atomically, one by one).
    slope, intercept
        Rescale Slope/Intercept: stored value = (HU − intercept) / slope; must round-trip
        exactly to int16 (e.g. slope 0.5, intercept −1024).
    modality
        Modality attribute (``"MR"`` to make a wrong-modality test series).
    file_names
        Name of each slice's file in ``z`` order (e.g. shuffled), default ``CT000000.dcm`` ….

    Returns
    -------
    list[pathlib.Path]
        The files, in ``z`` order.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from thoraxseg import __version__
    from thoraxseg.utils.atomic import atomic_path

    aff = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    row_dir, col_dir = aff[:3, 0] / spacing[0], aff[:3, 1] / spacing[1]
    normal = np.cross(row_dir, col_dir)
    step = aff[:3, 2]
    if abs(abs(float(step @ normal)) - spacing[2]) > 1e-4 * spacing[2]:
        raise ValueError("volume axis 2 is not orthogonal to the slice plane; cannot write a DICOM stack")
    hu = np.asarray(volume.array, dtype=np.float64)
    stored = (hu - intercept) / slope
    if not np.allclose(stored, np.rint(stored)) or stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"HU do not map to int16 stored values exactly with slope {slope}, intercept {intercept}")
    stored = np.rint(stored).astype(np.int16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    n = volume.shape[2]
    names = list(file_names) if file_names is not None else [f"CT{k:06d}.dcm" for k in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} file names for {n} slices")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(out / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.StudyDate, ds.StudyTime = date, time
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "thoraxseg"
        ds.ManufacturerModelName = "thoraxseg.data.dicom.write_ct_series"
        ds.SoftwareVersions = __version__
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "thoraxseg test study"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.KVP = "120"
        ds.AcquisitionNumber = "1"
        ds.SliceThickness = f"{spacing[2]:.6g}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = str(series_number)
        ds.InstanceNumber = str(k + 1)
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        position = aff[:3, 3] + k * step
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.SliceLocation = f"{float(position @ normal):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = f"{intercept:.6g}"
        ds.RescaleSlope = f"{slope:.6g}"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = out / names[k]
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        written.append(path)
    return written


__all__ = [
    "LPS_TO_RAS",
    "DicomSeries",
    "SeriesInfo",
    "dicom_folder",
    "list_series",
    "lps_affine",
    "read_ct_series",
    "write_ct_series",
]
