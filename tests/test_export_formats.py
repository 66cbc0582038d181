"""Export formats written from known labels (phantom GT, Patient_R1 GT) and read back independently.

- ``.seg.nrrd``: names, colours, voxels and geometry identical (pynrrd and SimpleITK read it back).
- DICOM-SEG: highdicom reads back voxel-identical labels; references the source series.
- RTSTRUCT: plastimatch (an independent reader) rasterises it; Dice ≥ 0.97 per organ and centroids
  within one voxel (no left/right or anterior/posterior flip).
- dciodvfy reports no error on any object written (CT slices, SEG, RTSTRUCT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_tools import dciodvfy_errors, needs_dciodvfy, needs_plastimatch, plastimatch_masks
from thoraxseg.data.dicom import DicomSeries, read_ct_series, write_ct_series
from thoraxseg.data.volume import Volume, load_image, load_label
from thoraxseg.export.codes import ORGAN_EXPORT
from thoraxseg.export.dicomseg import read_dicom_seg, write_dicom_seg
from thoraxseg.export.rtstruct import slice_contours, write_rtstruct
from thoraxseg.export.segnrrd import read_seg_nrrd, write_seg_nrrd


@pytest.fixture(scope="module")
def phantom_series(phantom_case, tmp_path_factory: pytest.TempPathFactory) -> tuple[DicomSeries, np.ndarray, Path]:
    folder = tmp_path_factory.mktemp("phantom_dicom") / "ct"
    write_ct_series(phantom_case.image, folder)
    return read_ct_series(folder), np.asarray(phantom_case.labels, np.uint8), folder


@pytest.fixture(scope="module")
def real_series(realct_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DicomSeries, np.ndarray, Path]:
    folder = tmp_path_factory.mktemp("real_dicom") / "ct"
    write_ct_series(load_image(realct_dir / "Patient_R1.nii.gz"), folder, slope=0.5, intercept=-1024.0)
    return read_ct_series(folder), load_label(realct_dir / "GT.nii.gz").array, folder


def test_seg_nrrd_round_trip(phantom_case, tmp_path: Path) -> None:
    labels = np.asarray(phantom_case.labels, np.uint8)
    write_seg_nrrd(labels, phantom_case.image, tmp_path / "labels.seg.nrrd")
    back, segments = read_seg_nrrd(tmp_path / "labels.seg.nrrd")
    assert np.array_equal(back.array, labels)
    assert np.allclose(back.affine, phantom_case.image.affine, atol=1e-6)
    assert [(s.name, s.label_value, s.layer) for s in segments] == [
        ("Esophagus", 1, 0), ("Heart", 2, 0), ("Trachea", 3, 0), ("Aorta", 4, 0)]
    for s in segments:
        assert np.allclose(s.color, ORGAN_EXPORT[s.label_value].color, atol=1e-5)
        idx = np.argwhere(labels == s.label_value)
        assert s.extent == tuple(int(v) for pair in zip(idx.min(0), idx.max(0), strict=True) for v in pair)
    # SimpleITK (ITK's NRRD reader, LPS) sees the same grid: origin and spacing in LPS = RAS with x, y negated
    img = sitk.ReadImage(str(tmp_path / "labels.seg.nrrd"))
    assert np.allclose(img.GetOrigin(), np.array(phantom_case.image.origin) * [-1, -1, 1], atol=1e-4)
    assert np.allclose(img.GetSpacing(), phantom_case.image.spacing, atol=1e-5)
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)), labels)


def test_seg_nrrd_read_by_slicerio(realct_dir: Path, tmp_path: Path) -> None:
    """slicerio (3D Slicer's own Python reader of segmentation files) sees the same segments, voxels and grid."""
    import slicerio

    ct = load_image(realct_dir / "Patient_R1.nii.gz")
    labels = load_label(realct_dir / "GT.nii.gz").array
    write_seg_nrrd(labels, ct, tmp_path / "labels.seg.nrrd")
    seg = slicerio.read_segmentation(str(tmp_path / "labels.seg.nrrd"))
    assert np.allclose(seg["ijkToLPS"], np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.affine, atol=1e-5)
    assert np.array_equal(seg["voxels"], labels)
    by_name = {s["name"]: s for s in seg["segments"]}
    assert sorted(by_name) == ["Aorta", "Esophagus", "Heart", "Trachea"]
    for organ in ORGAN_EXPORT.values():
        s = by_name[organ.display_name]
        assert s["labelValue"] == organ.label
        assert np.allclose(s["color"], organ.color, atol=1e-5)
        assert s["terminology"]["type"] == ["SCT", organ.snomed_code, organ.snomed_meaning]
        assert s["terminology"]["category"] == ["SCT", "91723000", "Anatomical Structure"]


def test_seg_nrrd_lists_every_organ_even_when_empty(phantom_case, tmp_path: Path) -> None:
    labels = np.asarray(phantom_case.labels, np.uint8).copy()
    labels[labels == 3] = 0
    write_seg_nrrd(labels, phantom_case.image, tmp_path / "x.seg.nrrd")
    _, segments = read_seg_nrrd(tmp_path / "x.seg.nrrd")
    trachea = next(s for s in segments if s.name == "Trachea")
    assert trachea.extent == (0, -1, 0, -1, 0, -1)


def test_contours_of_a_square_and_a_hole() -> None:
    m = np.zeros((8, 8), bool)
    m[1:7, 1:7] = True
    m[3:5, 3:5] = False
    polys = slice_contours(m)
    assert len(polys) == 2  # outer boundary and the hole
    assert all(np.allclose(p % 0.5, 0) for p in polys)  # half-way between voxel centres


@needs_plastimatch
@pytest.mark.parametrize("which", ["phantom", "real"])
def test_rtstruct_rasterised_by_plastimatch_matches_labels(which: str, request: pytest.FixtureRequest,
                                                           tmp_path: Path) -> None:
    series, labels, folder = request.getfixturevalue(f"{which}_series")
    written = write_rtstruct(labels, series, tmp_path / "rtstruct.dcm", "thoraxseg test")
    assert written == sorted(set(np.unique(labels).tolist()) - {0})
    masks = plastimatch_masks(tmp_path / "rtstruct.dcm", folder, tmp_path / "masks")
    assert sorted(masks) == sorted(ORGAN_EXPORT[lab].display_name for lab in written)
    for lab in written:
        mask, affine = masks[ORGAN_EXPORT[lab].display_name]
        # plastimatch rasterises on the referenced CT's grid: same voxels, same world geometry
        assert mask.shape == labels.shape
        assert np.allclose(affine, series.volume.affine, atol=1e-3)
        ref = labels == lab
        dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
        assert dice >= 0.97, (lab, dice)
        # centroid in world mm within one voxel: a left/right or anterior/posterior flip moves it by many voxels
        c_ref = affine[:3, :3] @ np.argwhere(ref).mean(0)
        c_rt = affine[:3, :3] @ np.argwhere(mask).mean(0)
        assert np.all(np.abs(c_rt - c_ref) <= np.array(series.volume.spacing)), (lab, c_rt - c_ref)


def test_rtstruct_references_the_source(phantom_series, tmp_path: Path) -> None:
    series, labels, _ = phantom_series
    write_rtstruct(labels, series, tmp_path / "rt.dcm", "thoraxseg enet", "9.9")
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    src = series.datasets[0]
    assert ds.Modality == "RTSTRUCT"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == src.FrameOfReferenceUID
    ref_series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == src.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence} == {
        d.SOPInstanceUID for d in series.datasets}
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Esophagus", "Heart", "Trachea", "Aorta"]
    assert {o.RTROIInterpretedType for o in ds.RTROIObservationsSequence} == {"ORGAN"}
    assert [o.RTROIIdentificationCodeSequence[0].CodeValue for o in ds.RTROIObservationsSequence] == [
        "32849002", "80891009", "44567001", "15825003"]
    assert ds.StructureSetROISequence[1].ROIGenerationAlgorithm == "AUTOMATIC"
    assert ds.StructureSetROISequence[1].ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmName == \
        "thoraxseg enet"
    # every contour lies on the plane of the slice it references (z of that slice, LPS = RAS z)
    z_of = {d.SOPInstanceUID: float(d.ImagePositionPatient[2]) for d in series.datasets}
    for c in ds.ROIContourSequence[1].ContourSequence:
        z = np.asarray(c.ContourData, float).reshape(-1, 3)[:, 2]
        assert np.allclose(z, z_of[c.ContourImageSequence[0].ReferencedSOPInstanceUID], atol=1e-3)


