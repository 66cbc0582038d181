"""NIfTI I/O: geometry round trips (incl. the real LPS CT), bad-input errors, atomic writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from thoraxseg.data.volume import (
    Volume,
    load_image,
    load_label,
    load_volume,
    nifti_stem,
    same_geometry,
    save_label,
    save_volume,
)
from thoraxseg.errors import InputError
from thoraxseg.utils.atomic import atomic_dir, atomic_path, write_json_atomic


def test_image_roundtrip_keeps_geometry_and_dtype(tmp_path: Path, tiny_volume: Volume) -> None:
    save_volume(tiny_volume, tmp_path / "ct.nii.gz")
    back = load_image(tmp_path / "ct.nii.gz")
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, tiny_volume.array)
    np.testing.assert_allclose(back.affine, tiny_volume.affine, atol=1e-5)
    assert back.spacing == (0.9, 0.9, 2.5)
    assert back.origin == pytest.approx((-10.0, 20.0, -100.0))


def test_realct_label_roundtrip_matches_source_geometry(tmp_path: Path, realct_dir: Path) -> None:
    ct = load_image(realct_dir / "Patient_R1.nii.gz")
    gt = load_label(realct_dir / "GT.nii.gz")
    assert ct.shape == gt.shape == (120, 126, 164)
    assert ct.spacing == pytest.approx((1.5, 1.5, 1.5))
    assert same_geometry(ct, gt) is None
    assert set(np.unique(gt.array).tolist()) == {0, 2, 4}
    out = tmp_path / "pred.nii.gz"
    save_label(gt.array, ct, out)
    # nibabel sees the identical grid and voxels, stored as uint8
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, ct.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), gt.array)
    # SimpleITK (another reader, LPS world) agrees with the source CT on origin, spacing and direction
    a, b = sitk.ReadImage(str(realct_dir / "Patient_R1.nii.gz")), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    # sitk's (z, y, x) array is our (x, y, z) array transposed
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b).transpose(2, 1, 0), gt.array)


def test_truncated_file_gives_one_line_error(tmp_path: Path, tiny_volume: Volume) -> None:
    good = tmp_path / "ct.nii.gz"
    save_volume(tiny_volume, good)
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        load_image(bad)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "truncated or corrupt" in msg and "\n" not in msg


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(InputError, match=r"junk\.nii\.gz"):
        load_volume(junk)
    with pytest.raises(InputError, match="file not found"):
        load_volume(tmp_path / "nope.nii.gz")


def _gz_variants(tmp_path: Path) -> dict[str, tuple[bytes, np.ndarray]]:
    """``.nii.gz`` files the one-shot reader must read as nibabel's streaming reader does."""
    a = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    out = {}
    for name, img in (("nifti1", nib.Nifti1Image(a, np.eye(4))),
                      ("nifti2", nib.Nifti2Image(a, np.eye(4))),
                      ("big-endian", nib.Nifti1Image(a.astype(">i2"), np.eye(4), nib.Nifti1Header(endianness=">"))),
                      ("scaled", nib.Nifti1Image(a.astype(np.float32), np.eye(4)))):
        if name == "scaled":
            img.header.set_slope_inter(2.0, 1.0)
        f = tmp_path / f"{name}.nii.gz"
        nib.save(img, f)
        out[name] = (f.read_bytes(), np.asanyarray(nib.load(f).dataobj))
    raw = gzip.decompress(out["nifti1"][0])
    out["two members"] = (gzip.compress(raw[:200]) + gzip.compress(raw[200:]), a)  # e.g. bgzip / cat a b
    out["zero padding"] = (out["nifti1"][0] + b"\0" * 7, a)
    return out


