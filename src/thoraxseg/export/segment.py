"""``thoraxseg segment``: a CT (NIfTI, NRRD/MHA, DICOM series folder or zip) → labels in every export format.

For each case, in ``OUT`` (one input) or ``OUT/<case>/`` (several inputs, or a folder of cases):

- ``labels.nii.gz`` — uint8 labels on the source grid (format ``nifti``);
- ``labels.seg.nrrd`` — 3D Slicer segmentation, one named, coloured segment per organ (``seg-nrrd``);
- ``seg.dcm`` — DICOM Segmentation referencing the source series (``dicom-seg``, DICOM input only);
- ``rtstruct.dcm`` — RT Structure Set referencing the source series (``rtstruct``, DICOM input only);
- ``summary.json`` — per-organ volume, mean HU, components, QC flags, and the run manifest
  (versions, model sha256, device, seconds per step);
- ``preview.png`` — axial/coronal/sagittal overlays in radiological view.

Prediction goes through the project's one prediction entry point,
:func:`thoraxseg.inference.predict`, on a temporary NIfTI of the CT (the same code path as
``thoraxseg predict``). Every input and the model are checked before anything is written; a
case's folder appears only when all of its files are complete (:func:`~thoraxseg.utils.atomic.atomic_dir`).
"""

from __future__ import annotations

import contextlib
import platform
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.data.dicom import DicomSeries, read_ct_series
from thoraxseg.data.postprocess import Postprocess
from thoraxseg.data.volume import (
    Volume,
    is_nifti,
    load_image,
    load_label,
    nifti_stem,
    save_label,
    save_volume,
)
from thoraxseg.errors import ConfigError, InputError
from thoraxseg.inference import predict
from thoraxseg.inference.bundle import LoadedModel, open_model, package_versions
from thoraxseg.utils.atomic import atomic_dir, write_json_atomic
from thoraxseg.utils.progress import err_console, progress_enabled

#: Output formats, in the order they are written.
FORMATS: tuple[str, ...] = ("nifti", "seg-nrrd", "dicom-seg", "rtstruct")
DICOM_FORMATS = ("dicom-seg", "rtstruct")
FILE_NAMES = {"nifti": "labels.nii.gz", "seg-nrrd": "labels.seg.nrrd", "dicom-seg": "seg.dcm",
              "rtstruct": "rtstruct.dcm"}
_ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class CaseInput:
    """One case to segment: where its CT is and how to read it."""

    name: str
    path: Path
    kind: str  # "nifti", "itk" (NRRD/MHA via SimpleITK) or "dicom" (folder or zip)


@dataclass
class LoadedCase:
    """A case's CT in memory (and, for DICOM input, the series headers)."""

    case: CaseInput
    volume: Volume
    series: DicomSeries | None = None
    seconds: float = 0.0


@dataclass
class CaseResult:
    """What :func:`segment` wrote for one case."""

    name: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# inputs


def parse_formats(formats: str | Sequence[str] | None) -> list[str] | None:
    """``"nifti,rtstruct"`` → ``["nifti", "rtstruct"]`` (file order); None = every format that applies.

    >>> parse_formats("rtstruct, nifti")
    ['nifti', 'rtstruct']
    """
    if formats is None:
        return None
    items = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ConfigError(f"--formats: unknown format(s) {', '.join(bad) or '(none given)'}; "
                          f"choose from {', '.join(FORMATS)}")
    return [f for f in FORMATS if f in items]


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _kind_of_file(path: Path) -> str | None:
    name = path.name.lower()
    if is_nifti(name):
        return "nifti"
    if name.endswith(_ITK_SUFFIXES):
        return "itk"
    if name.endswith(".zip"):
        return "dicom"
    return None


def _case_name(path: Path, kind: str) -> str:
    if kind == "nifti":
        return nifti_stem(path)
    return path.stem if path.is_file() else path.name


def resolve_inputs(inputs: Sequence[str | Path]) -> tuple[list[CaseInput], bool]:
    """The cases named by ``inputs``, and whether each gets its own output subfolder.

    An input is an image file (NIfTI, NRRD/MHA, or a zip of a DICOM series), a folder with
    DICOM files directly inside (one series, searched recursively), or a folder of cases
    (every image file, zip and sub-folder inside it is one case).

    Raises
    ------
    InputError
        A missing input, an unsupported file, an empty folder, or two cases with the same name.
    """
    cases: list[CaseInput] = []
    per_case = len(inputs) > 1
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(p, "input not found")
        if p.is_file():
            kind = _kind_of_file(p)
            if kind is None:
                raise InputError(p, "not a NIfTI/NRRD/MHA image or a zip of a DICOM series")
            cases.append(CaseInput(_case_name(p, kind), p, kind))
            continue
        entries = sorted(p.iterdir())
        if any(e.is_file() and _is_dicom_file(e) for e in entries):
            cases.append(CaseInput(p.name, p, "dicom"))
            continue
        per_case = True
        found = 0
        for e in entries:
            if e.name.startswith("."):
                continue
            kind = "dicom" if e.is_dir() else _kind_of_file(e)
            if kind is not None:
                cases.append(CaseInput(_case_name(e, kind), e, kind))
                found += 1
        if not found:
            raise InputError(p, "no DICOM files, images or case folders inside")
    seen: dict[str, Path] = {}
    for c in cases:
        if c.name in seen:
            raise InputError(c.path, f"two cases named {c.name!r} (also {seen[c.name]}); outputs would collide")
        seen[c.name] = c.path
    return cases, per_case


