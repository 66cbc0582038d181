"""Export of label volumes to the formats clinics and viewers read, and ``thoraxseg segment``.

- :mod:`~thoraxseg.export.codes` — organ names, SNOMED CT codes and colours shared by every format.
- :mod:`~thoraxseg.export.segnrrd` — 3D Slicer ``.seg.nrrd`` (one named, coloured segment per organ).
- :mod:`~thoraxseg.export.dicomseg` — DICOM Segmentation (highdicom) referencing the source CT series.
- :mod:`~thoraxseg.export.rtstruct` — DICOM RT Structure Set (pydicom; planar contours in LPS mm).
- :mod:`~thoraxseg.export.summary` — per-organ volumes, HU, components and QC flags.
- :mod:`~thoraxseg.export.preview` — axial/coronal/sagittal overlay figure (radiological view).
- :mod:`~thoraxseg.export.segment` — the ``segment`` pipeline (input → model → every output).

This package sits above :mod:`thoraxseg.inference` (it calls the prediction entry point) and
below the CLI.
"""
