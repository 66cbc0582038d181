"""2D data for the slice-wise arms: windowing, resampling to a fixed pixel size, slice cache, split, sampling, augmentation.

Conventions
-----------
* Volumes are ``(x, y, z)`` arrays (NIfTI order); slice ``k`` is ``array[:, :, k]``,
  an ``(x, y)`` image that the network sees as ``(H, W) = (x, y)``.
* **Pixel size** (:class:`SpacingGeometry`, the default): every slice is resampled to one
  in-plane pixel size ``spacing_mm`` (bilinear, antialiased when shrinking, for images;
  nearest for labels), so an organ has the same size in pixels whatever the scan's field of
  view or spacing, then padded with air (−1000 HU) to at least ``image_size × image_size``
  (a multiple of the network's size multiple). Nothing is cut away: prediction runs the
  whole resampled slice (the networks are fully convolutional) and inverts exactly that.
  Training samples ``image_size × image_size`` crops of the resampled slices (seeded,
  biased to contain the body), so the grid and the field of view are independent.
  :class:`SliceGeometry` is the pre-0.2 policy (``preprocessing: square``): pad to a square,
  resize to ``image_size`` — the pixel size then depends on each scan's field of view; runs
  made before the change still predict with it.
* **Cache**: slices are stored as ``HU / 1000`` (float16, 1–2 HU resolution). Training
  slices live in memory (on the GPU when training on one), so an epoch reads no files.
* **Windowing** (per batch, :func:`apply_windows`): each window ``(low, high)`` in HU
  gives one input channel, ``(clip(hu, low, high) − centre) / half_width`` ∈ [−1, 1].
* **Determinism**: the order of slices in epoch ``e`` comes from ``(seed, e)``
  (:class:`EpochSampler`, a :class:`~torch.utils.data.DistributedSampler`), and the crop
  and augmentation of slice ``i`` in epoch ``e`` from ``numpy.random.default_rng((seed, e, i, …))``
  — independent of worker count, process count and resumption.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from thoraxseg.data.layout import Case
from thoraxseg.data.volume import load_image, load_label, read_geometry, same_geometry
from thoraxseg.errors import InputError
from thoraxseg.training.config import AugmentConfig
from thoraxseg.utils.progress import make_progress


def window_ct(hu: np.ndarray | torch.Tensor, window: Sequence[float] = (-1000.0, 1000.0)) -> torch.Tensor:
    """Clip HU to ``window = (low, high)`` and map linearly to [−1, 1] (float32 tensor, same shape).

    >>> window_ct(np.array([-2000, -1000, 0, 1000, 3000])).tolist()
    [-1.0, -1.0, 0.0, 1.0, 1.0]
    """
    low, high = float(window[0]), float(window[1])
    t = (hu if isinstance(hu, torch.Tensor) else torch.as_tensor(np.asarray(hu))).float()
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    return (t.clamp(low, high) - centre) / half


@dataclass(frozen=True)
class SliceGeometry:
    """The pre-0.2 policy: an ``(X, Y)`` slice padded to a square and resized to ``size × size``.

    The pixel size in mm then depends on the field of view (``preprocessing: square``).

    >>> g = SliceGeometry.of((120, 126), 64)
    >>> g.side, g.pad, g.grid
    (126, (3, 3, 0, 0), (64, 64))
    """

    shape: tuple[int, int]
    size: int
    side: int
    pad: tuple[int, int, int, int]  # (x_before, x_after, y_before, y_after)

    @classmethod
    def of(cls, shape: Sequence[int], size: int) -> SliceGeometry:
        x, y = int(shape[0]), int(shape[1])
        side = max(x, y)
        px, py = side - x, side - y
        return cls((x, y), int(size), side, (px // 2, px - px // 2, py // 2, py - py // 2))

    @property
    def grid(self) -> tuple[int, int]:
        """Network-grid size ``(GX, GY)`` in pixels."""
        return (self.size, self.size)

    def to_grid(self, slices: torch.Tensor, kind: str, fill: float = 0.0) -> torch.Tensor:
        """``(Z, X, Y)`` → ``(Z, size, size)`` (see :func:`to_network_grid`)."""
        x0, x1, y0, y1 = self.pad
        if kind == "label":
            t = F.pad(slices.to(torch.uint8), (y0, y1, x0, x1), value=0)
            return t if self.side == self.size else _resize_labels(t, self.grid)
        t = F.pad(slices.float(), (y0, y1, x0, x1), value=fill)
        return t if self.side == self.size else _resize_image(t, self.grid)

    def from_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, C, size, size)`` float maps → ``(B, C, X, Y)`` (bilinear)."""
        if self.side != self.size:
            maps = F.interpolate(maps, size=(self.side, self.side), mode="bilinear", align_corners=False)
        x0, _, y0, _ = self.pad
        return maps[:, :, x0 : x0 + self.shape[0], y0 : y0 + self.shape[1]]


