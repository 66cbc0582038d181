"""Synthetic thorax CT cohort (``thoraxseg phantom``): the project's default data.

Anatomically placed, per-patient varied adult thoraces with SegTHOR labels
(esophagus 1, heart 2, trachea 3, aorta 4), written in the SegTHOR training
layout. Arrays are ``(x, y, z)`` NIfTI order with voxel axes towards the
patient's left, posterior and cranial (``('L', 'P', 'S')``).

* :mod:`~thoraxseg.data.phantom.anatomy` — per-patient parameters and shapes (mm).
* :mod:`~thoraxseg.data.phantom.generator` — intensities, partial volume, noise, files.
* :mod:`~thoraxseg.data.phantom.views` — the same patient on other grids and fields of view.
"""

from thoraxseg.data.phantom.anatomy import Anatomy, PatientParams, grid_for, sample_patient
from thoraxseg.data.phantom.generator import (
    SIZES,
    PhantomCase,
    corruption_matrix,
    course_indices,
    generate_case,
    generate_cohort,
)
from thoraxseg.data.phantom.views import VARIANTS, field_of_view_variants

__all__ = [
    "SIZES",
    "VARIANTS",
    "Anatomy",
    "PatientParams",
    "PhantomCase",
    "corruption_matrix",
    "course_indices",
    "field_of_view_variants",
    "generate_case",
    "generate_cohort",
    "grid_for",
    "sample_patient",
]
