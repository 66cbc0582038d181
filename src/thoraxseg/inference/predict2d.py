"""Slice-wise prediction of the 2D arms, stitched into a volume with the source geometry.

Each axial slice ``array[:, :, k]`` (``(x, y, z)`` order) is resampled to the run's pixel
size ``spacing_mm``, padded with air to at least the training crop size and windowed exactly
as in training (:mod:`thoraxseg.training.data2d`); the whole resampled slice goes through the
network (fully convolutional: nothing of the scan is cut away, whatever its field of view).
The softmax probabilities are cropped and resampled back to the source in-plane size
(bilinear) *before* the arg-max, and the labels ``(x, y)`` are written into slice ``k`` of a
uint8 volume on the source grid. Runs made before 0.2 (no ``preprocessing`` in their config)
use their square resize, with a note. Slices go through the network in batches.
Connected-component post-processing
(:func:`~thoraxseg.data.postprocess.keep_largest_component`) is on by default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from thoraxseg.data.layout import discover_cases
from thoraxseg.data.postprocess import Postprocess, clean_up
from thoraxseg.data.volume import load_image, save_label
from thoraxseg.errors import InputError
from thoraxseg.networks import SIZE_MULTIPLE, build_model
from thoraxseg.training.data2d import (
    grid_text,
    slice_geometry,
    volume_to_slices,
)
from thoraxseg.training.forward import predict_slices
from thoraxseg.utils.progress import console, make_progress
from thoraxseg.utils.settings import torch_device


def predict_array(
    model: nn.Module,
    ct: np.ndarray,
    image_size: int,
    windows: Sequence[Sequence[float]] = ((-1000.0, 1000.0),),
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
    on_batch: Callable[[int], None] | None = None,
    *,
    pixel_mm: Sequence[float] | None = None,
    spacing_mm: float | None = None,
    multiple: int = 1,
) -> np.ndarray:
    """Predict a CT array ``(X, Y, Z)`` in HU → labels ``(X, Y, Z)`` uint8 (no post-processing).

    With ``spacing_mm`` (the run's pixel size, mm) each slice of in-plane voxel size ``pixel_mm``
    (mm) is resampled to it and padded to at least ``image_size`` (sides a multiple of
    ``multiple``); without, the pre-0.2 square resize to ``image_size``.
    """
    if spacing_mm is not None and pixel_mm is None:
        raise ValueError("pixel_mm (the CT's in-plane voxel size) is needed with spacing_mm")
    geom = slice_geometry(ct.shape[:2], pixel_mm or (1.0, 1.0), image_size, spacing_mm, multiple)
    slices, geom = volume_to_slices(ct, geom)
    labels, _ = predict_slices(model, slices, geom, windows, batch_size, device, amp, on_batch=on_batch)
    return labels


def run_spacing_mm(cfg: Mapping[str, Any]) -> float | None:
    """The pixel size (mm) a run's slices were resampled to; None for a square-resize run.

    Runs made before 0.2 have no ``preprocessing`` in their config: they used the square resize.
    """
    if cfg.get("preprocessing", "square") == "square":
        return None
    value = cfg.get("spacing_mm")
    if value is None:
        raise InputError("config.yaml", "preprocessing: spacing but no spacing_mm in the run's config")
    return float(value)


def load_run_model(run: str | Path, checkpoint: str = "best", device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load a trained 2D network and its resolved config from a run folder.

    ``checkpoint``: ``best`` (``best.pt``, falling back to ``last.pt`` when no
    validation improvement was recorded) or ``last`` (``latest``/``final``, nnU-Net's names, mean the
    same), or a path to a ``.pt`` file.
    """
    run = Path(run)
    if checkpoint in ("latest", "final"):  # nnU-Net's names for the same checkpoint
        checkpoint = "last"
    if checkpoint in ("best", "last"):
        candidates = [run / "best.pt", run / "last.pt"] if checkpoint == "best" else [run / "last.pt"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise InputError(candidates[0], "no checkpoint in this run folder (train it first)")
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt/truncated checkpoint
        raise InputError(path, f"unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise InputError(path, "not a thoraxseg 2D checkpoint (missing model/config)")
    cfg = state["config"]
    model = build_model(cfg["model"], in_channels=len(cfg["windows"]), width=cfg["width"],
                        dropout=cfg.get("dropout", 0.1))
    model.load_state_dict(state["model"])
    dev = torch_device(device)
    return model.to(dev).eval(), cfg


def predict_2d(
    run: str | Path,
    images: str | Path,
    out: str | Path,
    postprocess: Postprocess = True,
    device: str = "cpu",
    batch_size: int = 32,
    checkpoint: str = "best",
    amp: bool | None = None,
) -> list[Path]:
    """Predict every case under ``images`` with a 2D run; write ``out/Patient_XX.nii.gz`` (uint8, source grid).

    Parameters
    ----------
    run
        Training run folder (``config.yaml``, ``best.pt``/``last.pt``).
    images
        Any layout :func:`~thoraxseg.data.layout.discover_cases` accepts.
    out
        Output folder (created).
    postprocess
        The clean-up (:func:`~thoraxseg.data.postprocess.clean_up`): ``True`` keeps each organ's largest
        piece, pieces stacked across missed slices counted as one; ``"largest"`` its largest 3D
        connected component alone; ``False`` none.
    batch_size
        Slices per forward pass.
    checkpoint
        ``best``, ``last`` or a ``.pt`` path.
    amp
        bfloat16 autocast on CUDA (default: the run's setting).

    Returns
    -------
    list[pathlib.Path]
        The written files, in case order.
    """
    model, cfg = load_run_model(run, checkpoint, device)
    dev = next(model.parameters()).device
    use_amp = bool(cfg.get("amp", False)) if amp is None else amp
    spacing_mm = run_spacing_mm(cfg)
    if "preprocessing" not in cfg:
        console.print(f"note: {run} was trained before thoraxseg 0.2 resampled slices to a fixed pixel size; "
                      f"it predicts with its own {grid_text(int(cfg['image_size']), None)} (the pixel size in mm "
                      "then depends on each scan's field of view)", soft_wrap=True)
    multiple = SIZE_MULTIPLE[str(cfg["model"])]
    cases = discover_cases(images)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with make_progress() as progress:
        case_task = progress.add_task("predicting cases", total=len(cases))
        slice_task = progress.add_task("slices", total=0)
        for case in cases:
            vol = load_image(case.image_path)
            progress.reset(slice_task, total=vol.shape[2], description=f"{case.patient_id} slices")
            labels = predict_array(model, vol.array, int(cfg["image_size"]), cfg["windows"], batch_size,
                                   dev, use_amp, on_batch=lambda k: progress.advance(slice_task, k),
                                   pixel_mm=vol.spacing[:2], spacing_mm=spacing_mm, multiple=multiple)
            labels = clean_up(labels, postprocess, vol.spacing)
            path = out_dir / f"{case.patient_id}.nii.gz"
            save_label(labels, vol, path)
            written.append(path)
            progress.advance(case_task)
    return written
