"""Inference: whole-volume prediction back in the source geometry, and post-processing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thoraxseg.arms import arm_names, get_arm
from thoraxseg.arms.runs import load_run_config, run_model_name
from thoraxseg.data.postprocess import Postprocess
from thoraxseg.errors import InputError
from thoraxseg.utils.atomic import staged_files


def predict(run: Path, images: Path, out: Path, postprocess: Postprocess = True, device: str = "cpu",
            **kw: Any) -> list[Path]:
    """Predict every case under ``images`` with a trained run; writes ``out/Patient_XX.nii.gz``.

    Dispatches on ``RUN/config.yaml``'s ``model`` through :mod:`thoraxseg.arms`: ``enet``/``customnet``
    → :func:`thoraxseg.inference.predict2d.predict_2d` (options ``batch_size``, ``checkpoint``,
    ``amp``); ``nnunet3d`` → ``thoraxseg.nnunet.api.predict_nnunet`` (``tta`` (default True),
    ``step`` (default 0.5), ``checkpoint``, ``folds``). ``None`` options are ignored; an option the
    arm does not take is refused (one line). ``postprocess`` is the clean-up mode of
    :func:`thoraxseg.data.postprocess.clean_up`: ``True`` (each organ's largest piece, pieces stacked
    across missed slices counted as one), ``"largest"`` (largest connected component alone), ``False``.

    The files appear in ``out`` only once every case is predicted
    (:func:`thoraxseg.utils.atomic.staged_files`): a failure leaves ``out`` as it was, or absent;
    files of ``out`` that are not predicted again are kept.

    Returns
    -------
    list[pathlib.Path]
        Written label files (uint8, source geometry), in case order.
    """
    model = run_model_name(run)
    if model not in arm_names():
        raise InputError(Path(run) / "config.yaml", f"unknown model {model!r}; expected one of {', '.join(arm_names())}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output folder is a file")
    with staged_files(out) as tmp:
        written = get_arm(model).predict(Path(run), Path(images), tmp, postprocess=postprocess, device=device, **kw)
    return [out / p.name for p in written]


__all__ = ["load_run_config", "predict", "run_model_name"]
