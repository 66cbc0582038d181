"""Build a small, fake-but-plausible study folder (the layout of docs/dev/contracts.md) for report tests.

Everything is synthetic and seeded: a thorax-like CT (body with fat layer, lungs,
spine, heart, aorta, trachea, esophagus; HU values of real CT plus noise), its
labels, a moved heart for the label-fix section, per-arm predictions of
different quality (one arm over-segments the heart), metrics computed from
those predictions (Dice/IoU/precision/recall/volumes exactly; HD/HD95/ASSD/NSD
from surface distance transforms), training logs, ``check.json``,
``realign/fix.json`` + ``apply.json``, ``split.json`` and ``compare/``.

Use :func:`build_fake_study`; the parts can be left out to test "not run" sections.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from thoraxseg.data.layout import CLEAN_LABEL_NAME, StudyLayout, stage_marker
from thoraxseg.data.transforms import rotation_matrix_z, translation_matrix
from thoraxseg.data.volume import Volume, save_label, save_volume
from thoraxseg.labels import ORGAN_NAMES, Organ

ARMS = ("enet", "customnet", "nnunet3d")
#: Per arm: (boundary jitter probability, shift in voxels, heart dilation iterations, false-positive blob).
_ARM_QUALITY = {"enet": (0.35, 1, 0, True), "customnet": (0.22, 1, 0, False), "nnunet3d": (0.08, 0, 1, False)}


def synthetic_case(shape: tuple[int, int, int] = (80, 80, 36), spacing: tuple[float, float, float] = (4.0, 4.0, 7.0),
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A thorax-like CT (int16 HU), its labels (uint8) and the affine (RAS+, mm). Axes ``(x, y, z)``."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing
    x = (np.arange(shape[0]) - shape[0] / 2 + 0.5) * sx
    y = (np.arange(shape[1]) - shape[1] / 2 + 0.5) * sy
    z = (np.arange(shape[2]) - shape[2] / 2 + 0.5) * sz
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    s = rng.uniform(0.92, 1.08)  # patient size
    ct = np.full(shape, -1000.0, dtype=np.float32)
    body = (X / (150 * s)) ** 2 + (Y / (105 * s)) ** 2 <= 1
    inner = (X / (140 * s)) ** 2 + (Y / (95 * s)) ** 2 <= 1
    ct[body] = -100.0
    ct[inner] = 40.0
    lung_r = ((X - 62 * s) / (55 * s)) ** 2 + ((Y + 5) / (70 * s)) ** 2 + (Z / 150) ** 2 <= 1
    lung_l = ((X + 62 * s) / (55 * s)) ** 2 + ((Y + 5) / (70 * s)) ** 2 + (Z / 150) ** 2 <= 1
    ct[lung_r | lung_l] = -850.0
    spine = ((X / 16) ** 2 + ((Y + 70 * s) / 16) ** 2) <= 1
    ct[spine] = 650.0
    lab = np.zeros(shape, dtype=np.uint8)
    # heart: low, anterior, to the patient's left (−x in RAS+)
    hc = np.array([-18 * s + rng.normal(0, 3), 28 * s + rng.normal(0, 3), -45 + rng.normal(0, 5)])
    hr = np.array([52, 42, 48]) * s * rng.uniform(0.9, 1.1)
    heart = ((X - hc[0]) / hr[0]) ** 2 + ((Y - hc[1]) / hr[1]) ** 2 + ((Z - hc[2]) / hr[2]) ** 2 <= 1
    # aorta: descending tube left of the spine, ascending tube right-anterior, arch on top
    zc = 40.0
    desc = (((X + 22) / 11) ** 2 + ((Y + 45 * s) / 11) ** 2 <= 1) & (Z <= zc)
    asc = (((X - 10) / 13) ** 2 + ((Y - 8) / 13) ** 2 <= 1) & (Z <= zc) & (Z >= -20)
    t = np.linspace(0, np.pi, 40)
    arch = np.zeros(shape, bool)
    for ti in t:
        cx, cy = 10 - 32 * (1 - np.cos(ti)) / 2, 8 - (8 + 45 * s) * (1 - np.cos(ti)) / 2
        cz = zc + 22 * np.sin(ti)
        arch |= ((X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2) <= 11.5**2
    aorta = desc | asc | arch
    # trachea above the carina, esophagus behind it and left of the spine
    trachea = (((X - 2) / 10) ** 2 + ((Y + 18) / 10) ** 2 <= 1) & (Z >= 10)
    trachea_lumen = (((X - 2) / 7.5) ** 2 + ((Y + 18) / 7.5) ** 2 <= 1) & (Z >= 10)
    esophagus = (((X + 6) / 6.5) ** 2 + ((Y + 40 * s) / 5.5) ** 2 <= 1) & (Z >= -70)
    for organ, mask, hu in ((Organ.HEART, heart, 45.0), (Organ.AORTA, aorta, rng.uniform(180, 320)),
                            (Organ.ESOPHAGUS, esophagus, 32.0), (Organ.TRACHEA, trachea, 40.0)):
        lab[mask & inner] = int(organ)
        ct[mask & inner] = hu
    ct[trachea_lumen & inner] = -990.0
    ct = ndimage.gaussian_filter(ct, 0.6) + rng.normal(0, 15, shape).astype(np.float32)
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    return np.clip(np.round(ct), -1024, 3000).astype(np.int16), lab, affine


def move_label(labels: np.ndarray, label: int, angle_deg: float, shift: tuple[float, float, float]) -> np.ndarray:
    """Rigidly move one label in voxel space (rotation about the volume centre, then shift), as the course did."""
    centre = translation_matrix(np.array(labels.shape) / 2.0 * np.array([1, 1, 0]))
    m = centre @ rotation_matrix_z(angle_deg) @ np.linalg.inv(centre) @ translation_matrix(shift)
    moved = ndimage.affine_transform((labels == label).astype(np.uint8), m, order=0)
    out = labels.copy()
    out[out == label] = 0
    out[(moved > 0) & (out == 0)] = label
    return out


def fake_prediction(gt: np.ndarray, arm: str, seed: int) -> np.ndarray:
    """A prediction of plausible quality for ``arm``: boundary errors, small shifts, a dilated heart for nnunet3d."""
    rng = np.random.default_rng(seed)
    jitter, shift, heart_dilate, blob = _ARM_QUALITY[arm]
    pred = np.zeros_like(gt)
    for organ in (Organ.HEART, Organ.AORTA, Organ.TRACHEA, Organ.ESOPHAGUS):
        m = gt == int(organ)
        if organ == Organ.HEART and heart_dilate:
            m = ndimage.binary_dilation(m, iterations=heart_dilate)
        if shift and rng.random() < 0.7:
            m = ndimage.shift(m, rng.integers(-shift, shift + 1, 3).astype(float), order=0)  # no wrap-around
        edge = m ^ ndimage.binary_erosion(m)
        flip = edge & (rng.random(m.shape) < jitter * (2.5 if organ == Organ.ESOPHAGUS else 1.0))
        m = m & ~flip
        grow = ndimage.binary_dilation(m) & ~m & (rng.random(m.shape) < jitter * 0.5)
        pred[(m | grow) & (pred == 0)] = int(organ)
    if blob:
        c = rng.integers(np.array(gt.shape) // 4, 3 * np.array(gt.shape) // 4)
        pred[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 1:c[2] + 1] = int(Organ.AORTA)
    return pred


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, border_value=0)


def case_metrics(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float], tol_mm: float = 2.0
                 ) -> list[dict[str, float | str]]:
    """Per-organ metrics (the evaluate CSV columns, without patient) of one case."""
    rows: list[dict[str, float | str]] = []
    vox_ml = float(np.prod(spacing)) / 1000.0
    for code, name in enumerate(ORGAN_NAMES, start=1):
        g, p = gt == code, pred == code
        tp, ng, npred = np.count_nonzero(g & p), np.count_nonzero(g), np.count_nonzero(p)
        row: dict[str, float | str] = {"organ": name, "vol_gt_ml": ng * vox_ml, "vol_pred_ml": npred * vox_ml}
        if ng == 0 and npred == 0:
            row.update(dice=np.nan, iou=np.nan, precision=np.nan, recall=np.nan, hd=np.nan, hd95=np.nan,
                       assd=np.nan, nsd=np.nan)
        elif ng == 0 or npred == 0:
            row.update(dice=0.0, iou=0.0, precision=0.0 if npred else np.nan, recall=0.0 if ng else np.nan,
                       hd=np.nan, hd95=np.nan, assd=np.nan, nsd=0.0)
        else:
            sg, sp_ = _surface(g), _surface(p)
            d_gp = ndimage.distance_transform_edt(~sp_, sampling=spacing)[sg]
            d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp_]
            both = np.concatenate([d_gp, d_pg])
            row.update(dice=2 * tp / (ng + npred), iou=tp / (ng + npred - tp), precision=tp / npred, recall=tp / ng,
                       hd=float(both.max()), hd95=float(max(np.percentile(d_gp, 95), np.percentile(d_pg, 95))),
                       assd=float(both.mean()), nsd=float(np.mean(both <= tol_mm)))
        rows.append(row)
    return rows


def _log(arm: str, epochs: int, rng: np.random.Generator) -> pd.DataFrame:
    e = np.arange(1, epochs + 1)
    final = {"enet": 0.74, "customnet": 0.81, "nnunet3d": 0.88}[arm]
    rows = {"epoch": e, "train_loss": 1.1 * np.exp(-e / (epochs / 3)) + 0.12 + rng.normal(0, 0.015, epochs),
            "val_loss": 1.15 * np.exp(-e / (epochs / 3)) + 0.18 + rng.normal(0, 0.025, epochs)}
    if arm == "nnunet3d":
        rows["train_loss"] = rows["train_loss"] - 0.9
        rows["val_loss"] = rows["val_loss"] - 0.9
    offsets = {"esophagus": -0.2, "heart": 0.07, "trachea": 0.04, "aorta": 0.03}
    for organ, off in offsets.items():
        rows[f"val_dice_{organ}"] = np.clip((final + off) * (1 - np.exp(-e / (epochs / 4)))
                                            + rng.normal(0, 0.02, epochs), 0, 1)
    rows["val_dice_mean"] = np.mean([rows[f"val_dice_{o}"] for o in offsets], axis=0)
    rows["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * (e - 1) / epochs))
    rows["seconds"] = rng.uniform(8, 12, epochs)
    return pd.DataFrame(rows)


def _write_case(folder: Path, pid: str, ct: np.ndarray, gt: np.ndarray, affine: np.ndarray,
                clean: np.ndarray | None = None, clean_name: str = CLEAN_LABEL_NAME) -> None:
    ref = Volume(ct, affine)
    save_volume(ref, folder / pid / f"{pid}.nii.gz")
    save_label(gt, ref, folder / pid / "GT.nii.gz")
    if clean is not None:
        save_label(clean, ref, folder / pid / clean_name)


#: The course's corruption as this fixture applies it (see :func:`move_label`): check flags every moved heart.
FAKE_MOVE: tuple[float, tuple[float, float, float]] = (-20.0, (4.0, 3.0, 2.0))


def build_raw_dataset(root: Path, ids: list[str], moved: bool = True, reference: str | None = None,
                      clean_name: str = CLEAN_LABEL_NAME, reference_moved: bool | None = None,
                      shape: tuple[int, int, int] = (80, 80, 36), seed: int = 0) -> Path:
    """A SegTHOR training layout ``root/train/<id>/{<id>.nii.gz, GT.nii.gz}`` of :func:`synthetic_case` s.

    ``moved`` moves every heart by :data:`FAKE_MOVE` (46–59 % of each moved heart lies on air, 0 % of
    a clean one); ``reference`` (a patient ID) also gets its clean label as ``clean_name``, and its
    ``GT.nii.gz`` is moved when ``reference_moved`` (default: ``moved``).
    """
    for k, pid in enumerate(ids):
        ct, lab, affine = synthetic_case(shape, (4.0, 4.0, 7.0), seed=seed * 1000 + k)
        move = moved if pid != reference or reference_moved is None else reference_moved
        gt = move_label(lab, int(Organ.HEART), *FAKE_MOVE) if move else lab
        _write_case(root / "train", pid, ct, gt, affine, clean=lab if pid == reference else None,
                    clean_name=clean_name)
    return root


#: The cheapest 2D arms for studies that train (one epoch of 32 slices of 64 × 64, width 4: a few seconds each).
TINY_2D_ARMS: dict[str, dict] = {
    name: {"model": name, "epochs": 1,
           "config": {"image_size": 64, "batch_size": 8, "width": 4, "samples_per_epoch": 32}}
    for name in ("enet", "customnet")
}


def tiny_study_config(data: dict, arms: dict[str, dict] | None = None, **overrides: object) -> dict:
    """A study config (``thoraxseg study`` YAML content) with the tiny 2D arms and cheap statistics."""
    return {"name": "tiny", "seed": 0, "device": "cpu", "data": data,
            "realign": {"enabled": "auto", "label": "heart", "method": "sweep"},
            "arms": dict(TINY_2D_ARMS) if arms is None else arms, "workers": 1, "n_boot": 200, **overrides}


def build_fake_study(root: Path, n_patients: int = 6, n_test: int = 4, arms: tuple[str, ...] = ARMS,
                     shape: tuple[int, int, int] = (80, 80, 36), seed: int = 0, *, with_check: bool = True,
                     with_realign: bool = True, with_logs: bool = True, with_compare: bool = True,
                     with_overlay_png: bool = False) -> Path:
    """Write a complete fake study under ``root`` and return ``root``.

    Patients ``Patient_01..NN``; the last ``n_test`` are the test split. The
    heart of every raw GT is moved by −20° and (4, 3, 2) voxels; Patient_01 keeps
    its clean label. ``with_*`` switches leave stages out ("not run").
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lay = StudyLayout(root)  # the layout the pipeline writes and the report reads
    ids = [f"Patient_{i:02d}" for i in range(1, n_patients + 1)]
    test_ids = ids[-n_test:]
    spacing = (4.0, 4.0, 7.0)
    cases = {}
    for k, pid in enumerate(ids):
        ct, lab, affine = synthetic_case(shape, spacing, seed=seed * 1000 + k)
        cases[pid] = (ct, lab, affine)
        moved = move_label(lab, int(Organ.HEART), -20.0, (4.0, 3.0, 2.0)) if with_realign else lab
        _write_case(lay.raw / "train", pid, ct, moved, affine, clean=lab if k == 0 and with_realign
                    else None)
        if with_realign:
            _write_case(lay.fixed / "train", pid, ct, lab, affine)
        if pid in test_ids:
            _write_case(lay.testset, pid, ct, lab, affine)
    lay.phantom_json.write_text(json.dumps({"cases": n_patients, "size": "small",
                                                                    "seed": seed, "corrupt_heart": with_realign}))
    lay.split.write_text(json.dumps({"seed": seed, "train": ids[:-n_test], "test": test_ids}))
    lay.config.write_text(
        f"name: fake-study\ndata:\n  source: phantom\n  cases: {n_patients}\n  seed: {seed}\nrealign:\n"
        f"  reference: Patient_01\narms: [{', '.join(arms)}]\ncompare:\n  seed: 0\n  n_boot: 2000\n")
    if with_check:  # the layout of thoraxseg.data.check.CheckReport.to_dict()
        def check_doc(folder: str, moved: bool) -> dict:
            cases = []
            for pid in ids:
                air = float(rng.uniform(0.35, 0.6)) if moved else float(rng.uniform(0.0, 0.02))
                warnings = [f"heart label looks misplaced: {air:.0%} of it on air (< -400 HU; mean -512 HU, "
                            "expected soft tissue)"] if moved else []
                organs = [{"organ": "heart", "voxels": int((cases_data[pid][1] == 2).sum()), "volume_ml": 400.0,
                           "mean_hu": -512.0 if moved else 45.0, "air_fraction": round(air, 4),
                           "suspicious": moved}]
                cases.append({"patient_id": pid, "image": f"{root}/data/{folder}/train/{pid}/{pid}.nii.gz",
                              "label": f"{root}/data/{folder}/train/{pid}/GT.nii.gz", "shape": list(shape),
                              "spacing_mm": list(spacing), "errors": [], "warnings": warnings, "notes": [],
                              "organs": organs, "status": "warning" if warnings else "ok"})
            n_warn = sum(len(c["warnings"]) for c in cases)
            return {"root": str(root / "data" / folder), "ok": True, "n_cases": len(ids), "n_errors": 0,
                    "n_warnings": n_warn, "errors": [], "cases": cases}

        cases_data = cases
        lay.check.write_text(json.dumps(check_doc("raw", with_realign), indent=2))
        if with_realign:
            lay.check_fixed.write_text(json.dumps(check_doc("fixed", False), indent=2))
    if with_realign:  # the layout of thoraxseg.realign.estimate.estimate_transform / apply
        lay.realign.mkdir(exist_ok=True)
        clean = cases[ids[0]][1] == int(Organ.HEART)
        moved = move_label(cases[ids[0]][1], int(Organ.HEART), -20.0, (4.0, 3.0, 2.0)) == int(Organ.HEART)
        iou_before = float((clean & moved).sum() / (clean | moved).sum())
        fix = {"format": "thoraxseg-fix/1", "label": 2, "label_name": "heart", "shape": list(shape),
               "spacing_mm": list(spacing), "matrix_voxel": np.eye(4).round(4).tolist(),
               "matrix_world": np.eye(4).round(4).tolist(),
               "rotation": {"angle_deg": 20.03, "axis_voxel": [0.0, 0.0, 1.0], "axis_world": [0.0, 0.0, 1.0],
                            "inplane_deg": 20.03, "corruption_inplane_deg": -20.03},
               "translation_voxel": [-4.02, -2.97, -2.0], "translation_mm": [-16.1, -11.9, -14.0],
               "method": "sweep", "iou_before": round(iou_before, 6), "iou_after": 0.9712, "runtime_s": 0.84,
               "details": {"sweep_inplane_deg": 20.0, "refine_evaluations": 120}}
        (lay.realign / "fix.json").write_text(json.dumps(fix, indent=2))
        rows = [{"patient": pid, "voxels_before": int((cases[pid][1] == 2).sum()),
                 "voxels_after": int((cases[pid][1] == 2).sum()), "overlap_voxels": 0, "lost_voxels": 0,
                 "air_before": round(float(rng.uniform(0.3, 0.6)), 4),
                 "air_after": round(float(rng.uniform(0.0, 0.03)), 4), "suspicious_after": False, "note": "",
                 "seconds": 0.05} for pid in ids]
        (lay.realign / "apply.json").write_text(json.dumps(rows, indent=2))
        if with_overlay_png:
            from thoraxseg.report.figures import new_figure, to_png

            fig = new_figure(2, 2)
            fig.add_subplot(111).imshow(clean[:, :, shape[2] // 3].T)
            (lay.realign / "overlay.png").write_bytes(to_png(fig))
    metric_paths = []
    for a_idx, arm in enumerate(arms):
        arm_dir = lay.arm(arm)
        rows = []
        for p_idx, pid in enumerate(test_ids):
            ct, lab, affine = cases[pid]
            pred = fake_prediction(lab, arm, seed=seed * 100 + a_idx * 10 + p_idx)
            save_label(pred, Volume(ct, affine), arm_dir / "pred" / f"{pid}.nii.gz")
            rows += [{"patient": pid, **r} for r in case_metrics(lab, pred, spacing)]
        cols = ["patient", "organ", "dice", "iou", "precision", "recall", "hd", "hd95", "assd", "nsd",
                "vol_gt_ml", "vol_pred_ml"]
        pd.DataFrame(rows)[cols].to_csv(arm_dir / "metrics.csv", index=False)
        metric_paths.append(arm_dir / "metrics.csv")
        if with_logs:
            (arm_dir / "run").mkdir(parents=True, exist_ok=True)
            _log(arm, 30, rng).to_csv(arm_dir / "run" / "log.csv", index=False)
            extra = ("plans: cpu\n" if arm.startswith("nnunet")
                     else "image_size: 128\npreprocessing: spacing\nspacing_mm: 3.125\n")
            (arm_dir / "run" / "config.yaml").write_text(f"model: {arm}\nepochs: 30\n{extra}")
    if with_compare and len(arms) >= 2:
        from thoraxseg.stats.compare import compare_arms

        compare_arms(metric_paths, list(arms), lay.compare, seed=0, n_boot=500)
    _write_stage_markers(root, arms, with_check, with_realign, with_compare and len(arms) >= 2)
    return root


def _write_stage_markers(root: Path, arms: tuple[str, ...], check: bool, realign: bool, compare: bool) -> None:
    """``.stages/<stage>.json`` as a study writes them (what the report's run-time section reads)."""
    stages = ["data", *(["check"] if check else []), *(["realign"] if realign else []), "split"]
    stages += [f"{kind}:{arm}" for arm in arms for kind in ("train", "predict", "evaluate")]
    stages += ["compare"] if compare else []
    for k, stage in enumerate(stages):
        path = stage_marker(root, stage)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"stage": stage, "seconds": 10.0 * (k + 1)}))
        os.utime(path, ns=(10**18 + k, 10**18 + k))  # finishing order