@pytest.mark.parametrize("which", ["phantom", "real"])
def test_dicom_seg_read_back_by_highdicom_is_voxel_identical(which: str, request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    series, labels, _ = request.getfixturevalue(f"{which}_series")
    written = write_dicom_seg(labels, series, tmp_path / "seg.dcm", "thoraxseg test")
    assert written == sorted(set(np.unique(labels).tolist()) - {0})
    assert np.array_equal(read_dicom_seg(tmp_path / "seg.dcm", series), labels)
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    src = series.datasets[0]
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    seg0 = ds.SegmentSequence[0]
    assert seg0.SegmentAlgorithmType == "AUTOMATIC" and seg0.SegmentAlgorithmName == "thoraxseg test"
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence] == [
        ORGAN_EXPORT[lab].snomed_code for lab in written]


def test_nothing_written_without_organs(phantom_series, tmp_path: Path) -> None:
    series, labels, _ = phantom_series
    empty = np.zeros_like(labels)
    assert write_dicom_seg(empty, series, tmp_path / "seg.dcm") == []
    assert write_rtstruct(empty, series, tmp_path / "rt.dcm") == []
    assert list(tmp_path.iterdir()) == []


@needs_dciodvfy
def test_dciodvfy_finds_no_error_in_any_object_written(phantom_series, tmp_path: Path) -> None:
    series, labels, _ = phantom_series
    write_dicom_seg(labels, series, tmp_path / "seg.dcm", "thoraxseg test")
    write_rtstruct(labels, series, tmp_path / "rt.dcm", "thoraxseg test")
    for path in (tmp_path / "seg.dcm", tmp_path / "rt.dcm", series.files[0], series.files[-1]):
        assert dciodvfy_errors(path) == [], path