def _read_itk(path: Path) -> Volume:
    import SimpleITK as sitk

    from thoraxseg.data.dicom import LPS_TO_RAS

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"unreadable image ({str(exc).strip().splitlines()[-1]})") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"expected a scalar 3D image, got {img.GetDimension()}D with "
                               f"{img.GetNumberOfComponentsPerPixel()} component(s)")
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    aff = np.eye(4)
    aff[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError(path, "NaN/inf voxels")
        if np.allclose(arr, np.rint(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
            arr = np.rint(arr).astype(np.int16)
    if arr.min() == arr.max():
        raise InputError(path, f"empty image (every voxel is {arr.flat[0]})")
    return Volume(np.ascontiguousarray(arr), LPS_TO_RAS @ aff, None, path)


def load_case(case: CaseInput, series_uid: str | None = None) -> LoadedCase:
    """Read a case's CT fully (every check of its reader)."""
    t0 = time.perf_counter()
    series = None
    if case.kind == "nifti":
        volume = load_image(case.path)
    elif case.kind == "itk":
        volume = _read_itk(case.path)
    else:
        series = read_ct_series(case.path, series_uid)
        volume = series.volume
    return LoadedCase(case, volume, series, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------
# the pipeline


def _say(text: str) -> None:
    if progress_enabled():
        err_console.print(text)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - t0, 3)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def predict_labels(model: LoadedModel, volume: Volume, device: str = "cpu", postprocess: Postprocess = True,
                   **options: Any) -> np.ndarray:
    """Labels (uint8, ``volume``'s grid) from :func:`thoraxseg.inference.predict` on a temporary NIfTI of ``volume``."""
    with tempfile.TemporaryDirectory(prefix="thoraxseg-segment-") as tmp:
        image = Path(tmp) / "case.nii.gz"
        save_volume(volume, image)
        (written,) = predict(model.run, image, Path(tmp) / "pred", postprocess=postprocess, device=device,
                             **options)
        labels = load_label(written).array
    if labels.shape != volume.shape:  # the predictors write on the source grid; anything else is a bug
        raise RuntimeError(f"prediction on grid {labels.shape}, expected {volume.shape}")
    return labels


def segment(
    inputs: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    formats: str | Sequence[str] | None = None,
    series_uid: str | None = None,
    device: str = "cpu",
    postprocess: Postprocess = True,
    overwrite: bool = False,
    **predict_options: Any,
) -> list[CaseResult]:
    """Segment every case of ``inputs`` with ``model`` and write the outputs (see module docstring).

    Parameters
    ----------
    inputs
        Image files, DICOM series folders/zips, or folders of cases.
    model
        A training run folder or a bundle from :func:`~thoraxseg.inference.bundle.export_model`.
    out
        Output folder: the case's files for one input, else one sub-folder per case.
    formats
        Subset of :data:`FORMATS` (comma-separated or a list); default every format that
        applies (the DICOM ones only for DICOM input). ``summary.json`` and ``preview.png``
        are always written.
    series_uid
        Series Instance UID to read from DICOM folders with several series.
    device
        ``cpu``, ``cuda`` or ``cuda:N``.
    postprocess
        The predictors' clean-up (:func:`thoraxseg.data.postprocess.clean_up`; default: each organ's
        largest piece, pieces stacked across missed slices counted as one).
    overwrite
        Replace existing output folders.
    **predict_options
        Passed to :func:`thoraxseg.inference.predict` (``batch_size``, ``checkpoint``, ``tta``, ``step``).

    Raises
    ------
    InputError, ConfigError
        Bad input, model or settings — raised before anything is written.
    """
    out = Path(out)
    wanted = parse_formats(formats)
    cases, per_case = resolve_inputs(inputs)
    if wanted is not None:
        dicom_only = [f for f in wanted if f in DICOM_FORMATS]
        not_dicom = [c for c in cases if c.kind != "dicom"]
        if dicom_only and not_dicom:
            raise InputError(not_dicom[0].path, f"--formats {','.join(dicom_only)} needs a DICOM input, "
                                                f"this is a {not_dicom[0].kind} image")
    targets = [out / c.name if per_case else out for c in cases]
    for t in targets:
        if t.exists() and not t.is_dir():
            raise InputError(t, "output path exists and is not a folder")
        if t.exists() and not overwrite and any(t.iterdir()):
            raise InputError(t, "output already exists (use --overwrite to replace it)")
    created = not out.exists()
    try:
        return _run(cases, targets, model, series_uid, wanted, device, postprocess, overwrite, predict_options)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # no empty output folder left behind
        raise


def _run(cases: list[CaseInput], targets: list[Path], model: str | Path, series_uid: str | None,
         wanted: list[str] | None, device: str, postprocess: Postprocess, overwrite: bool,
         predict_options: dict[str, Any]) -> list[CaseResult]:
    t_model = time.perf_counter()
    with open_model(model) as loaded:
        model_seconds = time.perf_counter() - t_model
        # every input is read (and checked) before anything is written; one input stays in memory
        preloaded: LoadedCase | None = None
        for i, case in enumerate(cases):
            _say(f"segment: checking {case.name} ({i + 1}/{len(cases)})")
            lc = load_case(case, series_uid)
            if len(cases) == 1:
                preloaded = lc
        results = []
        for i, (case, target) in enumerate(zip(cases, targets, strict=True)):
            lc = preloaded or load_case(case, series_uid)
            results.append(_segment_case(lc, loaded, target, wanted, device, postprocess, overwrite,
                                         model_seconds, f"{i + 1}/{len(cases)}", predict_options))
    return results


def _segment_case(lc: LoadedCase, model: LoadedModel, target: Path, wanted: list[str] | None, device: str,
                  postprocess: Postprocess, overwrite: bool, model_seconds: float, counter: str,
                  predict_options: dict[str, Any]) -> CaseResult:
    from thoraxseg import __version__
    from thoraxseg.export.dicomseg import write_dicom_seg
    from thoraxseg.export.preview import write_preview
    from thoraxseg.export.rtstruct import write_rtstruct
    from thoraxseg.export.segnrrd import write_seg_nrrd
    from thoraxseg.export.summary import summarize

    name = lc.case.name
    formats = wanted or [f for f in FORMATS if lc.series is not None or f not in DICOM_FORMATS]
    seconds: dict[str, float] = {"read": round(lc.seconds, 3), "open_model": round(model_seconds, 3)}
    t_case = time.perf_counter()
    _say(f"segment: {name} ({counter}): predicting with {model.arm} on {device}")
    with _timed(seconds, "predict"):
        labels = predict_labels(model, lc.volume, device, postprocess, **predict_options)
    algorithm = f"thoraxseg {model.arm}"
    if target.exists() and not any(target.iterdir()):
        target.rmdir()
    files: list[Path] = []
    with atomic_dir(target, overwrite=overwrite) as tmp:
        _say(f"segment: {name} ({counter}): writing {', '.join(formats)}")
        written_dicom: dict[str, list[int]] = {}
        for fmt in formats:
            path = tmp / FILE_NAMES[fmt]
            with _timed(seconds, f"write_{fmt}"):
                if fmt == "nifti":
                    save_label(labels, lc.volume, path)
                elif fmt == "seg-nrrd":
                    write_seg_nrrd(labels, lc.volume, path)
                elif fmt == "dicom-seg":
                    assert lc.series is not None
                    written_dicom[fmt] = write_dicom_seg(labels, lc.series, path, algorithm, __version__)
                else:
                    assert lc.series is not None
                    written_dicom[fmt] = write_rtstruct(labels, lc.series, path, algorithm, __version__)
            if path.exists():
                files.append(target / path.name)
        with _timed(seconds, "summary"):
            summary = summarize(labels, lc.volume, model.training_volumes_ml)
        with _timed(seconds, "preview"):
            write_preview(lc.volume, labels, tmp / "preview.png", title=f"{name} — {algorithm}")
        files.append(target / "preview.png")
        not_written = [f for f, organs in written_dicom.items() if not organs]
        seconds["total"] = round(time.perf_counter() - t_case + seconds["read"] + seconds["open_model"], 3)
        summary["input"] = {
            "path": str(lc.case.path), "kind": lc.case.kind, "shape": list(lc.volume.shape),
            "spacing_mm": list(lc.volume.spacing),
            **({"series_instance_uid": lc.series.series_uid, "study_instance_uid": lc.series.study_uid,
                "frame_of_reference_uid": lc.series.frame_of_reference_uid, "slices": len(lc.series.files)}
               if lc.series is not None else {}),
        }
        summary["outputs"] = [f.name for f in files] + ["summary.json"]
        if not_written:
            summary["flags"].append(f"no organ predicted: {', '.join(not_written)} not written")
        summary["manifest"] = {
            "versions": package_versions(),
            "model": {"arm": model.arm, "source": str(model.source), "sha256": model.sha256,
                      "bundle_sha256": model.bundle_sha256},
            "device": device, "postprocess": postprocess, "host": platform.node(),
            "seconds": seconds, "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
        write_json_atomic(tmp / "summary.json", summary)
        files.append(target / "summary.json")
    flags = ", ".join(summary["flags"]) or "no QC flags"
    _say(f"segment: {name} ({counter}): done in {seconds['total']:.1f} s ({flags})")
    return CaseResult(name, target, files, summary)


__all__ = ["FORMATS", "CaseInput", "CaseResult", "load_case", "parse_formats", "predict_labels",
           "resolve_inputs", "segment"]
