"""``thoraxseg segment`` end to end through the CLI: DICOM in = NIfTI in, every output read back, bad input.

The model is ``tiny_run`` (one epoch on a toy cohort): what it predicts is arbitrary but
deterministic, which is what these tests need — the same labels whatever the input format,
and the same labels in every output format. The writers' accuracy on known labels (phantom
and Patient_R1 ground truth) is tested in ``test_export_formats.py``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_tools import dciodvfy_errors, needs_dciodvfy, needs_plastimatch, plastimatch_masks
from thoraxseg.cli import main
from thoraxseg.data.dicom import read_ct_series, write_ct_series
from thoraxseg.data.volume import Volume, load_image, load_label, save_volume
from thoraxseg.export.codes import ORGAN_EXPORT
from thoraxseg.export.dicomseg import read_dicom_seg
from thoraxseg.export.segnrrd import read_seg_nrrd
from thoraxseg.inference.bundle import MANIFEST, export_model


@pytest.fixture(scope="module")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny_run, tmp_path_factory.mktemp("bundle") / "model.zip")


@pytest.fixture(scope="module")
def phantom_inputs(phantom_case, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The phantom CT as NIfTI, and as a DICOM series with shuffled file names and rescale slope 0.5."""
    base = tmp_path_factory.mktemp("phantom_inputs")
    nifti = base / "Patient_01.nii.gz"
    save_volume(phantom_case.image, nifti)
    n = phantom_case.image.shape[2]
    names = [f"{i:05d}.dcm" for i in np.random.default_rng(7).permutation(n)]
    write_ct_series(phantom_case.image, base / "Patient_01_dicom", slope=0.5, intercept=-1024.0, file_names=names)
    return nifti, base / "Patient_01_dicom"


def _check_round_trips(out: Path, dicom: Path, tmp_path: Path) -> np.ndarray:
    """Every output of a DICOM-input case holds the same labels as labels.nii.gz; returns them."""
    labels = load_label(out / "labels.nii.gz")
    series = read_ct_series(dicom)
    assert np.allclose(labels.affine, series.volume.affine, atol=1e-4)
    present = sorted(set(np.unique(labels.array).tolist()) - {0})
    assert present, "the model must predict at least one organ for the round trips to mean anything"
    assert np.array_equal(read_dicom_seg(out / "seg.dcm", series), labels.array)
    seg, segments = read_seg_nrrd(out / "labels.seg.nrrd")
    assert np.array_equal(seg.array, labels.array) and np.allclose(seg.affine, labels.affine, atol=1e-6)
    assert [s.name for s in segments] == ["Esophagus", "Heart", "Trachea", "Aorta"]
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.frame_of_reference_uid
    assert [r.ROIName for r in rt.StructureSetROISequence] == [ORGAN_EXPORT[lab].display_name for lab in present]
    return labels.array


@pytest.mark.slow
def test_dicom_input_gives_the_labels_of_the_nifti_input(phantom_inputs, tiny_run: Path, bundle: Path,
                                                         tmp_path: Path) -> None:
    nifti, dicom = phantom_inputs
    assert main(["segment", str(nifti), "--model", str(tiny_run), "--out", str(tmp_path / "nifti")]) == 0
    assert main(["segment", str(dicom), "--model", str(bundle), "--out", str(tmp_path / "dicom")]) == 0
    assert sorted(p.name for p in (tmp_path / "nifti").iterdir()) == [
        "labels.nii.gz", "labels.seg.nrrd", "preview.png", "summary.json"]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == [
        "labels.nii.gz", "labels.seg.nrrd", "preview.png", "rtstruct.dcm", "seg.dcm", "summary.json"]
    from_nifti = load_label(tmp_path / "nifti" / "labels.nii.gz")
    from_dicom = load_label(tmp_path / "dicom" / "labels.nii.gz")
    assert np.array_equal(from_dicom.array, from_nifti.array)  # voxel-identical
    assert np.allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    _check_round_trips(tmp_path / "dicom", dicom, tmp_path)
    assert (tmp_path / "dicom" / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "dicom" / "summary.json").read_text())
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read(MANIFEST))
    assert summary["manifest"]["model"]["sha256"] == manifest["model_sha256"]
    run_summary = json.loads((tmp_path / "nifti" / "summary.json").read_text())
    assert run_summary["manifest"]["model"]["sha256"] == manifest["model_sha256"]  # run folder = its bundle
    assert summary["manifest"]["device"] == "cpu" and summary["manifest"]["versions"]["torch"]
    assert {"read", "predict", "write_rtstruct", "total"} <= set(summary["manifest"]["seconds"])
    assert summary["input"]["series_instance_uid"] == read_ct_series(dicom).series_uid
    ct = load_image(nifti)
    for name, entry in summary["organs"].items():
        mask = from_dicom.array == entry["label"]
        assert entry["voxels"] == int(mask.sum())
        assert entry["volume_ml"] == pytest.approx(mask.sum() * ct.voxel_volume_ml, abs=1e-3)
        if mask.any():
            assert entry["mean_hu"] == pytest.approx(ct.array[mask].mean(), abs=0.05)
        assert ("missing" in entry["flags"]) == (not mask.any()), name
        assert entry["training_volume_range_ml"] == manifest["training_volumes_ml"][name]