def test_writers_refuse_labels_on_another_grid(phantom_series, phantom_case, tmp_path: Path) -> None:
    series, labels, _ = phantom_series
    with pytest.raises(ValueError, match="differ"):
        write_rtstruct(labels[:, :, :-1], series, tmp_path / "rt.dcm")
    with pytest.raises(ValueError, match="differ"):
        write_seg_nrrd(labels[:-1], Volume(labels, phantom_case.image.affine), tmp_path / "x.seg.nrrd")


def test_preview_is_radiological_on_real_ct(realct_dir: Path, tmp_path: Path) -> None:
    """Patient_R1's heart lies left of the midline: on screen right in axial and coronal views (radiological)."""
    from thoraxseg.data.volume import to_ras
    from thoraxseg.export.preview import radiological_views, write_preview

    ct = load_image(realct_dir / "Patient_R1.nii.gz")  # LPS-ordered voxels (affine diag(-1.5, -1.5, 1.5))
    labels = load_label(realct_dir / "GT.nii.gz").array
    ras, spacing = to_ras(labels, ct.affine)
    assert spacing == (1.5, 1.5, 1.5)
    heart = np.argwhere(ras == 2).mean(0).round().astype(int)
    views = radiological_views(ras == 2, tuple(heart))
    # world x (RAS, + = patient's right) of the heart centroid is negative relative to the body centre
    body_x = (ct.affine @ [ct.shape[0] / 2, 0, 0, 1])[0]
    heart_x = (ct.affine @ [*np.argwhere(labels == 2).mean(0), 1])[0]
    assert heart_x < body_x  # the heart is on the patient's left in the source geometry
    for view in ("axial", "coronal"):
        cols = np.argwhere(views[view])[:, 1]
        assert cols.mean() > views[view].shape[1] / 2, view  # screen right = patient's left
    write_preview(ct, labels, tmp_path / "preview.png", "Patient_R1")
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_flags(realct_dir: Path) -> None:
    from thoraxseg.export.summary import ON_AIR_FRACTION, body_mask, summarize

    ct = load_image(realct_dir / "Patient_R1.nii.gz")
    labels = load_label(realct_dir / "GT.nii.gz").array.copy()
    s = summarize(labels, ct, {"heart": [1.0, 2.0], "aorta": [0.0, 1e6]})
    heart, aorta = s["organs"]["heart"], s["organs"]["aorta"]
    assert heart["volume_ml"] == pytest.approx((labels == 2).sum() * 1.5**3 / 1000, abs=1e-3)
    assert heart["components"] == 1 and heart["outside_body_fraction"] < ON_AIR_FRACTION
    assert heart["mean_hu"] == pytest.approx(ct.array[labels == 2].mean(), abs=0.05)  # rounded to 0.1 HU
    assert s["organs"]["esophagus"]["flags"] == ["missing"]  # Patient_R1 has heart and aorta labels only
    assert heart["flags"] == ["volume_above_training_range"] and aorta["flags"] == []
    # Patient_R1's field of view is filled by the body at the bottom; at slice 80 air surrounds it
    outside = np.argwhere(~body_mask(ct.array)[:, :, 80] & (ct.array[:, :, 80] < -900))  # air around the body
    i, j = outside[0]
    labels[i, j, 80] = 4  # one aorta voxel on the air: a second fragment
    aorta = summarize(labels, ct)["organs"]["aorta"]
    assert aorta["components"] == 2 and "fragments" in aorta["flags"]
    assert aorta["outside_body_fraction"] == pytest.approx(1 / (labels == 4).sum(), abs=1e-4)
    labels[labels == 4] = 0
    labels[outside[:50, 0], outside[:50, 1], 80] = 4  # an aorta only on air
    assert "label_on_air" in summarize(labels, ct)["organs"]["aorta"]["flags"]
