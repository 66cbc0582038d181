"""`evaluate_folders`, the CSV / npz writers, the summary and `thoraxseg evaluate` (input errors included)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thoraxseg.cli import main
from thoraxseg.data.volume import Volume, save_label, save_volume
from thoraxseg.errors import InputError
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.metrics import CSV_COLUMNS, METRIC_NAMES, compute_metrics, evaluate_folders, write_metrics_csv
from thoraxseg.metrics.evaluate import summarize_metrics, write_npz

SHAPE = (20, 18, 10)
SPACING = (0.9, 0.8, 2.5)


def _affine(spacing=SPACING) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [-10.0, 5.0, -40.0]
    return a


def _labels(seed: int, missing: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GT with four box organs, and a prediction that moves each by up to one voxel."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE, np.uint8)
    gt[2:9, 2:8, 2:8] = 2
    gt[11:14, 3:6, 1:9] = 1
    gt[15:18, 10:14, 4:10] = 3
    gt[4:8, 11:16, 1:7] = 4
    pred = np.zeros_like(gt)
    for code in range(1, 5):
        shift = tuple(int(v) for v in rng.integers(-1, 2, 3))
        pred[np.roll(gt == code, shift, axis=(0, 1, 2))] = code
    if missing is not None:
        pred[pred == missing] = 0
    return gt, pred


def _cohort(tmp_path: Path, n: int = 3, flat_gt: bool = False, spacing=SPACING) -> tuple[Path, Path]:
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    pred_root.mkdir(parents=True)
    ids = [f"Patient_{i}" for i in (2, 10, 1)][:n]  # natural order check: 1, 2, 10
    for k, pid in enumerate(ids):
        gt, pred = _labels(k, missing=2 if pid == "Patient_10" else None)
        ref = Volume(gt, _affine(spacing))
        if flat_gt:
            save_label(gt, ref, gt_root / f"{pid}.nii.gz")
        else:
            case = gt_root / "train" / pid
            ct = (np.random.default_rng(k).normal(0, 30, SHAPE) - 500).astype(np.int16)
            save_volume(Volume(ct, _affine(spacing)), case / f"{pid}.nii.gz")
            save_label(gt, ref, case / "GT.nii.gz")
        save_label(pred, ref, pred_root / f"{pid}.nii.gz")
    return gt_root, pred_root


def _equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)


# ----------------------------------------------------------------------------- library
def test_evaluate_folders_matches_engine(tmp_path: Path) -> None:
    gt_root, pred_root = _cohort(tmp_path)
    save_label(np.zeros(SHAPE, np.uint8), Volume(np.zeros(SHAPE, np.uint8), _affine()),
               pred_root / "Patient_99.nii.gz")  # a prediction without GT is ignored
    df = evaluate_folders(gt_root, pred_root, tolerance_mm=1.0)
    assert list(df.columns) == list(CSV_COLUMNS)
    assert list(df["patient"].unique()) == ["Patient_1", "Patient_2", "Patient_10"]
    assert list(df["organ"][:4]) == list(ORGAN_NAMES)
    for k, pid in enumerate(["Patient_2", "Patient_10", "Patient_1"]):
        gt, pred = _labels(k, missing=2 if pid == "Patient_10" else None)
        expected = compute_metrics(gt, pred, SPACING, 1.0)
        got = df[df["patient"] == pid].to_dict("records")
        for e, g in zip(expected, got, strict=True):
            assert all(_equal(g[m], e[m]) for m in METRIC_NAMES), (pid, e["organ"])
    missed = df[(df["patient"] == "Patient_10") & (df["organ"] == "heart")].iloc[0]
    assert missed["dice"] == 0 and math.isnan(missed["hd"]) and missed["vol_pred_ml"] == 0


def test_flat_gt_folder_and_parallel_workers_agree(tmp_path: Path) -> None:
    gt_root, pred_root = _cohort(tmp_path, flat_gt=True)
    one = evaluate_folders(gt_root, pred_root, workers=1)
    two = evaluate_folders(gt_root, pred_root, workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 3 * len(ORGAN_NAMES)
    assert one["dice"].notna().all()


def test_write_metrics_csv_never_inf_and_atomic(tmp_path: Path) -> None:
    row = {"patient": "P1", "organ": "heart", **dict.fromkeys(METRIC_NAMES, 0.25)}
    row.update(hd=math.inf, hd95=-math.inf, assd=math.nan)
    out = tmp_path / "m.csv"
    write_metrics_csv(pd.DataFrame([row]), out)
    text = out.read_text()
    assert "inf" not in text.lower()
    back = pd.read_csv(out)
    assert list(back.columns) == list(CSV_COLUMNS)
    assert back[["hd", "hd95", "assd"]].isna().all(axis=None) and back["dice"].iloc[0] == 0.25
    with pytest.raises(ValueError, match="lacks columns"):
        write_metrics_csv(pd.DataFrame([{"patient": "P1"}]), tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temp file left


def test_summary_counts_not_applicable_and_missing() -> None:
    nan = math.nan
    rows = [
        {"patient": "A", "organ": "heart", **dict.fromkeys(METRIC_NAMES, 0.8)},
        {"patient": "B", "organ": "heart", **dict.fromkeys(METRIC_NAMES, 0.6)},
        {"patient": "C", "organ": "heart", **dict.fromkeys(METRIC_NAMES, 0.0), "hd": nan, "hd95": nan, "assd": nan},
        {"patient": "A", "organ": "trachea", **dict.fromkeys(METRIC_NAMES, nan)},
    ]
    s = summarize_metrics(pd.DataFrame(rows)).set_index(["organ", "metric"])
    assert s.loc[("heart", "dice"), "n"] == 3
    assert s.loc[("heart", "dice"), "mean"] == pytest.approx(1.4 / 3)
    assert s.loc[("heart", "hd"), "n"] == 2 and s.loc[("heart", "hd"), "n_missing"] == 1
    assert s.loc[("heart", "hd"), "median"] == pytest.approx(0.7)
    assert s.loc[("heart", "hd"), "sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert s.loc[("trachea", "dice"), "n"] == 0 and s.loc[("trachea", "dice"), "n_na"] == 1
    assert s.loc[("all", "dice"), "n"] == 3 and s.loc[("all", "dice"), "n_na"] == 1


def test_write_npz_course_format(tmp_path: Path) -> None:
    gt_root, pred_root = _cohort(tmp_path, n=2)
    df = evaluate_folders(gt_root, pred_root)
    files = write_npz(df, tmp_path / "npz")
    assert sorted(p.stem for p in files) == sorted(METRIC_NAMES)
    with np.load(tmp_path / "npz" / "dice.npz") as d:
        assert sorted(d.files) == ["Patient_10", "Patient_2"]
        arr = d["Patient_2"]
    assert arr.shape == (5,) and math.isnan(arr[0])
    heart = df[(df["patient"] == "Patient_2") & (df["organ"] == "heart")]["dice"].iloc[0]
    assert arr[2] == heart


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_csv_npz_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_root, pred_root = _cohort(tmp_path)
    out = tmp_path / "res" / "metrics.csv"
    rc = main(["evaluate", "--gt", str(gt_root), "--pred", str(pred_root), "--out", str(out),
               "--tolerance-mm", "1.5", "--workers", "2", "--npz-dir", str(tmp_path / "npz")])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert len(lines) == 1 + 3 * 4
    assert "inf" not in out.read_text().lower()
    assert (tmp_path / "npz" / "hd95.npz").is_file()
    stdout = capsys.readouterr().out
    assert "heart" in stdout and "hd95" in stdout and "NSD at 1.5 mm" in stdout
    expected = evaluate_folders(gt_root, pred_root, tolerance_mm=1.5)
    pd.testing.assert_frame_equal(pd.read_csv(out), expected, atol=1e-6, check_dtype=False)


def _corrupt(path: Path) -> None:
    """Cut the end of the gzip stream: the header still reads, the voxel data do not."""
    data = gzip.compress(gzip.decompress(path.read_bytes()))
    path.write_bytes(data[:-40])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a NIfTI file")


def _bad_labels(path: Path) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(path))


def _other_grid(path: Path) -> None:
    arr = np.zeros(SHAPE, np.uint8)
    save_label(arr, Volume(arr, _affine((0.9, 0.8, 3.0))), path)


@pytest.mark.parametrize(
    ("damage", "target", "message"),
    [
        ("missing", "pred", "prediction missing for Patient_2"),
        (_other_grid, "pred", "geometry differs"),
        (_bad_labels, "pred", "labels outside 0-4: [7]"),
        (_bad_labels, "gt", "labels outside 0-4: [7]"),
        (_corrupt, "pred", "truncated or corrupt"),
        (_garbage, "gt", "unreadable NIfTI header"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_bad_input_one_line_no_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, target,
                                       message, workers) -> None:
    gt_root, pred_root = _cohort(tmp_path)
    bad = (pred_root / "Patient_2.nii.gz") if target == "pred" else (gt_root / "train" / "Patient_2" / "GT.nii.gz")
    if damage == "missing":
        bad.unlink()
    else:
        damage(bad)
    out = tmp_path / "metrics.csv"
    out.write_text("previous results\n")
    rc = main(["evaluate", "--gt", str(gt_root), "--pred", str(pred_root), "--out", str(out),
               "--workers", str(workers), "--npz-dir", str(tmp_path / "npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("thoraxseg: error: ")
    assert str(bad) in err[0] and message in err[0]
    assert out.read_text() == "previous results\n"  # untouched, nothing half-written
    assert not (tmp_path / "npz").exists()


def test_cli_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_root, pred_root = _cohort(tmp_path, n=1)
    base = ["evaluate", "--gt", str(gt_root), "--pred", str(pred_root), "--out", str(tmp_path / "m.csv")]
    assert main([*base, "--workers", "0"]) == 1
    assert main([*base, "--tolerance-mm", "-2"]) == 1
    assert "--tolerance-mm" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(InputError, match="prediction folder not found"):
        evaluate_folders(gt_root, tmp_path / "nope")