@dataclass(frozen=True)
class SpacingGeometry:
    """An ``(X, Y)`` slice of pixel size ``pixel_mm`` resampled to ``spacing_mm`` and padded with air.

    The resampled slice has ``round(X · sx / spacing_mm) × round(Y · sy / spacing_mm)`` pixels
    (so its pixel size equals ``spacing_mm`` up to half a pixel over the whole field of view, as
    in nnU-Net's resampling) and is centred on a grid of at least ``size × size`` pixels, each
    side a multiple of ``multiple``. Nothing is cropped: a slice larger than ``size`` gives a
    larger grid.

    >>> g = SpacingGeometry.of((512, 512), (0.8, 0.8), 3.2, 128, 16)
    >>> g.resampled, g.grid, g.offset
    ((128, 128), (128, 128), (0, 0))
    >>> g = SpacingGeometry.of((120, 126), (1.5, 1.5), 3.2, 128, 16)  # a 180 × 189 mm crop
    >>> g.resampled, g.grid, g.offset
    ((56, 59), (128, 128), (36, 34))
    >>> SpacingGeometry.of((512, 512), (1.37, 1.37), 3.2, 128, 16).grid  # a 700 mm field of view
    (224, 224)
    """

    shape: tuple[int, int]
    resampled: tuple[int, int]
    grid: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def of(cls, shape: Sequence[int], pixel_mm: Sequence[float], spacing_mm: float, size: int,
           multiple: int = 1) -> SpacingGeometry:
        shp = (int(shape[0]), int(shape[1]))
        res = tuple(max(1, round(n * float(s) / float(spacing_mm))) for n, s in zip(shp, pixel_mm[:2], strict=True))
        m = max(1, int(multiple))
        grid = tuple(max(int(size), -(-r // m) * m) for r in res)
        offset = tuple((g - r) // 2 for g, r in zip(grid, res, strict=True))
        return cls(shp, res, grid, offset)  # type: ignore[arg-type]

    def to_grid(self, slices: torch.Tensor, kind: str, fill: float = 0.0) -> torch.Tensor:
        """``(Z, X, Y)`` → ``(Z, GX, GY)`` (see :func:`to_network_grid`)."""
        (ox, oy), (rx, ry), (gx, gy) = self.offset, self.resampled, self.grid
        pad = (oy, gy - ry - oy, ox, gx - rx - ox)
        if kind == "label":
            t = slices.to(torch.uint8)
            t = t if self.resampled == self.shape else _resize_labels(t, self.resampled)
            return F.pad(t, pad, value=0)
        t = slices.float()
        t = t if self.resampled == self.shape else _resize_image(t, self.resampled)
        return F.pad(t, pad, value=fill)

    def from_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, C, GX, GY)`` float maps → ``(B, C, X, Y)``: crop the padding, resample back (bilinear)."""
        (ox, oy), (rx, ry) = self.offset, self.resampled
        maps = maps[:, :, ox : ox + rx, oy : oy + ry]
        if self.resampled != self.shape:
            maps = F.interpolate(maps, size=self.shape, mode="bilinear", align_corners=False)
        return maps


#: Either way of putting a slice on the network grid.
Geometry = SliceGeometry | SpacingGeometry


def slice_geometry(shape: Sequence[int], pixel_mm: Sequence[float], size: int, spacing_mm: float | None,
                   multiple: int = 1) -> Geometry:
    """The geometry of a run's preprocessing: :class:`SpacingGeometry` at ``spacing_mm`` (mm), or the
    pre-0.2 :class:`SliceGeometry` when ``spacing_mm`` is None."""
    if spacing_mm is None:
        return SliceGeometry.of(shape, size)
    return SpacingGeometry.of(shape, pixel_mm, spacing_mm, size, multiple)


def _resize_image(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(Z, X, Y)`` float → ``(Z, *size)``: bilinear, antialiased where it shrinks."""
    shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[:, 0]


def _resize_labels(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(Z, X, Y)`` uint8 → ``(Z, *size)`` nearest neighbour."""
    out = F.interpolate(t[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].round().to(torch.uint8)


def to_network_grid(slices: torch.Tensor, geom: Geometry, kind: str, fill: float = 0.0) -> torch.Tensor:
    """Put ``(Z, X, Y)`` slices on the network grid ``(Z, GX, GY)``.

    ``kind="image"``: bilinear (antialiased when shrinking), padding value ``fill``;
    ``kind="label"``: nearest neighbour, padding 0, integer output.
    """
    return geom.to_grid(slices, kind, fill)


def from_network_grid(maps: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Inverse of :func:`to_network_grid` for ``(B, C, GX, GY)`` float maps → ``(B, C, X, Y)`` (bilinear)."""
    return geom.from_grid(maps)


def grid_text(size: int, spacing_mm: float | None) -> str:
    """How a run's slices reach the network, in words (logs, plots, reports).

    >>> grid_text(128, 3.125), grid_text(128, None)
    ('128×128 crops at 3.125 mm/pixel', '128×128 square-resized slices')
    """
    if spacing_mm is None:
        return f"{size}×{size} square-resized slices"
    return f"{size}×{size} crops at {spacing_mm:g} mm/pixel"


def derive_spacing_mm(cases: Sequence[Case], size: int) -> float:
    """The default pixel size (mm): the median in-plane field of view of ``cases`` over ``size``.

    The field of view of a case is ``max(X · sx, Y · sy)`` (mm), read from the image headers
    only; the median case then just fills ``size × size`` pixels. Rounded to 0.001 mm.
    """
    fovs = []
    for case in cases:
        grid = read_geometry(case.image_path)
        shape, spacing = grid.shape, grid.spacing
        fovs.append(max(shape[0] * spacing[0], shape[1] * spacing[1]))
    if not fovs:
        raise InputError(".", "no training cases to derive spacing_mm from")
    return round(float(np.median(fovs)) / int(size), 3)


#: Slices are cached as HU divided by this (air = −1).
HU_UNIT: float = 1000.0


def volume_to_slices(array: np.ndarray, size: int | Geometry) -> tuple[torch.Tensor, Geometry]:
    """CT ``(X, Y, Z)`` in HU → ``(Z, GX, GY)`` float32 slices in ``HU / 1000`` on the network grid.

    ``size``: a :data:`Geometry`, or an int for the pre-0.2 square resize to ``size × size``.
    HU are clipped to −1100…4000 first; the padding is air (−1000 HU).
    """
    geom = SliceGeometry.of(array.shape[:2], size) if isinstance(size, int) else size
    hu = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 2, 0))).float()
    slices = hu.clamp(-1100.0, 4000.0) / HU_UNIT
    return to_network_grid(slices, geom, "image", fill=-1.0), geom


def apply_windows(slices: torch.Tensor, windows: Sequence[Sequence[float]]) -> torch.Tensor:
    """``(B, S, S)`` or ``(B, 1, S, S)`` slices in ``HU / 1000`` → ``(B, len(windows), S, S)`` network input.

    >>> apply_windows(torch.tensor([[[-1.0, -0.9, 0.04]]]), [(-1000, 1000), (-1000, -800)]).tolist()
    [[[[-1.0, -0.8999999761581421, 0.03999999910593033]], [[-1.0, 0.0, 1.0]]]]
    """
    x = slices.float()
    if x.dim() == 3:
        x = x[:, None]
    hu = x * HU_UNIT
    return torch.cat([window_ct(hu, w) for w in windows], dim=1)


def labels_to_slices(array: np.ndarray, size: int | Geometry) -> torch.Tensor:
    """Label ``(X, Y, Z)`` → ``(Z, GX, GY)`` uint8 (nearest neighbour); ``size`` as in :func:`volume_to_slices`."""
    geom = SliceGeometry.of(array.shape[:2], size) if isinstance(size, int) else size
    return to_network_grid(torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 2, 0))), geom, "label")


