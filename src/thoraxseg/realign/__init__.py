"""Label realignment: detect, estimate and undo a rigid transform applied to one organ's label.

Modules (imported on demand; nothing heavy is imported here):

* (below this package, in :mod:`~thoraxseg.data.transforms`: the course corruption ``M = C R C⁻¹ T`` and
  mask resampling, ``scipy.ndimage.affine_transform`` convention: output voxel → input voxel — the
  phantom generator needs them too);
* :mod:`~thoraxseg.realign.geometry` — rigid parametrisation, cropped resampling, angles, world matrices;
* :mod:`~thoraxseg.realign.estimate` — ``estimate_transform(moved, clean, label=2, method="sweep")``
  → the ``fix.json`` content (``sweep`` or ``elastix``);
* :mod:`~thoraxseg.realign.apply` — ``apply_transform_to_dataset(transform, data, out, label=2)``
  → per-patient rows, and ``label_air_fraction`` (the ``check`` heuristic);
* :mod:`~thoraxseg.realign.corrupt` — ``corrupt_dataset(data, out, label, rotation_deg, center, shift)``;
* :mod:`~thoraxseg.realign.fixfile` — reading/validating and writing ``fix.json``;
* :mod:`~thoraxseg.realign.figures` — ``overlay_png(image, before, after, clean, label, out)``;
* :mod:`~thoraxseg.realign.synthetic` — a small synthetic thorax for tests and benchmarks.
"""
