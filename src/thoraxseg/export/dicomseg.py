"""DICOM Segmentation objects (highdicom) for labels predicted on a DICOM CT series.

One SEG instance (BINARY, one segment per organ present) references every source CT
slice (Study, Series and SOP Instance UIDs and the Frame of Reference are taken from
the source), names each organ with its SNOMED CT code (category Anatomical Structure)
and identifies the algorithm (thoraxseg, its version and the model arm; family
Artificial Intelligence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from thoraxseg.data.dicom import DicomSeries
from thoraxseg.export.codes import CATEGORY_CODE, ORGAN_EXPORT
from thoraxseg.utils.atomic import atomic_path


def organs_present(labels: np.ndarray) -> list[int]:
    """Organ label codes that have at least one voxel, in label order."""
    present = set(np.unique(labels).tolist())
    return [lab for lab in sorted(ORGAN_EXPORT) if lab in present]


def labels_on_series(labels: np.ndarray, series: DicomSeries) -> tuple[np.ndarray, list[int]]:
    """``labels`` as uint8 checked against the series grid, and the organs present (ValueError on a mismatch)."""
    arr = np.asarray(labels, dtype=np.uint8)
    if arr.shape != series.volume.shape:
        raise ValueError(f"labels {arr.shape} differ from the series grid {series.volume.shape}")
    return arr, organs_present(arr)


def write_dicom_seg(labels: np.ndarray, series: DicomSeries, path: str | Path, algorithm_name: str = "thoraxseg",
                    algorithm_version: str | None = None, series_number: int = 901) -> list[int]:
    """Write ``labels`` (uint8, ``(x, y, z)``, on the series' grid) as a DICOM SEG, atomically.

    Parameters
    ----------
    labels
        Label volume on exactly the grid of ``series.volume`` (slice ``z = k`` ↔ ``series.datasets[k]``).
    series
        The source CT series (headers).
    algorithm_name, algorithm_version
        Algorithm Identification (e.g. ``"thoraxseg enet"``, the thoraxseg version).

    Returns
    -------
    list[int]
        The organ labels written as segments (organs with no voxel are left out; the SEG
        then has fewer segments). Nothing is written when no organ is present.
    """
    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    from thoraxseg import __version__

    arr, present = labels_on_series(labels, series)
    if not present:
        return []
    version = algorithm_version or __version__
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name, family=Code("123110", "DCM",
                                                   "Artificial Intelligence"), version=version)
    category = Code(*CATEGORY_CODE)
    descriptions = []
    # highdicom numbers segments 1..N; the label map passed below uses those numbers
    remap = np.zeros(256, dtype=np.uint8)
    for number, label in enumerate(present, start=1):
        organ = ORGAN_EXPORT[label]
        remap[label] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=organ.display_name, segmented_property_category=category,
            segmented_property_type=Code(organ.snomed_code, "SCT", organ.snomed_meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_id=f"thoraxseg-{organ.name}", tracking_uid=generate_uid(),
            display_color=hd.color.CIELabColor.from_rgb(*organ.color_255)))
    frames = np.ascontiguousarray(np.transpose(remap[arr], (2, 1, 0)))  # (slice, row, column)
    seg = hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="thoraxseg",
        manufacturer_model_name=algorithm_name, software_versions=version, device_serial_number="0",
        series_description=f"{algorithm_name} segmentation", content_label="THORAXSEG",
        content_description="Organs at risk (thorax)", content_creator_name="thoraxseg^")
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return present


def read_dicom_seg(path: str | Path, series: DicomSeries) -> np.ndarray:
    """Read a SEG back onto ``series``' grid with highdicom: labels (uint8, ``(x, y, z)``, SegTHOR codes)."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [str(ds.SOPInstanceUID) for ds in series.datasets]
    numbers = seg.get_segment_numbers()
    stack = seg.get_pixels_by_source_instance(uids, combine_segments=True, segment_numbers=numbers,
                                              assert_missing_frames_are_empty=True)
    remap = np.zeros(max(numbers, default=0) + 1, dtype=np.uint8)
    for number in numbers:
        label = seg.get_segment_description(number).segment_label
        remap[number] = next(o.label for o in ORGAN_EXPORT.values() if o.display_name == label)
    return np.ascontiguousarray(np.transpose(remap[stack], (2, 1, 0)))