def split_cases(
    cases: Sequence[Case], val_fraction: float, seed: int, val_cases: Sequence[str] = ()
) -> tuple[list[Case], list[Case]]:
    """Patient-level train/validation split, deterministic from ``seed``.

    ``val_cases`` (patient IDs) takes precedence; otherwise ``round(val_fraction · n)``
    patients (at least one, and at least one left for training) are drawn with
    ``numpy.random.default_rng(seed)``. Both lists keep the input order.

    >>> from pathlib import Path
    >>> cs = [Case(f"Patient_{i:02d}", Path(f"{i}.nii.gz")) for i in range(1, 11)]
    >>> tr, va = split_cases(cs, 0.2, seed=0)
    >>> len(tr), len(va), {c.patient_id for c in tr} & {c.patient_id for c in va}
    (8, 2, set())
    """
    if len(cases) < 2:
        raise InputError(cases[0].image_path.parent if cases else ".",
                         f"need at least 2 labelled patients for a train/validation split, found {len(cases)}")
    if val_cases:
        wanted = set(val_cases)
        missing = sorted(wanted - {c.patient_id for c in cases})
        if missing:
            raise InputError(cases[0].image_path.parent, f"validation patients not found: {', '.join(missing)}")
        val = [c for c in cases if c.patient_id in wanted]
    else:
        n_val = min(max(1, round(val_fraction * len(cases))), len(cases) - 1)
        chosen = set(np.random.default_rng(seed).choice(len(cases), size=n_val, replace=False).tolist())
        val = [c for i, c in enumerate(cases) if i in chosen]
    train = [c for c in cases if c not in val]
    if not train:
        raise InputError(cases[0].image_path.parent, "no training patients left after the validation split")
    return train, val


