"""``thoraxseg qa`` on a dataset: reference predictions, per-patient verdicts, outputs and the fix.

The reference of each patient is one of

* a trained run's prediction (:func:`thoraxseg.inference.predict`, any arm), each organ's largest connected
  component alone (:data:`REFERENCE_POSTPROCESS`);
* a folder of existing predictions (``Patient_XX.nii.gz``, e.g. ``thoraxseg predict`` output);
* K-fold cross-validation on the dataset itself: K quick 2D runs
  (:func:`thoraxseg.training.train`), each patient predicted by the run that did not see it (cleaned the same way).

Outputs, all in ``QA_DIR`` (written atomically; nothing appears on error):
``qa.csv`` (one row per patient and organ), ``qa.json`` (the same plus the fit matrices, the
gate, the folds, a summary), ``reference/Patient_XX.nii.gz`` (the predictions used, unless they
were given), ``overlays/Patient_XX_<organ>.png`` (before/after contours of every misplaced organ)
and, with cross-validation, ``cv/fold_K/run`` (the fold runs). ``--fix OUT_DATA`` writes a copy of
the dataset in which every accepted fix is applied (other labels untouched; images and every
other file copied byte for byte; labels of unchanged patients copied byte for byte).
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.data.layout import Case, find_case_image, labelled_cases
from thoraxseg.data.postprocess import Postprocess
from thoraxseg.data.volume import load_image, load_label, same_geometry, save_label
from thoraxseg.errors import InputError
from thoraxseg.labels import ORGANS, label_name
from thoraxseg.qa.assess import FLAGGED, VERDICTS, Gate, assess_case
from thoraxseg.realign.dataset import check_destination, output_path, rewrite_dataset
from thoraxseg.realign.estimate import APPLY_MODE
from thoraxseg.realign.geometry import move_label_cropped
from thoraxseg.utils.atomic import atomic_dir, write_json_atomic, write_text_atomic
from thoraxseg.utils.files import link_or_copy
from thoraxseg.utils.progress import track

#: Version tag of ``qa.json``.
QA_FORMAT: str = "thoraxseg-qa/1"
#: Columns of ``qa.csv``.
CSV_COLUMNS: tuple[str, ...] = (
    "patient", "organ", "verdict", "fix_accepted", "dice", "iou", "hd95_mm", "centroid_offset_mm", "volume_ratio",
    "air_fraction", "dice_fit_reference", "dice_after", "iou_after", "hd95_after_mm", "air_after", "fit_rotation_deg",
    "fit_inplane_deg", "fit_move_mm", "ct_refined", "note", "seconds",
)
#: The clean-up of the reference predictions qa makes (:func:`thoraxseg.data.postprocess.clean_up`): each
#: organ's largest connected component alone, not ``predict``'s default stacked pieces. With those, on the
#: SegTHOR grid, the rigid fits of clean hearts onto the reference moved by up to 23 mm (cause not
#: established) and detection recall fell from 6/7 to 5/7 (`benchmarks/qa.py --size full`, 20 patients).
REFERENCE_POSTPROCESS: Postprocess = "largest"

#: Quick 2D settings of the cross-validation runs (those of the test suite's shared phantom run).
CV_SETTINGS: dict[str, Any] = {"image_size": 128, "batch_size": 8, "width": 8,
                               "optim": {"lr": 0.01, "schedule": "poly"}, "loss": {"ce_balanced": True}}
CV_EPOCHS: int = 10
CV_MODEL: str = "customnet"


def cv_folds(patients: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Split patient IDs into ``k`` folds (seeded shuffle, sizes differing by at most one).

    >>> cv_folds(["P1", "P2", "P3", "P4", "P5"], 2, seed=0)
    [['P3', 'P4', 'P5'], ['P1', 'P2']]
    """
    order = np.random.default_rng(seed).permutation(len(patients))
    folds = np.array_split(order, k)
    return [[patients[i] for i in sorted(f)] for f in folds]


