"""NIfTI reading and writing that keeps the full geometry.

Axis order is NIfTI voxel order ``(x, y, z)`` (nibabel), spacing in mm, world
coordinates in the file's own frame (the ``affine``: voxel index → mm, RAS+ as
nibabel reports it). Reading never returns a half-decoded array: corrupt or
truncated files raise :class:`~thoraxseg.errors.InputError` naming the file.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> img = Volume(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.diag([0.8, 0.8, 2.5, 1.0]))
>>> save_volume(img, d / "ct.nii.gz")
>>> back = load_image(d / "ct.nii.gz")
>>> back.shape, back.spacing
((4, 5, 6), (0.8, 0.8, 2.5))
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from thoraxseg.errors import InputError
from thoraxseg.labels import MAX_LABEL
from thoraxseg.utils.atomic import atomic_path

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

try:  # Intel ISA-L inflates gzip 1.6-1.9x faster than zlib, same API (benchmarks/evaluate_speed.py)
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - isal is a dependency; zlib reads the same files
    _inflate = zlib
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Volume:
    """A 3D array with its geometry.

    Attributes
    ----------
    array
        Voxel data, axes ``(x, y, z)``. CT in HU (int16), labels uint8.
    affine
        4×4 voxel-index → world (mm) matrix.
    header
        The source NIfTI header (kept so written files match the source), or None.
    path
        Where it was read from, if anywhere.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    path: Path | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts along ``(x, y, z)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(x, y, z)`` (column norms of the affine)."""
        return tuple(float(round(v, 6)) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (mm) of voxel ``(0, 0, 0)``."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3×3 matrix of unit axis directions (columns) in world space."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: np.ndarray) -> Volume:
        """A new volume with the same geometry and another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return Volume(array, self.affine.copy(), self.header, None)


def reframe(volume: Volume, lo: Sequence[int], hi: Sequence[int], fill: float = 0) -> Volume:
    """The voxels ``lo … hi − 1`` (per axis, ``(x, y, z)``) of ``volume`` on a grid of their own.

    Indices outside the volume are filled with ``fill`` (e.g. −1000 HU of air, or 0 for labels),
    so one call crops to a smaller field of view or pads to a larger one; the affine is moved so
    that every voxel keeps its world position (mm).

    >>> v = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> w = reframe(v, (-1, 1, 0), (3, 3, 4), fill=-1)
    >>> w.shape, w.origin, int(w.array[1, 0, 0]), int(w.array[0, 0, 0])
    ((4, 2, 4), (-2.0, 2.0, 0.0), 4, -1)
    """
    lo_a = np.asarray(lo, dtype=np.int64)
    hi_a = np.asarray(hi, dtype=np.int64)
    shape = np.asarray(volume.shape)
    if lo_a.shape != (3,) or hi_a.shape != (3,) or np.any(hi_a <= lo_a):
        raise ValueError(f"need lo < hi on each of 3 axes, got {tuple(lo)} and {tuple(hi)}")
    out = np.full(tuple(hi_a - lo_a), fill, dtype=volume.array.dtype)
    src_lo, src_hi = np.maximum(lo_a, 0), np.minimum(hi_a, shape)
    if np.all(src_hi > src_lo):
        dst = tuple(slice(a - b, c - b) for a, b, c in zip(src_lo, lo_a, src_hi, strict=True))
        out[dst] = volume.array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))]
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ lo_a.astype(np.float64) + volume.affine[:3, 3]
    return Volume(out, affine)