@dataclass
class CaseSlices:
    """One preprocessed patient: network-grid slices plus what is needed to stitch and score in 3D."""

    patient_id: str
    images: torch.Tensor  # (Z, GX, GY) float16, HU / 1000
    labels: torch.Tensor  # (Z, GX, GY) uint8
    geometry: Geometry
    label_volume: np.ndarray | None = None  # (X, Y, Z) uint8 at source resolution (validation only)


def load_case(case: Case, size: int, keep_volume: bool = False, spacing_mm: float | None = None,
              multiple: int = 1) -> CaseSlices:
    """Read one labelled case onto the network grid (:func:`slice_geometry`).

    Raises InputError when image and label grids differ.
    """
    if case.label_path is None:
        raise InputError(case.image_path, "no GT label for this case")
    image = load_image(case.image_path)
    label = load_label(case.label_path)
    diff = same_geometry(image, label)
    if diff is not None:
        raise InputError(case.label_path, f"label grid differs from the image ({diff})")
    geom = slice_geometry(image.shape[:2], image.spacing[:2], size, spacing_mm, multiple)
    slices, _ = volume_to_slices(image.array, geom)
    labels = labels_to_slices(label.array, geom)
    return CaseSlices(case.patient_id, slices.to(torch.float16), labels, geom,
                      label.array if keep_volume else None)