@pytest.mark.parametrize("backend", ["isal", "zlib"])
def test_gzip_reader_reads_what_nibabel_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    import zlib

    import thoraxseg.data.volume as volume

    if backend == "zlib":  # the fallback where no isal wheel exists
        monkeypatch.setattr(volume, "_inflate", zlib)
    else:
        assert volume._inflate.__name__.startswith("isal"), "isal is a dependency: the fast reader must be in use"
    for name, (data, expected) in _gz_variants(tmp_path).items():
        f = tmp_path / f"v-{name.replace(' ', '-')}.nii.gz"
        f.write_bytes(data)
        back = load_volume(f).array
        assert back.dtype == expected.dtype and back.flags.writeable, name
        np.testing.assert_array_equal(back, expected, err_msg=name)
    good = _gz_variants(tmp_path)["nifti1"][0]
    bad_crc = bytearray(good)
    bad_crc[-6] ^= 0xFF  # a CRC-32 byte of the trailer
    for name, data, words in (("cut", good[:-3], "ends early"), ("crc", bytes(bad_crc), "truncated or corrupt"),
                              ("trailing", good + b"garbage!", "8 bytes of trailing data"),
                              ("plain", gzip.decompress(good), "not a gzip file"), ("empty", b"", "not a gzip file"),
                              ("short", gzip.compress(gzip.decompress(good)[:-10]), "230 bytes of voxel data")):
        f = tmp_path / f"bad-{name}.nii.gz"
        f.write_bytes(data)
        with pytest.raises(InputError) as err:
            load_volume(f)
        msg = str(err.value)
        assert msg.startswith(str(f)) and words in msg and "\n" not in msg, (name, msg)


def test_image_with_nan_or_constant_is_rejected(tmp_path: Path) -> None:
    arr = np.zeros((5, 5, 5), np.float32)
    arr[1, 1, 1] = np.nan
    save_volume(Volume(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="NaN"):
        load_image(tmp_path / "nan.nii.gz")
    save_volume(Volume(np.full((5, 5, 5), -1000, np.int16), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="empty image"):
        load_image(tmp_path / "flat.nii.gz")


def test_unknown_labels_are_rejected(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[0, 0, 0] = 7
    save_volume(Volume(arr, np.eye(4)), tmp_path / "GT.nii.gz")
    with pytest.raises(InputError, match=r"labels outside 0-4: \[7\]"):
        load_label(tmp_path / "GT.nii.gz")


def test_save_label_refuses_other_shape(tmp_path: Path, tiny_volume: Volume) -> None:
    with pytest.raises(ValueError, match="differs"):
        save_label(np.zeros((3, 3, 3), np.uint8), tiny_volume, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_same_geometry_reports_each_kind_of_difference(tiny_volume: Volume) -> None:
    other = tiny_volume.with_array(tiny_volume.array.copy())
    assert same_geometry(tiny_volume, other) is None
    other.affine[0, 3] += 5.0
    assert "origin" in same_geometry(tiny_volume, other)
    other = tiny_volume.with_array(tiny_volume.array)
    other.affine[2, 2] = 3.0
    assert "spacing" in same_geometry(tiny_volume, other)
    flipped = tiny_volume.with_array(tiny_volume.array)
    flipped.affine[0, 0] *= -1
    assert "direction" in same_geometry(tiny_volume, flipped)


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "cohort"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_json_rejects_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"a": float("nan")})
    assert not (tmp_path / "x.json").exists()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 6)),
    spacing=st.tuples(*[st.floats(0.3, 5.0) for _ in range(3)]),
    flips=st.tuples(*[st.sampled_from([-1.0, 1.0]) for _ in range(3)]),
    origin=st.tuples(*[st.floats(-500, 500) for _ in range(3)]),
)
def test_label_geometry_roundtrip_property(tmp_path_factory, shape, spacing, flips, origin) -> None:
    d = tmp_path_factory.mktemp("rt")
    affine = np.diag([*(np.array(spacing) * np.array(flips)), 1.0])
    affine[:3, 3] = origin
    rng = np.random.default_rng(sum(shape))
    ref = Volume(rng.integers(-1000, 1000, shape).astype(np.int16), affine)
    labels = rng.integers(0, 5, shape).astype(np.uint8)
    save_label(labels, ref, d / "GT.nii.gz")
    back = load_label(d / "GT.nii.gz")
    assert same_geometry(ref, back) is None
    np.testing.assert_array_equal(back.array, labels)


def test_nifti_stem() -> None:
    assert nifti_stem("a/Patient_03.nii.gz") == "Patient_03"
    assert nifti_stem("Patient_03.nii") == "Patient_03"


def test_input_error_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(InputError("/x/GT.nii.gz", "labels outside 0-4: [7]")))
    assert isinstance(err, InputError) and str(err) == "/x/GT.nii.gz: labels outside 0-4: [7]"
    assert err.path == Path("/x/GT.nii.gz") and err.problem == "labels outside 0-4: [7]"