def is_nifti(path: str | Path) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz``."""
    return str(path).endswith(_NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii``/``.nii.gz``: ``Patient_01.nii.gz -> Patient_01``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _gunzip(raw: bytes, path: Path) -> bytes:
    """Inflate every member of a gzip file in one call per member, CRC and length checked.

    Faster than streaming through :class:`gzip.GzipFile` (no chunked copies); zero padding between
    members is skipped as :mod:`gzip` does.

    Raises
    ------
    InputError
        Not gzip, or the stream ends before its trailer (truncated).
    """
    if raw[:2] != _GZIP_MAGIC:
        raise InputError(path, f"truncated or corrupt file (not a gzip file: starts {raw[:2]!r})")
    parts: list[bytes] = []
    while raw:
        if parts and raw[:2] != _GZIP_MAGIC:
            raise InputError(path, f"truncated or corrupt file ({len(raw)} bytes of trailing data after the gzip stream)")
        member = _inflate.decompressobj(31)  # 31: gzip header and trailer (CRC-32, length)
        parts.append(member.decompress(raw))
        if not member.eof:
            raise InputError(path, "truncated or corrupt file (the gzip stream ends early)")
        raw = member.unused_data.lstrip(b"\x00")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _nifti_from_bytes(data: bytes, path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """A NIfTI-1 or NIfTI-2 image from the bytes of a single ``.nii`` file (nibabel parses and scales)."""
    sizes = {int.from_bytes(data[:4], order) for order in ("little", "big")}
    if 348 in sizes:
        return nib.Nifti1Image.from_bytes(data)
    if 540 in sizes:
        return nib.Nifti2Image.from_bytes(data)
    raise InputError(path, f"not a NIfTI image (header size {int.from_bytes(data[:4], 'little')})")


def _voxels(img: nib.Nifti1Image | nib.Nifti2Image, data: bytes, path: Path) -> np.ndarray:
    """The voxel array of an in-memory ``.nii``: one copy of the bytes when unscaled, else nibabel's scaling.

    nibabel's own reader copies the voxel bytes twice from memory (~3x slower for a 512 x 512 x 200 label).
    """
    proxy = img.dataobj  # nibabel's view of the file: offset, dtype, shape, order and scaling as read
    if proxy.slope != 1.0 or proxy.inter != 0.0 or proxy.order != "F":
        return np.asanyarray(proxy)  # scaled data: nibabel decides the output type
    dtype, shape, offset = proxy.dtype, proxy.shape, int(proxy.offset)
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) < offset + count * dtype.itemsize:
        raise InputError(path, f"truncated or corrupt file ({len(data) - offset} bytes of voxel data, "
                               f"{count * dtype.itemsize} expected for shape {tuple(shape)})")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape, order="F").copy(order="F")


def load_volume(path: str | Path) -> Volume:
    """Read a NIfTI file fully into memory, keeping its geometry.

    Raises
    ------
    InputError
        Missing, unreadable, truncated or corrupt file, or not 3D.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if not p.is_file():
        raise InputError(p, "not a file")
    try:
        if p.name.lower().endswith(".gz"):
            data = _gunzip(p.read_bytes(), p)
            img = _nifti_from_bytes(data, p)
            array = _voxels(img, data, p)
            del data
        else:
            img = nib.load(str(p), mmap=False)  # into memory: no lazy reads of a file that may change
            if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
                raise InputError(p, f"not a NIfTI image ({type(img).__name__})")
            array = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except (EOFError, zlib.error, _inflate.error, gzip.BadGzipFile) as exc:
        raise InputError(p, f"truncated or corrupt file ({exc})") from None
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as exc:
        raise InputError(p, f"not a readable NIfTI file ({exc})") from None
    except (OSError, ValueError) as exc:
        raise InputError(p, f"unreadable NIfTI file ({exc})") from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(p, f"expected a 3D volume, got shape {array.shape}")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise InputError(p, "missing or non-finite affine (geometry)")
    # nibabel returns the file's own (Fortran, x fastest) order; copying it to C order cost ~0.4 s per
    # label and ~0.6 s per CT of 512 x 512 x 200 on every read, and nothing downstream needs C order.
    return Volume(array, affine, img.header.copy(), p)