@needs_plastimatch
def test_segment_rtstruct_matches_labels_by_plastimatch(phantom_inputs, bundle: Path, tmp_path: Path) -> None:
    _, dicom = phantom_inputs
    assert main(["segment", str(dicom), "--model", str(bundle), "--out", str(tmp_path / "o"),
                 "--formats", "nifti,rtstruct"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "labels.nii.gz", "preview.png", "rtstruct.dcm", "summary.json"]
    labels = load_label(tmp_path / "o" / "labels.nii.gz")
    masks = plastimatch_masks(tmp_path / "o" / "rtstruct.dcm", dicom, tmp_path / "masks")
    assert masks
    for name, (mask, affine) in masks.items():
        ref = labels.array == next(o.label for o in ORGAN_EXPORT.values() if o.display_name == name)
        assert np.allclose(affine, labels.affine, atol=1e-3)
        assert 2 * (mask & ref).sum() / (mask.sum() + ref.sum()) >= 0.97, name
        shift = affine[:3, :3] @ (np.argwhere(mask).mean(0) - np.argwhere(ref).mean(0))
        assert np.all(np.abs(shift) <= np.array(labels.spacing)), (name, shift)


@needs_dciodvfy
def test_dciodvfy_on_segment_outputs(phantom_inputs, bundle: Path, tmp_path: Path) -> None:
    _, dicom = phantom_inputs
    assert main(["segment", str(dicom), "--model", str(bundle), "--out", str(tmp_path / "o")]) == 0
    for name in ("seg.dcm", "rtstruct.dcm"):
        assert dciodvfy_errors(tmp_path / "o" / name) == [], name


@pytest.mark.slow
def test_real_ct_dicom_equals_nifti(realct_dir: Path, bundle: Path, tmp_path: Path) -> None:
    write_ct_series(load_image(realct_dir / "Patient_R1.nii.gz"), tmp_path / "R1")
    assert main(["segment", str(realct_dir / "Patient_R1.nii.gz"), str(tmp_path / "R1"), "--model", str(bundle),
                 "--out", str(tmp_path / "o")]) == 0
    a = load_label(tmp_path / "o" / "Patient_R1" / "labels.nii.gz")
    b = load_label(tmp_path / "o" / "R1" / "labels.nii.gz")
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine, atol=1e-4)
    _check_round_trips(tmp_path / "o" / "R1", tmp_path / "R1", tmp_path)