def load_cases(cases: Sequence[Case], size: int, keep_volume: bool = False,
               description: str = "loading", threads: int = 2, show: bool = True,
               spacing_mm: float | None = None, multiple: int = 1) -> list[CaseSlices]:
    """:func:`load_case` for many cases (decompression in ``threads`` threads), with a progress bar."""
    out: list[CaseSlices | None] = [None] * len(cases)
    with make_progress() as progress:
        task = progress.add_task(description, total=len(cases), visible=show)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = {pool.submit(load_case, c, size, keep_volume, spacing_mm, multiple): i
                       for i, c in enumerate(cases)}
            for fut, i in futures.items():
                out[i] = fut.result()
                progress.advance(task)
    return [c for c in out if c is not None]


#: A pixel counts as body for the crop bias when above this (HU / 1000, i.e. −500 HU).
BODY_THRESHOLD: float = -0.5


class SliceDataset(Dataset):
    """All slices of the training patients, cached in memory, served as ``crop × crop`` crops.

    Every case's slices are centred on one canvas (the largest network grid among the cases,
    padded with air and background). Indexed by ``(slice_index, epoch)`` pairs (what
    :class:`EpochSampler` yields), it returns ``(image (1, C, C) float32, label (C, C) int64,
    slice_index, epoch)`` for ``C = crop``: a crop whose centre is drawn uniformly inside the
    slice's body box (pixels above −500 HU; the whole canvas where there is none), clipped to
    the canvas, from ``default_rng((seed, epoch, slice_index, 0xC0))``. With ``crop=None`` (or a
    canvas of the crop's size) every slice is served whole. Augmentation happens per batch in
    :class:`AugmentCollate`.
    """

    def __init__(self, cases: Sequence[CaseSlices], crop: int | None = None, seed: int = 0) -> None:
        if not cases:
            raise ValueError("no training cases")
        gx = max(int(c.images.shape[1]) for c in cases)
        gy = max(int(c.images.shape[2]) for c in cases)
        self.images = torch.cat([_centre_on(c.images, (gx, gy), -1.0) for c in cases])
        self.labels = torch.cat([_centre_on(c.labels, (gx, gy), 0) for c in cases])
        self.patients = [c.patient_id for c in cases]
        self.crop = (gx, gy) if crop is None else (int(crop), int(crop))
        if self.crop[0] > gx or self.crop[1] > gy:
            raise ValueError(f"crop {crop} larger than the canvas {gx}×{gy}")
        self.seed = int(seed)
        self.boxes = _body_boxes(self.images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> SliceDataset:
        """Move the cached slices to ``device`` (e.g. the GPU, for :class:`DeviceBatches`); returns self."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        return self

    def crop_origin(self, index: int, epoch: int) -> tuple[int, int]:
        """Top-left pixel ``(x, y)`` of slice ``index``'s crop in ``epoch`` (see the class docstring)."""
        cx, cy = self.crop
        gx, gy = int(self.images.shape[1]), int(self.images.shape[2])
        if (cx, cy) == (gx, gy):
            return 0, 0
        x0, x1, y0, y1 = (int(v) for v in self.boxes[index])
        rng = np.random.default_rng((self.seed, epoch, index, 0xC0))
        mx, my = rng.uniform(x0, x1), rng.uniform(y0, y1)
        return (int(np.clip(round(mx - cx / 2), 0, gx - cx)), int(np.clip(round(my - cy / 2), 0, gy - cy)))

    def item(self, index: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(C, C)`` image (HU / 1000) and label crop of slice ``index`` in ``epoch`` (on the cache's device)."""
        ox, oy = self.crop_origin(index, epoch)
        cx, cy = self.crop
        return (self.images[index, ox : ox + cx, oy : oy + cy],
                self.labels[index, ox : ox + cx, oy : oy + cy])

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        image, label = self.item(int(index), int(epoch))
        return image[None].float(), label.long(), int(index), int(epoch)


def _centre_on(t: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Pad ``(Z, X, Y)`` centred to ``(Z, *size)`` with ``fill``."""
    px, py = size[0] - int(t.shape[1]), size[1] - int(t.shape[2])
    if px == 0 and py == 0:
        return t
    return F.pad(t, (py // 2, py - py // 2, px // 2, px - px // 2), value=fill)


def _body_boxes(images: torch.Tensor) -> np.ndarray:
    """``(N, 4)`` int ``(x0, x1, y0, y1)`` box of the pixels above :data:`BODY_THRESHOLD` per slice."""
    body = images.float() > BODY_THRESHOLD
    rows, cols = body.any(dim=2).numpy(), body.any(dim=1).numpy()  # (N, X), (N, Y)
    n, gx, gy = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    boxes = np.tile(np.array([0, gx, 0, gy], np.int64), (n, 1))
    for i in np.flatnonzero(rows.any(axis=1)):
        xs, ys = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        boxes[i] = (xs[0], xs[-1] + 1, ys[0], ys[-1] + 1)
    return boxes


class EpochSampler(DistributedSampler):
    """Seeded per-epoch order of slice indices, sharded over processes.

    A :class:`~torch.utils.data.DistributedSampler` (one process: ``num_replicas=1``)
    whose permutation for epoch ``e`` depends only on ``(seed, e)``; with
    ``samples_per_epoch`` it takes that many indices of the permutation (cycling when
    larger than the dataset). Yields ``(index, epoch)`` pairs.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0,
                 samples_per_epoch: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        n = samples_per_epoch if samples_per_epoch is not None else len(dataset)  # type: ignore[arg-type]
        self.total = math.ceil(n / num_replicas) * num_replicas
        self.num_samples = self.total // num_replicas
        self.total_size = self.total

    def indices(self, epoch: int) -> list[int]:
        """The global (all-process) slice order of ``epoch``."""
        n = len(self.dataset)  # type: ignore[arg-type]
        rng = np.random.default_rng((self.seed, epoch))
        reps = math.ceil(self.total / n)
        order = np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.total]
        return order.tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        mine = self.indices(self.epoch)[self.rank : self.total : self.num_replicas]
        return iter([(i, self.epoch) for i in mine])

    def __len__(self) -> int:
        return self.num_samples


#: Columns of the per-slice augmentation parameter table (see :meth:`AugmentCollate.params`).
PARAM_COLUMNS: tuple[str, ...] = ("angle", "scale", "tx", "ty", "contrast", "shift", "noise_k", "noise_dx",
                                  "noise_dy", "fov", "fov_w", "fov_h", "fov_dx", "fov_dy")


class AugmentCollate:
    """Stack a batch and draw each slice's augmentation parameters from ``(seed, epoch, slice_index)``.

    Returns ``(images (B, 1, S, S), labels (B, S, S), params (B, 14))``; the parameters are
    applied by :class:`BatchAugmenter` on the training device (GPU when training on one),
    so the loader only indexes and stacks cached slices. With ``cfg=None`` or
    ``cfg.enabled=False`` ``params`` is None. ``fov_min``: the smallest simulated field of
    view as a fraction of the crop side (``cfg.fov_min_mm / (S · spacing_mm)``); None turns the
    field-of-view augmentation off (square-resized slices have no fixed pixel size).
    """

    def __init__(self, cfg: AugmentConfig | None, seed: int, noise_bank: int = 16,
                 fov_min: float | None = None) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.noise_bank = int(noise_bank)
        self.fov_min = None if fov_min is None else float(min(1.0, fov_min))

    def params(self, index: int, epoch: int) -> list[float]:
        """The augmentation parameters of one slice, in :data:`PARAM_COLUMNS` order.

        Spatial parameters are the identity with probability ``1 − prob``; translations are in
        ``affine_grid`` units (−1…1 = the whole slice); the noise is field ``noise_k`` of the
        bank, cyclically shifted by ``(noise_dx, noise_dy)`` pixels (as fractions of the side).
        The field of view (``fov`` 1 with probability ``fov_prob``, else 0) is a rectangle of
        ``fov_w × fov_h`` (fractions of the side) centred ``(fov_dx, fov_dy)`` (fractions of the
        side) from the slice's organs; ``fov_w`` is log-uniform in ``[fov_min, 1]`` and
        ``fov_h / fov_w`` log-uniform in ``[0.8, 1.25]`` (clipped to ``[fov_min, 1]``).
        """
        cfg = self.cfg
        assert cfg is not None
        rng = np.random.default_rng((self.seed, epoch, index, 0xA06))
        spatial = bool(rng.random() < cfg.prob)
        angle = float(np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)))
        scale = float(rng.uniform(*cfg.scale))
        tx, ty = (float(v) * 2 for v in rng.uniform(-cfg.translate, cfg.translate, 2))
        if not spatial:
            angle, scale, tx, ty = 0.0, 1.0, 0.0, 0.0
        contrast = float(rng.uniform(*cfg.intensity_scale))
        shift = float(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift))
        k = float(rng.integers(0, self.noise_bank))
        dx, dy = (float(v) for v in rng.random(2))
        fov = [0.0, 1.0, 1.0, 0.0, 0.0]
        if self.fov_min is not None and rng.random() < cfg.fov_prob:
            # side log-uniform (small, cardiac-like fields of view as often as large ones), nearly square
            side, aspect = np.exp(rng.uniform((np.log(self.fov_min), np.log(0.8)), (0.0, np.log(1.25))))
            w, h = float(side), float(np.clip(side * aspect, self.fov_min, 1.0))
            fov = [1.0, w, h, *(float(v) for v in rng.uniform(-0.1, 0.1, 2))]
        return [angle, scale, tx, ty, contrast, shift, k, dx, dy, *fov]

    def batch_params(self, keys: Sequence[tuple[int, int]]) -> torch.Tensor | None:
        """``(B, 14)`` parameters for ``(slice_index, epoch)`` pairs (None when augmentation is off)."""
        if self.cfg is None or not self.cfg.enabled:
            return None
        return torch.tensor([self.params(i, e) for i, e in keys], dtype=torch.float64)

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor, int, int]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        images = torch.stack([b[0] for b in batch])
        labels = torch.stack([b[1] for b in batch])
        return images, labels, self.batch_params([(b[2], b[3]) for b in batch])


