"""2D data for the slice-wise arms: windowing, square resize, slice cache, split, sampling, augmentation.

Conventions
-----------
* Volumes are ``(x, y, z)`` arrays (NIfTI order); slice ``k`` is ``array[:, :, k]``,
  an ``(x, y)`` image that the network sees as ``(H, W) = (x, y)``.
* **Cache**: slices are stored as ``HU / 1000`` (float16, 1–2 HU resolution), padded
  with air (−1000 HU) symmetrically to a square of side ``max(X, Y)`` so the aspect ratio
  is kept, then resized to ``size × size`` (bilinear with antialiasing for images, nearest
  for labels); :class:`SliceGeometry` records the padding so prediction can undo it
  exactly. Training slices live in memory (on the GPU when training on one), so an epoch
  reads no files.
* **Windowing** (per batch, :func:`apply_windows`): each window ``(low, high)`` in HU
  gives one input channel, ``(clip(hu, low, high) − centre) / half_width`` ∈ [−1, 1].
* **Determinism**: the order of slices in epoch ``e`` comes from ``(seed, e)``
  (:class:`EpochSampler`, a :class:`~torch.utils.data.DistributedSampler`), and the
  augmentation of slice ``i`` in epoch ``e`` from ``numpy.random.default_rng((seed, e, i))``
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
from thoraxseg.data.volume import load_image, load_label, same_geometry
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
    """How an ``(X, Y)`` slice maps onto the ``size × size`` network grid (pad to square, then resize).

    >>> g = SliceGeometry.of((120, 126), 64)
    >>> g.side, g.pad
    (126, (3, 3, 0, 0))
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


def to_network_grid(slices: torch.Tensor, geom: SliceGeometry, kind: str, fill: float = 0.0) -> torch.Tensor:
    """Pad ``(Z, X, Y)`` slices to square and resize to ``(Z, size, size)``.

    ``kind="image"``: bilinear with antialiasing, padding value ``fill``;
    ``kind="label"``: nearest neighbour, padding 0, integer output.
    """
    x0, x1, y0, y1 = geom.pad
    if kind == "label":
        t = F.pad(slices.to(torch.uint8), (y0, y1, x0, x1), value=0)
        if geom.side == geom.size:
            return t
        out = F.interpolate(t[:, None].float(), size=(geom.size, geom.size), mode="nearest-exact")
        return out[:, 0].round().to(torch.uint8)
    t = F.pad(slices.float(), (y0, y1, x0, x1), value=fill)
    if geom.side == geom.size:
        return t
    out = F.interpolate(t[:, None], size=(geom.size, geom.size), mode="bilinear", align_corners=False,
                        antialias=geom.side > geom.size)
    return out[:, 0]


def from_network_grid(maps: torch.Tensor, geom: SliceGeometry) -> torch.Tensor:
    """Inverse of :func:`to_network_grid` for ``(B, C, size, size)`` float maps → ``(B, C, X, Y)`` (bilinear)."""
    if geom.side != geom.size:
        maps = F.interpolate(maps, size=(geom.side, geom.side), mode="bilinear", align_corners=False)
    x0, _, y0, _ = geom.pad
    return maps[:, :, x0 : x0 + geom.shape[0], y0 : y0 + geom.shape[1]]


#: Slices are cached as HU divided by this (air = −1).
HU_UNIT: float = 1000.0


def volume_to_slices(array: np.ndarray, size: int) -> tuple[torch.Tensor, SliceGeometry]:
    """CT ``(X, Y, Z)`` in HU → ``(Z, size, size)`` float32 slices in ``HU / 1000`` on the network grid.

    HU are clipped to −1100…4000 first; the square padding is air (−1000 HU).
    """
    geom = SliceGeometry.of(array.shape[:2], size)
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


def labels_to_slices(array: np.ndarray, size: int) -> torch.Tensor:
    """Label ``(X, Y, Z)`` → ``(Z, size, size)`` uint8 (nearest neighbour)."""
    geom = SliceGeometry.of(array.shape[:2], size)
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
    images: torch.Tensor  # (Z, S, S) float16, HU / 1000
    labels: torch.Tensor  # (Z, S, S) uint8
    geometry: SliceGeometry
    label_volume: np.ndarray | None = None  # (X, Y, Z) uint8 at source resolution (validation only)


