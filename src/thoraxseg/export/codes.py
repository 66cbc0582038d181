"""Organ identity in the export formats: display name, SNOMED CT code, RGB colour.

Codes come from the DICOM content-mapping resource as shipped with pydicom
(``pydicom.sr.codedict.codes.SCT``); the category of every organ is SNOMED CT
"Anatomical Structure" (91723000), as in the DICOM and 3D Slicer terminologies.

>>> ORGAN_EXPORT[2].snomed_code, ORGAN_EXPORT[2].display_name
('80891009', 'Heart')
"""

from __future__ import annotations

from dataclasses import dataclass

from thoraxseg.labels import LABEL_COLORS, ORGANS, label_name

CATEGORY_CODE = ("91723000", "SCT", "Anatomical Structure")


@dataclass(frozen=True)
class OrganExport:
    """How one organ label is named and coded in exported files."""

    label: int
    name: str  # thoraxseg's lower-case name (``heart``)
    display_name: str  # ROI / segment label shown to users (``Heart``)
    snomed_code: str
    snomed_meaning: str
    color: tuple[float, float, float]  # RGB in [0, 1]

    @property
    def color_255(self) -> tuple[int, int, int]:
        """RGB in 0..255 (RTSTRUCT ROI Display Color)."""
        return tuple(round(255 * c) for c in self.color)  # type: ignore[return-value]


_SNOMED = {"esophagus": ("32849002", "Esophagus"), "heart": ("80891009", "Heart"),
           "trachea": ("44567001", "Trachea"), "aorta": ("15825003", "Aorta")}

#: Export identity of every organ, keyed by label code.
ORGAN_EXPORT: dict[int, OrganExport] = {
    int(o): OrganExport(int(o), label_name(o), label_name(o).capitalize(), *_SNOMED[label_name(o)],
                        LABEL_COLORS[int(o)])
    for o in ORGANS
}