class DeviceBatches:
    """Batches gathered directly from a :class:`SliceDataset` held in GPU memory (no DataLoader).

    Same order and parameters as the DataLoader path (:class:`EpochSampler` +
    :class:`AugmentCollate`); loading a batch is one index gather on the device.
    """

    def __init__(self, dataset: SliceDataset, sampler: EpochSampler, batch_size: int,
                 collate: AugmentCollate) -> None:
        self.dataset, self.sampler, self.batch_size, self.collate = dataset, sampler, batch_size, collate

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        keys = list(self.sampler)
        device = self.dataset.images.device
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            if self.dataset.crop == tuple(self.dataset.images.shape[1:]):
                idx = torch.tensor([i for i, _ in chunk], device=device)
                images = self.dataset.images.index_select(0, idx)[:, None].float()
                labels = self.dataset.labels.index_select(0, idx).long()
            else:
                pairs = [self.dataset.item(i, e) for i, e in chunk]
                images = torch.stack([p[0] for p in pairs])[:, None].float()
                labels = torch.stack([p[1] for p in pairs]).long()
            yield images, labels, self.collate.batch_params(chunk)


class BatchAugmenter:
    """Turn a batch of cached slices into network input: augment (training) and window, on the batch's device.

    With augmentation: spatial transform (rotation about the slice centre, isotropic scale,
    translation) by one batched :func:`torch.nn.functional.affine_grid` / ``grid_sample`` —
    bilinear for images, nearest for labels; outside the slice: air and background — and
    Gaussian noise ``noise_std`` (in HU/1000) from a fixed bank of seeded fields shifted per
    slice (no random numbers are drawn here); then the windows (:func:`apply_windows`); then
    contrast ``x·c`` and offset ``+s`` on the windowed channels.
    """

    def __init__(self, cfg: AugmentConfig | None, seed: int, size: int,
                 windows: Sequence[Sequence[float]] = ((-1000.0, 1000.0),), device: torch.device | str = "cpu",
                 bank: int = 16) -> None:
        self.cfg = cfg
        self.windows = [tuple(float(v) for v in w) for w in windows]
        self.enabled = cfg is not None and cfg.enabled
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence((seed, 0xB4)).generate_state(1)[0]))
        self.noise = torch.randn(bank, size, size, generator=gen).to(device) if self.enabled else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, params: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if params is None or not self.enabled:
            return apply_windows(images, self.windows), labels
        assert self.cfg is not None and self.noise is not None
        p = params.to(images.device, torch.float32)
        angle, scale, tx, ty, contrast, shift = (p[:, i] for i in range(6))
        if bool(((angle != 0) | (scale != 1) | (tx != 0) | (ty != 0)).any()):
            c, s = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([c, -s, tx], 1), torch.stack([s, c, ty], 1)], 1)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            # zero padding of (x + 1) = air (−1) outside the slice
            images = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros",
                                   align_corners=False) - 1.0
            labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)[:, 0].round().long()
        if self.cfg.noise_std > 0:
            side = images.shape[-1]
            ar = torch.arange(side, device=images.device)
            k = p[:, 6].long()
            rows = (ar[None, :] - (p[:, 7] * side).long()[:, None]) % side  # = torch.roll by (dx, dy)
            cols = (ar[None, :] - (p[:, 8] * side).long()[:, None]) % side
            noise = self.noise[k[:, None, None], rows[:, :, None], cols[:, None, :]]
            images = images + self.cfg.noise_std * noise[:, None]
        if bool((p[:, 9] > 0).any()):
            images, labels = _field_of_view(images, labels, p[:, 9:14])
        images = apply_windows(images, self.windows)
        return images * contrast.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1), labels


