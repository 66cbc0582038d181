"""Model bundles: a trained run packed into one zip that predicts anywhere, without the training data.

``export_model(RUN, model.zip)`` packs what prediction needs and nothing else:

- 2D arms (``enet``, ``customnet``): ``config.yaml`` (resolved) and the checkpoint
  ``thoraxseg predict`` would use (``best.pt``, else ``last.pt``);
- ``nnunet3d``: ``config.yaml`` and nnU-Net's own model folder under the run's
  ``resolved.results_folder`` (``plans.json``, ``dataset.json``, ``dataset_fingerprint.json``
  and each trained fold's checkpoint), at the same relative paths;

plus ``bundle.json``: format and version, the arm, the label map, preprocessing facts
(2D: image size, CT windows, any spacing setting; nnU-Net: target spacing, patch size,
normalisation), the organ volumes seen in the training labels (mL, for QC), the package
versions that trained it, and a manifest with the sha256 of every other file.

:func:`open_model` accepts a run folder or a bundle. A bundle is checked before anything is
loaded: format, a known arm, the same major.minor versions of thoraxseg, torch (and nnunetv2
for ``nnunet3d``), and every file's sha256 against the manifest (no file missing or extra);
it is then extracted to a temporary run folder that :func:`thoraxseg.inference.predict` reads.

The model's identity (:attr:`LoadedModel.sha256`) is the sha256 of the canonical manifest
(sorted ``path: sha256`` of the packed files), so a run folder and its bundle have the same one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import platform
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.arms import arm_names, get_arm
from thoraxseg.arms.runs import load_run_config
from thoraxseg.errors import InputError
from thoraxseg.labels import LABEL_NAMES, ORGANS, label_name
from thoraxseg.utils.atomic import atomic_path

BUNDLE_FORMAT = "thoraxseg-model-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"


@dataclass
class LoadedModel:
    """A model ready to predict: a run folder (a bundle's extracted copy, or the original run)."""

    run: Path
    arm: str
    sha256: str
    manifest: dict[str, Any] = field(repr=False)
    source: Path = Path()
    bundle_sha256: str | None = None

    @property
    def training_volumes_ml(self) -> dict[str, list[float]] | None:
        """``{organ: [min, max]}`` of the training labels' volumes (mL), when known."""
        return self.manifest.get("training_volumes_ml")


# ----------------------------------------------------------------------------------------------------------------
# facts


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_sha256(files: dict[str, str]) -> str:
    """sha256 of the canonical manifest ``{path: sha256}`` (sorted keys, compact JSON).

    >>> manifest_sha256({"b": "2", "a": "1"}) == manifest_sha256({"a": "1", "b": "2"})
    True
    """
    text = json.dumps(dict(sorted(files.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of thoraxseg, Python and the packages prediction depends on."""
    from thoraxseg import __version__

    out = {"thoraxseg": __version__, "python": platform.python_version()}
    for dist in ("torch", "nnunetv2", "numpy", "SimpleITK", "nibabel"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def run_files(run: Path, cfg: dict[str, Any]) -> dict[str, Path]:
    """Files (bundle-relative name → path) that prediction with ``run`` reads (the arm's :meth:`~thoraxseg.arms.Arm.files`).

    Raises
    ------
    InputError
        Unknown arm, or no trained weights in the run.
    """
    arm = str(cfg["model"]).lower()
    if arm not in arm_names():
        raise InputError(run / "config.yaml", f"unknown model arm {arm!r}; expected one of {', '.join(arm_names())}")
    return {"config.yaml": run / "config.yaml", **get_arm(arm).files(run, cfg)}


def files_2d(run: Path, cfg: dict[str, Any]) -> dict[str, Path]:
    """The 2D arms' weights: ``best.pt``, else ``last.pt``."""
    ckpt = next((p for p in (run / "best.pt", run / "last.pt") if p.is_file()), None)
    if ckpt is None:
        raise InputError(run / "best.pt", "no checkpoint in this run folder (train it first)")
    return {ckpt.name: ckpt}


def preprocessing_facts(run: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """What the model expects of its input (the arm's :meth:`~thoraxseg.arms.Arm.facts`)."""
    return get_arm(str(cfg["model"]).lower()).facts(run, cfg)


def facts_2d(run: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """2D arms: image size, windows, preprocessing and pixel spacing."""
    facts = {k: cfg[k] for k in ("image_size", "windows", "preprocessing") if k in cfg}
    facts.update({k: v for k, v in cfg.items() if "spacing" in k})
    return facts


VOLUMES_CACHE = "training_volumes.json"


def training_volumes_ml(cfg: dict[str, Any], run: Path | None = None) -> dict[str, list[float]] | None:
    """``{organ: [min, max]}`` volume (mL) of each organ over the run's training labels; None when unavailable.

    Cases where an organ is absent do not count toward its range. With ``run``, the result is
    cached in ``RUN/training_volumes.json`` together with a fingerprint of the label files
    (patient, size, modification time), so a run folder used as a model does not reread
    its whole cohort on every ``segment``.
    """
    from thoraxseg.data.layout import discover_cases
    from thoraxseg.data.volume import load_label
    from thoraxseg.utils.atomic import write_json_atomic

    data = cfg.get("data")
    if not data or not Path(data).exists():
        return None
    try:
        cases = [c for c in discover_cases(data) if c.label_path is not None]
    except InputError:
        return None
    if not cases:
        return None
    fingerprint = [[c.patient_id, Path(c.label_path).stat().st_size, Path(c.label_path).stat().st_mtime_ns]
                   for c in cases]
    cache = run / VOLUMES_CACHE if run is not None else None
    if cache is not None and cache.is_file():
        with contextlib.suppress(ValueError, OSError):
            cached = json.loads(cache.read_text())
            if cached.get("data") == str(data) and cached.get("labels") == fingerprint:
                return cached["volumes_ml"]
    vols: dict[str, list[float]] = {label_name(o): [] for o in ORGANS}
    for case in cases:
        lab = load_label(case.label_path)
        counts = np.bincount(lab.array.ravel(), minlength=len(LABEL_NAMES))
        for o in ORGANS:
            if counts[int(o)]:
                vols[label_name(o)].append(float(counts[int(o)]) * lab.voxel_volume_ml)
    result = {k: [round(min(v), 3), round(max(v), 3)] for k, v in vols.items() if v}
    if cache is not None:
        with contextlib.suppress(OSError):  # a read-only run folder just recomputes next time
            write_json_atomic(cache, {"data": str(data), "labels": fingerprint, "volumes_ml": result})
    return result


def describe_run(run: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The manifest (without ``created``) and packed files of a run folder."""
    cfg = load_run_config(run)
    files = run_files(run, cfg)
    hashes = {name: sha256_file(path) for name, path in files.items()}
    arm = str(cfg["model"]).lower()
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "arm": arm,
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "preprocessing": preprocessing_facts(run, cfg),
        "training_volumes_ml": training_volumes_ml(cfg, run),
        "versions": package_versions(),
        "model_sha256": manifest_sha256(hashes),
        "files": hashes,
    }
    return manifest, files


# ----------------------------------------------------------------------------------------------------------------
# export and open


def export_model(run: str | Path, out: str | Path) -> Path:
    """Pack a trained run into a bundle zip (written atomically). Returns ``out``.

    Raises
    ------
    InputError
        Not a run folder, unknown arm, or no trained weights.
    """
    run, out = Path(run), Path(out)
    manifest, files = describe_run(run)
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest["source_run"] = str(run.resolve())
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
        for name, path in files.items():
            zf.write(path, name)
    return out


def _check_manifest(path: Path, manifest: Any) -> None:
    from thoraxseg import __version__

    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InputError(path, f"not a thoraxseg model bundle ({MANIFEST} has no format {BUNDLE_FORMAT!r})")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise InputError(path, f"bundle format version {manifest.get('format_version')!r}; this thoraxseg "
                               f"reads version {BUNDLE_VERSION}")
    arm = manifest.get("arm")
    if arm not in arm_names():
        raise InputError(path, f"bundle of unknown model arm {arm!r}; expected one of {', '.join(arm_names())}")
    if not isinstance(manifest.get("files"), dict) or "config.yaml" not in manifest["files"]:
        raise InputError(path, f"{MANIFEST} has no file manifest with config.yaml")
    made = manifest.get("versions") or {}
    have = package_versions()
    needed = list(get_arm(arm).packages)
    have["thoraxseg"] = __version__
    for dist in needed:
        want, got = str(made.get(dist, "?")), have.get(dist, "not installed")
        if _major_minor(want) != _major_minor(got):
            raise InputError(path, f"made with {dist} {want}, this installation has {got} "
                                   f"(the same major.minor version is required)")


@contextlib.contextmanager
def open_model(model: str | Path) -> Iterator[LoadedModel]:
    """Yield a :class:`LoadedModel` for a run folder or a bundle zip (extracted to a temporary folder).

    Raises
    ------
    InputError
        Missing path; a bundle that is not a zip, lacks ``bundle.json``, has an unknown
        format or arm, was made with other major.minor versions, or whose files do not
        match the manifest's sha256 (tampered or damaged).
    """
    path = Path(model)
    if not path.exists():
        raise InputError(path, "model not found (a training run folder or a bundle from export-model)")
    if path.is_dir():
        manifest, _ = describe_run(path)
        yield LoadedModel(path, manifest["arm"], manifest["model_sha256"], manifest, path)
        return
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a model bundle (not a zip) or a run folder")
    bundle_hash = sha256_file(path)
    with tempfile.TemporaryDirectory(prefix="thoraxseg-model-") as tmp:
        root = Path(tmp)
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if MANIFEST not in names:
                    raise InputError(path, f"not a model bundle ({MANIFEST} missing)")
                try:
                    manifest = json.loads(zf.read(MANIFEST))
                except ValueError as exc:
                    raise InputError(path, f"unreadable {MANIFEST} ({exc})") from None
                _check_manifest(path, manifest)
                files: dict[str, str] = manifest["files"]
                missing = sorted(set(files) - names)
                extra = sorted(names - set(files) - {MANIFEST})
                if missing or extra:
                    raise InputError(path, f"files do not match the manifest (missing: {missing or 'none'}, "
                                           f"extra: {extra or 'none'})")
                for name, want in files.items():
                    target = (root / name).resolve()
                    if root.resolve() not in target.parents:
                        raise InputError(path, f"member {name!r} points outside the bundle")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    with zf.open(name) as src, open(target, "wb") as dst:
                        while block := src.read(1 << 20):
                            h.update(block)
                            dst.write(block)
                    if h.hexdigest() != want:
                        raise InputError(path, f"{name}: sha256 {h.hexdigest()[:12]}… does not match the "
                                               f"manifest's {want[:12]}… (tampered or damaged bundle)")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(path, f"unreadable bundle ({type(exc).__name__}: {exc})") from None
        if manifest_sha256(files) != manifest.get("model_sha256"):
            raise InputError(path, "model_sha256 does not match the file manifest (tampered bundle.json)")
        packed_arm = str(load_run_config(root)["model"]).lower()
        if packed_arm != manifest["arm"]:
            raise InputError(path, f"config.yaml is a {packed_arm} run but {MANIFEST} says {manifest['arm']}")
        yield LoadedModel(root, manifest["arm"], manifest["model_sha256"], manifest, path, bundle_hash)


__all__ = ["LoadedModel", "describe_run", "export_model", "open_model", "sha256_file"]