def test_folder_of_cases_zip_and_mha(phantom_inputs, bundle: Path, tmp_path: Path) -> None:
    nifti, dicom = phantom_inputs
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(nifti, cases / "A.nii.gz")
    with zipfile.ZipFile(cases / "B.zip", "w") as zf:
        for f in dicom.iterdir():
            zf.write(f, f.name)
    shutil.copytree(dicom, cases / "C")
    # MHA written by SimpleITK from the CT (ITK's LPS geometry): read back to the same RAS grid
    ct = load_image(nifti)
    img = sitk.GetImageFromArray(np.transpose(ct.array, (2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.affine
    img.SetSpacing(ct.spacing)
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / np.array(ct.spacing)).ravel().tolist())
    sitk.WriteImage(img, str(cases / "D.mha"))
    assert main(["segment", str(cases), "--model", str(bundle), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["A", "B", "C", "D"]
    ref = load_label(tmp_path / "o" / "A" / "labels.nii.gz")
    for case in ("B", "C", "D"):
        got = load_label(tmp_path / "o" / case / "labels.nii.gz")
        assert np.array_equal(got.array, ref.array) and np.allclose(got.affine, ref.affine, atol=1e-4), case
    for case in ("B", "C"):
        assert (tmp_path / "o" / case / "rtstruct.dcm").is_file()
    assert not (tmp_path / "o" / "D" / "rtstruct.dcm").exists()  # DICOM formats only for DICOM input


# ----------------------------------------------------------------------------------------------------------------
# bad input: one line naming the file, exit 1, nothing written


def _small_series(phantom_case, folder: Path, **kw: object) -> list[Path]:
    ct = phantom_case.image
    return write_ct_series(Volume(ct.array[:, :, 20:30].copy(), ct.affine), folder, **kw)


def _bad_inputs(kind: str, phantom_case, tiny_run: Path, bundle: Path, tmp: Path) -> tuple[list[str], str]:
    """(segment arguments without --out, expected fragment of the error) for one kind of bad input."""
    model = ["--model", str(bundle)]
    if kind == "mixed_series":
        _small_series(phantom_case, tmp / "in" / "a", series_uid="1.2.3.4.1", series_description="one")
        _small_series(phantom_case, tmp / "in" / "b", series_uid="1.2.3.4.2", series_description="two")
        shutil.copytree(tmp / "in" / "b", tmp / "in" / "a" / "b")  # both series in one folder
        return [str(tmp / "in" / "a"), *model], "2 DICOM series, pick one with --series: 1.2.3.4.1 ('one', CT, 10"
    if kind == "gap":
        files = _small_series(phantom_case, tmp / "in")
        files[5].unlink()
        return [str(tmp / "in"), *model], "CT000006.dcm: uneven slice spacing"
    if kind == "mr":
        _small_series(phantom_case, tmp / "in", modality="MR")
        return [str(tmp / "in"), *model], "CT000000.dcm: modality MR, expected CT"
    if kind == "truncated":
        files = _small_series(phantom_case, tmp / "in")
        files[3].write_bytes(files[3].read_bytes()[:-1000])
        return [str(tmp / "in"), *model], "CT000003.dcm: unreadable pixel data"
    if kind in ("tampered_bundle", "unknown_arm"):
        _small_series(phantom_case, tmp / "in")
        bad = tmp / "bad.zip"
        with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(bad, "w") as dst:
            for name in src.namelist():
                data = src.read(name)
                if kind == "tampered_bundle" and name == "config.yaml":
                    data = data + b"\n# edited\n"
                if kind == "unknown_arm" and name == MANIFEST:
                    data = json.dumps({**json.loads(data), "arm": "segformer"}).encode()
                dst.writestr(name, data)
        expected = ("bad.zip: config.yaml: sha256" if kind == "tampered_bundle"
                    else "bad.zip: bundle of unknown model arm 'segformer'")
        return [str(tmp / "in"), "--model", str(bad)], expected
    if kind == "dicom_format_for_nifti":
        save_volume(phantom_case.image, tmp / "ct.nii.gz")
        return [str(tmp / "ct.nii.gz"), *model, "--formats", "rtstruct"], "ct.nii.gz: --formats rtstruct needs a DICOM"
    if kind == "bad_case_among_good":
        save_volume(phantom_case.image, tmp / "ct.nii.gz")
        _small_series(phantom_case, tmp / "mr", modality="MR")
        return [str(tmp / "ct.nii.gz"), str(tmp / "mr"), *model], "CT000000.dcm: modality MR"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["mixed_series", "gap", "mr", "truncated", "tampered_bundle", "unknown_arm",
                                  "dicom_format_for_nifti", "bad_case_among_good"])
def test_bad_input_is_one_line_and_writes_nothing(kind: str, phantom_case, tiny_run: Path, bundle: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, expected = _bad_inputs(kind, phantom_case, tiny_run, bundle, tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["segment", *args, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # one error line; anything else on stderr is a progress line (shown unless THORAXSEG_NO_PROGRESS=1)
    errors = [line for line in err if line.startswith("thoraxseg: error: ")]
    assert len(errors) == 1 and all(line.startswith("segment: ") for line in err if line not in errors), err
    assert expected in errors[0]
    assert not out.exists()


def test_existing_output_needs_overwrite(phantom_inputs, bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    nifti, _ = phantom_inputs
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert main(["segment", str(nifti), "--model", str(bundle), "--out", str(tmp_path / "o")]) == 1
    assert "already exists (use --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["keep.txt"]
    assert main(["segment", str(nifti), "--model", str(bundle), "--out", str(tmp_path / "o"), "--overwrite",
                 "--formats", "nifti"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["labels.nii.gz", "preview.png", "summary.json"]
    (tmp_path / "file").write_text("x")
    assert main(["segment", str(nifti), "--model", str(bundle), "--out", str(tmp_path / "file"), "--overwrite"]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