def _subset(cases: Sequence[Case], root: Path, with_labels: bool) -> Path:
    """A SegTHOR-layout folder of links to ``cases`` (images, and ``GT.nii.gz`` when ``with_labels``)."""
    for c in cases:
        folder = root / "train" / c.patient_id
        link_or_copy(c.image_path, folder / c.image_path.name)
        if with_labels and c.label_path is not None:
            link_or_copy(c.label_path, folder / c.label_path.name)
    return root


def cross_validated_reference(
    cases: Sequence[Case], k: int, work: Path, pred_out: Path, seed: int = 0,
    train_fn: Callable[..., Path] | None = None, predict_fn: Callable[..., Any] | None = None,
    model: str = CV_MODEL, epochs: int = CV_EPOCHS, settings: dict[str, Any] | None = None, device: str = "cpu",
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``k`` runs, each on all folds but one, and predict each patient with the run that did not see it.

    Parameters
    ----------
    cases
        Labelled cases.
    k
        Number of folds (2 … number of cases).
    work
        Folder for the fold runs (``work/fold_N/run``) and temporary link folders.
    pred_out
        Where the predictions go (``Patient_XX.nii.gz``).
    train_fn, predict_fn
        :func:`thoraxseg.training.train` / :func:`thoraxseg.inference.predict` (replaceable in tests).
    model, epochs, settings, device, threads
        Training settings of every fold run (default the quick :data:`CV_SETTINGS`).

    Returns
    -------
    list of dict
        Per fold: ``fold``, ``run`` (folder), ``train`` (patient IDs it saw), ``predicted`` (IDs it predicted).
    """
    if train_fn is None:
        from thoraxseg.training import train as train_fn
    if predict_fn is None:
        from thoraxseg.inference import predict as predict_fn
    by_id = {c.patient_id: c for c in cases}
    folds = cv_folds(list(by_id), k, seed)
    info: list[dict[str, Any]] = []
    for i, held in enumerate(folds, start=1):
        fold_dir = work / f"fold_{i}"
        seen = [p for p in by_id if p not in held]
        train_data = _subset([by_id[p] for p in seen], fold_dir / "train_data", with_labels=True)
        images = _subset([by_id[p] for p in held], fold_dir / "predict_images", with_labels=False)
        kw: dict[str, Any] = {"threads": threads} if threads is not None else {}
        run = train_fn(model, train_data, fold_dir / "run", config=dict(settings or CV_SETTINGS), epochs=epochs,
                       device=device, **kw)
        predict_fn(Path(run), images, pred_out, postprocess=REFERENCE_POSTPROCESS, device=device)
        shutil.rmtree(train_data)
        shutil.rmtree(images)
        info.append({"fold": i, "run": str(Path(run)), "train": seen, "predicted": list(held)})
    return info


def _validate(data: Path, run: Path | None, reference: Path | None, cross_validate: int | None, out: Path,
              fix: Path | None, overwrite: bool) -> list[Case]:
    given = [x is not None for x in (run, reference, cross_validate)]
    if sum(given) != 1:
        raise InputError(out, "give exactly one reference: --run RUN, --reference PRED_DIR or --cross-validate K")
    cases = labelled_cases(data)
    if run is not None:
        from thoraxseg.arms.runs import load_run_config

        load_run_config(run)
    if reference is not None:
        if not reference.is_dir():
            raise InputError(reference, "folder not found" if not reference.exists() else "not a folder")
        for c in cases:
            try:
                find_case_image(reference, c.patient_id)
            except InputError:
                raise InputError(reference, f"no reference prediction {c.patient_id}.nii.gz") from None
    if cross_validate is not None and not 2 <= cross_validate <= len(cases):
        raise InputError(data, f"--cross-validate {cross_validate}: needs 2 to {len(cases)} folds "
                               f"({len(cases)} labelled patients)")
    check_destination(data, out, overwrite, what="QA folder", inside="the dataset")
    dst = out.resolve()
    if fix is not None:
        check_destination(data, fix, overwrite)
        if fix.resolve() == dst or dst in fix.resolve().parents or fix.resolve() in dst.parents:
            raise InputError(fix, f"--fix folder must differ from the QA folder {out}")
    return cases


def _load_case(case: Case, reference: Path) -> tuple[Any, Any, Any]:
    assert case.label_path is not None
    lab = load_label(case.label_path)
    img = load_image(case.image_path)
    ref = load_label(find_case_image(reference, case.patient_id))
    for other, what in ((img, "image"), (ref, "reference prediction")):
        diff = same_geometry(lab, other)
        if diff is not None:
            raise InputError(case.label_path, f"grid differs from the {what} {other.path}: {diff}")
    return lab, img, ref


def run_qa(
    data: str | Path,
    run: str | Path | None = None,
    out: str | Path = "qa",
    fix: str | Path | None = None,
    cross_validate: int | None = None,
    reference: str | Path | None = None,
    organs: Sequence[int] = tuple(int(o) for o in ORGANS),
    gate: Gate | None = None,
    seed: int = 0,
    overwrite: bool = False,
    device: str = "cpu",
    overlays: bool = True,
    cv_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Judge every label of ``data`` against a reference; write ``out`` (and the fixed copy ``fix``).

    Parameters
    ----------
    data
        Dataset (SegTHOR layout) whose ``GT.nii.gz`` labels are judged.
    run
        Trained run whose prediction of each patient is the reference (any arm).
    out
        QA folder (must not exist unless ``overwrite``).
    fix
        Write a corrected copy of ``data`` here (accepted fixes only).
    cross_validate
        Instead of ``run``: train this many quick runs on ``data`` (each patient predicted by the
        run that did not see it).
    reference
        Instead of ``run``: a folder of existing predictions ``Patient_XX.nii.gz``.
    organs
        Label codes to judge.
    gate
        Verdict and fix thresholds (default :class:`~thoraxseg.qa.assess.Gate`).
    seed
        Seed of the registrations and of the fold split.
    overwrite
        Replace existing ``out`` / ``fix`` folders.
    device
        Device of the reference prediction / fold training.
    overlays
        Write the before/after overlays of misplaced organs.
    cv_options
        Keywords for :func:`cross_validated_reference` (``model``, ``epochs``, ``settings``, ``threads``,
        ``train_fn``, ``predict_fn``).

    Returns
    -------
    dict
        The ``qa.json`` content.

    Raises
    ------
    InputError
        Missing/unusable dataset, run or reference folder, bad fold count, existing outputs, grid
        mismatches. Nothing is written then.
    """
    t_start = time.perf_counter()
    src = Path(data)
    qa_dir = Path(out)
    fix_dir = None if fix is None else Path(fix)
    run_p = None if run is None else Path(run)
    ref_p = None if reference is None else Path(reference)
    cases = _validate(src, run_p, ref_p, cross_validate, qa_dir, fix_dir, overwrite)
    g = gate or Gate()
    with atomic_dir(qa_dir, overwrite=overwrite) as tmp:
        t_ref = time.perf_counter()
        folds: list[dict[str, Any]] | None = None
        if ref_p is not None:
            ref_dir, ref_info = ref_p, {"kind": "predictions", "folder": str(ref_p)}
        elif run_p is not None:
            from thoraxseg.inference import predict

            ref_dir = tmp / "reference"
            images = _subset(cases, tmp / ".images", with_labels=False)
            predict(run_p, images, ref_dir, postprocess=REFERENCE_POSTPROCESS, device=device)
            shutil.rmtree(images)
            ref_info = {"kind": "run", "run": str(run_p)}
        else:
            assert cross_validate is not None
            ref_dir = tmp / "reference"
            folds = cross_validated_reference(cases, cross_validate, tmp / "cv", ref_dir, seed=seed, device=device,
                                              **(cv_options or {}))
            ref_info = {"kind": "cross-validate", "folds": folds}
        ref_seconds = time.perf_counter() - t_ref
        patients: list[dict[str, Any]] = []
        t_qa = time.perf_counter()
        for case in track(cases, "qa"):
            t0 = time.perf_counter()
            lab, img, ref = _load_case(case, ref_dir)
            rows, fixed = assess_case(lab.array, ref.array, lab.spacing, img.array, lab.affine, organs, g, seed)
            accepted = [r["organ"] for r in rows if r["fix_accepted"]]
            if overlays:
                for r in rows:
                    if r["verdict"] == "misplaced":
                        _overlay(img, lab, fixed, ref, r, tmp / "overlays" / f"{case.patient_id}_{r['organ']}.png")
            patients.append({"patient": case.patient_id, "label": str(case.label_path), "fixed": accepted,
                             "flagged": [r["organ"] for r in rows if r["verdict"] in FLAGGED],
                             "seconds": round(time.perf_counter() - t0, 3), "organs": rows})
        qa_seconds = time.perf_counter() - t_qa
        result = {
            "format": QA_FORMAT,
            "data": str(src),
            "reference": ref_info,
            "gate": g.to_dict(),
            "summary": _summary(patients),
            "fix": None,
            "seconds": {"reference": round(ref_seconds, 3), "qa": round(qa_seconds, 3),
                        "qa_per_patient": round(qa_seconds / len(cases), 3)},
            "patients": patients,
        }
        if fix_dir is not None:
            result["fix"] = {"out": str(fix_dir), "patients": [p["patient"] for p in patients if p["fixed"]]}
        result["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
        write_text_atomic(tmp / "qa.csv", qa_csv(patients))
        write_json_atomic(tmp / "qa.json", result)
        if fix_dir is not None:  # last: the corrected copy appears only when everything else is written
            _write_fix(src, fix_dir, patients, overwrite)
    return result


def _summary(patients: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {v: 0 for v in VERDICTS}
    for p in patients:
        for r in p["organs"]:
            counts[r["verdict"]] += 1
    return {"patients": len(patients), "verdicts": counts,
            "flagged_patients": [p["patient"] for p in patients if p["flagged"]],
            "fixed_patients": [p["patient"] for p in patients if p["fixed"]]}


def qa_csv(patients: list[dict[str, Any]]) -> str:
    """``qa.csv`` text: :data:`CSV_COLUMNS`, one row per patient and organ (empty cell = not applicable)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for p in patients:
        for r in p["organs"]:
            values = {"patient": p["patient"], **r}
            w.writerow(["" if values.get(c) is None else values[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def _write_fix(src: Path, out: Path, patients: list[dict[str, Any]], overwrite: bool) -> None:
    """The corrected copy: accepted fixes re-applied (same matrices, same order) to each label."""
    by_id = {p["patient"]: p for p in patients}

    def process(case: Case, new_root: Path) -> dict[str, Any]:
        assert case.label_path is not None
        p = by_id[case.patient_id]
        dst = output_path(case.label_path, src, new_root)
        if not p["fixed"]:
            shutil.copyfile(case.label_path, dst)
            return {"patient": case.patient_id, "fixed": []}
        lab = load_label(case.label_path)
        arr = lab.array
        for r in p["organs"]:
            if r["fix_accepted"]:
                code = next(int(o) for o in ORGANS if label_name(int(o)) == r["organ"])
                arr, _ = move_label_cropped(arr, code, np.asarray(r["matrix_voxel"]), APPLY_MODE)
        save_label(arr, lab, dst)
        return {"patient": case.patient_id, "fixed": p["fixed"]}

    rewrite_dataset(src, out, process, "qa fix", overwrite)


def _overlay(img: Any, lab: Any, fixed: np.ndarray, ref: Any, row: dict[str, Any], path: Path) -> None:
    from thoraxseg.realign.figures import overlay_png

    code = next(int(o) for o in ORGANS if label_name(int(o)) == row["organ"])
    path.parent.mkdir(parents=True, exist_ok=True)
    status = "fixed" if row["fix_accepted"] else "fix rejected"
    overlay_png(img, lab, fixed if row["fix_accepted"] else None, ref, code, path,
                title=f"{row['organ']}: label (red) → {status} (yellow); reference prediction (green); "
                      f"Dice {row['dice']:.3f} → {row['dice_after']:.3f}")