def read_geometry(path: str | Path) -> Volume:
    """The grid of a NIfTI file from its header only (the voxel data are not read).

    The returned volume's array is a zero-size-in-memory placeholder of the right shape ``(X, Y, Z)``;
    its ``spacing`` (mm) and ``affine`` are the file's.

    Raises
    ------
    InputError
        Missing file, not NIfTI, unreadable header, not 3D, or no finite affine.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "file not found")
    if not is_nifti(p):
        raise InputError(p, "not a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(p))
        shape = tuple(int(s) for s in img.shape)
        affine = img.affine
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(p, f"unreadable NIfTI header ({exc})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(p, f"expected a 3D volume, got shape {shape}")
    if affine is None or not np.all(np.isfinite(affine)):
        raise InputError(p, "missing or non-finite affine (geometry)")
    return Volume(np.broadcast_to(np.zeros((), np.uint8), shape), affine, None, p)


def load_image(path: str | Path) -> Volume:
    """Read a CT volume (HU). Rejects NaN/inf voxels and empty (all-constant) volumes."""
    vol = load_volume(path)
    arr = vol.array
    if arr.size == 0:
        raise InputError(vol.path or path, "empty volume (no voxels)")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError(vol.path or path, f"{int(np.sum(~np.isfinite(arr)))} NaN/inf voxels")
    if arr.min() == arr.max():
        raise InputError(vol.path or path, f"empty image (every voxel is {arr.flat[0]})")
    return vol


def load_label(path: str | Path, max_label: int = MAX_LABEL) -> Volume:
    """Read a label volume as uint8, checking that values are integers in ``0..max_label``."""
    vol = load_volume(path)
    arr = vol.array
    if arr.size == 0:
        raise InputError(vol.path or path, "empty volume (no voxels)")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(vol.path or path, "NaN/inf in label volume")
        if not np.all(arr == np.round(arr)):
            raise InputError(vol.path or path, "non-integer label values")
    # min/max first: np.unique sorts the whole volume (seconds at 512×512×200); only bad files need it
    in_range = (arr.dtype.kind == "u" or arr.min() >= 0) and arr.max() <= max_label  # unsigned: no min pass
    bad = [] if in_range else [v for v in np.unique(arr).tolist() if v < 0 or v > max_label]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:8])
        raise InputError(vol.path or path, f"labels outside 0-{max_label}: [{shown}]")
    vol.array = arr.astype(np.uint8, copy=False)
    return vol


def _header_for(volume: Volume, dtype: np.dtype) -> nib.Nifti1Header:
    header = volume.header.copy() if volume.header is not None else nib.Nifti1Header()
    if not isinstance(header, nib.Nifti1Header):
        header = nib.Nifti1Header.from_header(header)
    header.set_data_dtype(dtype)
    return header


def save_volume(volume: Volume, path: str | Path) -> None:
    """Write a volume atomically, with the volume's own dtype and geometry.

    The affine is written to both sform and qform (codes from the source header
    when there is one, else scanner/aligned = 1), so SimpleITK and nibabel read
    the same geometry back.
    """
    arr = volume.array
    header = _header_for(volume, arr.dtype)
    header.set_slope_inter(1.0, 0.0) if np.issubdtype(arr.dtype, np.integer) else None
    img = nib.Nifti1Image(arr, volume.affine, header=header)
    sform_code = int(header["sform_code"]) or 1
    qform_code = int(header["qform_code"])
    img.set_sform(volume.affine, code=sform_code)
    img.set_qform(volume.affine, code=qform_code if qform_code else 0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def save_label(array: np.ndarray, reference: Volume, path: str | Path) -> None:
    """Write a label array (uint8) on exactly ``reference``'s grid, atomically.

    Raises
    ------
    ValueError
        If the array's shape differs from the reference's, or values are outside 0..255.
    """
    arr = np.asarray(array)
    if arr.shape != reference.shape:
        raise ValueError(f"label shape {arr.shape} differs from reference shape {reference.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("label values must be in 0..255")
    out = Volume(arr.astype(np.uint8, copy=False), reference.affine, reference.header)
    save_volume(out, path)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient ``array`` (``(x, y, z)`` with ``affine``) to the closest RAS+ voxel order (flips and axis swaps only).

    Returns the reoriented array (a view where possible) and its voxel size in mm, in RAS order: what every
    display (preview, report, realignment overlays) shows.

    >>> import numpy as np
    >>> lps = np.diag([-2.0, -1.0, 3.0, 1.0])  # x towards the left, y towards posterior
    >>> arr, spacing = to_ras(np.arange(8).reshape(2, 2, 2), lps)
    >>> spacing, int(arr[0, 0, 0])
    ((2.0, 1.0, 3.0), 6)
    """
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt("RAS"))
    out = nib.orientations.apply_orientation(array, ornt)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    order = [int(ornt[i, 0]) for i in range(3)]
    new_spacing = [0.0, 0.0, 0.0]
    for src, dst in enumerate(order):
        new_spacing[dst] = float(spacing[src])
    return out, (new_spacing[0], new_spacing[1], new_spacing[2])


def same_geometry(a: Volume, b: Volume, atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> str | None:
    """Compare two grids. Returns None when equal, else a short description of the difference.

    >>> import numpy as np
    >>> v = Volume(np.zeros((2, 2, 2)), np.eye(4))
    >>> same_geometry(v, v) is None
    True
    """
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if not np.allclose(a.spacing, b.spacing, atol=atol_mm):
        return f"spacing {_fmt(a.spacing)} vs {_fmt(b.spacing)} mm"
    if not np.allclose(a.origin, b.origin, atol=max(atol_mm, 1e-3 * max(a.spacing))):
        return f"origin {_fmt(a.origin)} vs {_fmt(b.origin)} mm"
    if not np.allclose(a.direction, b.direction, atol=atol_dir):
        return "direction (orientation) differs"
    return None


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