def load_case(case: Case, size: int, keep_volume: bool = False) -> CaseSlices:
    """Read and resize one labelled case. Raises InputError when image and label grids differ."""
    if case.label_path is None:
        raise InputError(case.image_path, "no GT label for this case")
    image = load_image(case.image_path)
    label = load_label(case.label_path)
    diff = same_geometry(image, label)
    if diff is not None:
        raise InputError(case.label_path, f"label grid differs from the image ({diff})")
    slices, geom = volume_to_slices(image.array, size)
    labels = labels_to_slices(label.array, size)
    return CaseSlices(case.patient_id, slices.to(torch.float16), labels, geom,
                      label.array if keep_volume else None)


def load_cases(cases: Sequence[Case], size: int, keep_volume: bool = False,
               description: str = "loading", threads: int = 2, show: bool = True) -> list[CaseSlices]:
    """:func:`load_case` for many cases (decompression in ``threads`` threads), with a progress bar."""
    out: list[CaseSlices | None] = [None] * len(cases)
    with make_progress() as progress:
        task = progress.add_task(description, total=len(cases), visible=show)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = {pool.submit(load_case, c, size, keep_volume): i for i, c in enumerate(cases)}
            for fut, i in futures.items():
                out[i] = fut.result()
                progress.advance(task)
    return [c for c in out if c is not None]


class SliceDataset(Dataset):
    """All slices of the training patients, cached in memory.

    Indexed by ``(slice_index, epoch)`` pairs (what :class:`EpochSampler` yields), it returns
    ``(image (1, S, S) float32, label (S, S) int64, slice_index, epoch)``; augmentation
    happens per batch in :class:`AugmentCollate`.
    """

    def __init__(self, cases: Sequence[CaseSlices]) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.images = torch.cat([c.images for c in cases])
        self.labels = torch.cat([c.labels for c in cases])
        self.patients = [c.patient_id for c in cases]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> SliceDataset:
        """Move the cached slices to ``device`` (e.g. the GPU, for :class:`DeviceBatches`); returns self."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        return self

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        return self.images[index][None].float(), self.labels[index].long(), int(index), int(epoch)


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
                                  "noise_dy")


class AugmentCollate:
    """Stack a batch and draw each slice's augmentation parameters from ``(seed, epoch, slice_index)``.

    Returns ``(images (B, 1, S, S), labels (B, S, S), params (B, 9))``; the parameters are
    applied by :class:`BatchAugmenter` on the training device (GPU when training on one),
    so the loader only indexes and stacks cached slices. With ``cfg=None`` or
    ``cfg.enabled=False`` ``params`` is None.
    """

    def __init__(self, cfg: AugmentConfig | None, seed: int, noise_bank: int = 16) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.noise_bank = int(noise_bank)

    def params(self, index: int, epoch: int) -> list[float]:
        """The augmentation parameters of one slice, in :data:`PARAM_COLUMNS` order.

        Spatial parameters are the identity with probability ``1 − prob``; translations are in
        ``affine_grid`` units (−1…1 = the whole slice); the noise is field ``noise_k`` of the
        bank, cyclically shifted by ``(noise_dx, noise_dy)`` pixels (as fractions of the side).
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
        return [angle, scale, tx, ty, contrast, shift, k, dx, dy]

    def batch_params(self, keys: Sequence[tuple[int, int]]) -> torch.Tensor | None:
        """``(B, 9)`` parameters for ``(slice_index, epoch)`` pairs (None when augmentation is off)."""
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
            idx = torch.tensor([i for i, _ in chunk], device=device)
            images = self.dataset.images.index_select(0, idx)[:, None].float()
            labels = self.dataset.labels.index_select(0, idx).long()
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
        images = apply_windows(images, self.windows)
        return images * contrast.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1), labels
