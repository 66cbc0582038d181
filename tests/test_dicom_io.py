"""DICOM CT series reading: geometry (LPS → RAS exactly once, checked against SimpleITK), HU, sorting, bad input."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from thoraxseg.data.dicom import LPS_TO_RAS, list_series, read_ct_series, write_ct_series
from thoraxseg.data.volume import Volume, load_image
from thoraxseg.errors import InputError


def _sitk_volume(folder: Path) -> Volume:
    """SimpleITK's (GDCM's) own reading of a series, converted to (x, y, z) + RAS affine independently of ours."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    direction = np.array(img.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = direction * np.array(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return Volume(arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff)


def test_phantom_series_round_trips_and_matches_simpleitk(phantom_case, tmp_path: Path) -> None:
    ct = phantom_case.image
    write_ct_series(ct, tmp_path / "s")
    got = read_ct_series(tmp_path / "s").volume
    assert got.array.dtype == np.int16
    assert np.array_equal(got.array, ct.array)
    assert np.allclose(got.affine, ct.affine, atol=1e-4)
    ref = _sitk_volume(tmp_path / "s")
    assert np.array_equal(ref.array, got.array)
    assert np.allclose(ref.affine, got.affine, atol=1e-4)


def test_real_ct_head_first_supine_lps(realct_dir: Path, tmp_path: Path) -> None:
    ct = load_image(realct_dir / "Patient_R1.nii.gz")
    files = write_ct_series(ct, tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    # Patient_R1's affine is diag(-1.5, -1.5, 1.5) in RAS: rows run toward the patient's left, columns posterior
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.PatientPosition == "HFS"
    first = np.asarray(ds.ImagePositionPatient, float)
    assert np.allclose(first, (LPS_TO_RAS @ ct.affine)[:3, 3], atol=1e-4)
    got = read_ct_series(tmp_path / "s").volume
    assert np.array_equal(got.array, ct.array)
    assert np.allclose(got.affine, ct.affine, atol=1e-4)
    ref = _sitk_volume(tmp_path / "s")
    assert np.array_equal(ref.array, got.array) and np.allclose(ref.affine, got.affine, atol=1e-4)
    # the heart's centroid in world mm is where the NIfTI says it is (no flip of any axis)
    heart = np.argwhere(load_image(realct_dir / "GT.nii.gz").array == 2).mean(axis=0)
    assert np.allclose(got.affine[:3, :3] @ heart + got.affine[:3, 3], ct.affine[:3, :3] @ heart + ct.affine[:3, 3])


def test_shuffled_file_names_and_instance_numbers_do_not_change_the_order(phantom_case, tmp_path: Path) -> None:
    ct = phantom_case.image
    n = ct.shape[2]
    rng = np.random.default_rng(3)
    names = [f"IM{i:04d}" for i in rng.permutation(n)]
    files = write_ct_series(ct, tmp_path / "s", file_names=names)
    for f in files:  # scramble Instance Number too: sorting must use the position alone
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = str(int(rng.integers(1, 10_000)))
        ds.save_as(f)
    series = read_ct_series(tmp_path / "s")
    assert np.array_equal(series.volume.array, ct.array)
    assert [f.name for f in series.files] == names


def test_rescale_slope_and_intercept_give_hu(phantom_case, tmp_path: Path) -> None:
    ct = phantom_case.image
    files = write_ct_series(ct, tmp_path / "s", slope=0.5, intercept=-1024.0)
    stored = pydicom.dcmread(files[0]).pixel_array
    assert not np.array_equal(stored.T, ct.array[:, :, 0])  # the stored values really are rescaled
    assert np.array_equal(read_ct_series(tmp_path / "s").volume.array, ct.array)


def test_zip_of_a_series(phantom_case, tmp_path: Path) -> None:
    files = write_ct_series(phantom_case.image, tmp_path / "s")
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        for f in files:
            zf.write(f, f"dicom/{f.name}")
    assert np.array_equal(read_ct_series(tmp_path / "s.zip").volume.array, phantom_case.image.array)


def _small(phantom_case) -> Volume:
    ct = phantom_case.image
    return Volume(ct.array[:, :, 10:20].copy(), ct.affine)


def test_several_series_need_series_uid(phantom_case, tmp_path: Path) -> None:
    ct = _small(phantom_case)
    write_ct_series(ct, tmp_path / "mix" / "a", series_uid="1.2.826.0.1.3680043.8.498.1", series_description="soft")
    write_ct_series(Volume(ct.array[:, :, :7].copy(), ct.affine), tmp_path / "mix" / "b",
                    series_uid="1.2.826.0.1.3680043.8.498.2", series_description="lung")
    with pytest.raises(InputError) as err:
        read_ct_series(tmp_path / "mix")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "--series" in msg
    assert "1.2.826.0.1.3680043.8.498.1 ('soft', CT, 10 slices)" in msg
    assert "1.2.826.0.1.3680043.8.498.2 ('lung', CT, 7 slices)" in msg
    got = read_ct_series(tmp_path / "mix", series_uid="1.2.826.0.1.3680043.8.498.2").volume
    assert got.shape[2] == 7
    assert [s.uid for s in list_series(tmp_path / "mix")] == ["1.2.826.0.1.3680043.8.498.1",
                                                               "1.2.826.0.1.3680043.8.498.2"]
    with pytest.raises(InputError, match=r"no series with UID 9\.9"):
        read_ct_series(tmp_path / "mix", series_uid="9.9")


def test_slice_gap_duplicate_and_modality_are_errors(phantom_case, tmp_path: Path) -> None:
    ct = _small(phantom_case)
    files = write_ct_series(ct, tmp_path / "gap")
    files[4].unlink()
    with pytest.raises(InputError, match=r"CT000005\.dcm: uneven slice spacing.*gap"):
        read_ct_series(tmp_path / "gap")
    files = write_ct_series(ct, tmp_path / "dup")
    shutil.copy(files[3], tmp_path / "dup" / "copy.dcm")
    with pytest.raises(InputError, match="duplicate slice position"):
        read_ct_series(tmp_path / "dup")
    write_ct_series(ct, tmp_path / "mr", modality="MR")
    with pytest.raises(InputError, match=r"CT000000\.dcm: modality MR, expected CT"):
        read_ct_series(tmp_path / "mr")


def test_truncated_and_non_dicom_files(phantom_case, tmp_path: Path) -> None:
    ct = _small(phantom_case)
    files = write_ct_series(ct, tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("not DICOM")  # ignored
    assert read_ct_series(tmp_path / "s").volume.shape == ct.shape
    data = files[6].read_bytes()
    files[6].write_bytes(data[: len(data) - 5000])  # cut inside the pixel data
    with pytest.raises(InputError, match=r"CT000006\.dcm: unreadable pixel data"):
        read_ct_series(tmp_path / "s")
    files[6].write_bytes(data[:300])  # cut inside the header
    with pytest.raises(InputError, match=r"CT000006\.dcm: (unreadable DICOM file|DICOM file without a Series Instance UID)"):
        read_ct_series(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM image files found"):
        read_ct_series(tmp_path / "empty")


def test_structure_sets_next_to_the_ct_are_not_series(phantom_case, tmp_path: Path) -> None:
    from thoraxseg.export.rtstruct import write_rtstruct

    ct = _small(phantom_case)
    write_ct_series(ct, tmp_path / "s")
    labels = np.asarray(phantom_case.labels, np.uint8)[:, :, 10:20]
    write_rtstruct(labels, read_ct_series(tmp_path / "s"), tmp_path / "s" / "rtstruct.dcm")
    assert [s.modality for s in list_series(tmp_path / "s")] == ["CT"]
    assert np.array_equal(read_ct_series(tmp_path / "s").volume.array, ct.array)