def _field_of_view(images: torch.Tensor, labels: torch.Tensor, fov: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Air (−1) and background outside each slice's field-of-view rectangle (``fov``: (B, 5), see
    :meth:`AugmentCollate.params`), centred on the slice's organ pixels (the slice centre where it has none)."""
    side_x, side_y = images.shape[-2], images.shape[-1]
    ax = torch.arange(side_x, device=images.device, dtype=torch.float32)
    ay = torch.arange(side_y, device=images.device, dtype=torch.float32)
    organ = (labels > 0).float()
    count = organ.sum(dim=(1, 2))
    cx = torch.where(count > 0, (organ.sum(2) * ax).sum(1) / count.clamp(min=1), torch.full_like(count, side_x / 2))
    cy = torch.where(count > 0, (organ.sum(1) * ay).sum(1) / count.clamp(min=1), torch.full_like(count, side_y / 2))
    cx, cy = cx + fov[:, 3] * side_x, cy + fov[:, 4] * side_y
    half_w, half_h = fov[:, 1] * side_x / 2, fov[:, 2] * side_y / 2
    inside_x = (ax[None] >= (cx - half_w)[:, None]) & (ax[None] < (cx + half_w)[:, None])
    inside_y = (ay[None] >= (cy - half_h)[:, None]) & (ay[None] < (cy + half_h)[:, None])
    keep = (inside_x[:, :, None] & inside_y[:, None, :]) | (fov[:, 0] <= 0)[:, None, None]
    return torch.where(keep[:, None], images, torch.full_like(images, -1.0)), torch.where(keep, labels, 0)
