"""Inference: whole-volume prediction back in the source geometry, and post-processing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thoraxseg.errors import InputError
from thoraxseg.utils.yamlfile import read_yaml_mapping


def load_run_config(run: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` of a training run as a mapping with a ``model:`` entry.

    Raises
    ------
    InputError
        Missing or unreadable file, or no ``model:`` entry.
    """
    path = Path(run) / "config.yaml"
    cfg = read_yaml_mapping(path, error=InputError, missing="not a training run folder (config.yaml missing)")
    if not isinstance(cfg.get("model"), str):
        raise InputError(path, "no 'model:' entry")
    return cfg


def run_model_name(run: Path) -> str:
    """The ``model:`` of ``RUN/config.yaml`` (lower case); raises InputError when the run folder is unusable."""
    return str(load_run_config(run)["model"]).lower()


def predict(run: Path, images: Path, out: Path, postprocess: bool = True, device: str = "cpu",
            **kw: Any) -> list[Path]:
    """Predict every case under ``images`` with a trained run; writes ``out/Patient_XX.nii.gz``.

    Dispatches on ``RUN/config.yaml``'s ``model``: ``enet``/``customnet`` →
    :func:`thoraxseg.inference.predict2d.predict_2d` (keywords ``batch_size``,
    ``checkpoint``, ``amp``); ``nnunet3d`` → ``thoraxseg.nnunet.api.predict_nnunet``
    (keywords ``tta`` (default True) and ``step`` (default 0.5)). Keywords that the
    chosen arm does not use are ignored when ``None``.

    Returns
    -------
    list[pathlib.Path]
        Written label files (uint8, source geometry), in case order.
    """
    model = run_model_name(run)
    options = {k: v for k, v in kw.items() if v is not None}
    if model == "nnunet3d":
        from thoraxseg.nnunet.api import predict_nnunet

        return predict_nnunet(Path(run), Path(images), Path(out), tta=options.pop("tta", True),
                              step=options.pop("step", 0.5), postprocess=postprocess, device=device, **options)
    if model in ("enet", "customnet"):
        from thoraxseg.inference.predict2d import predict_2d

        options.pop("tta", None)
        options.pop("step", None)
        return predict_2d(run, images, out, postprocess=postprocess, device=device, **options)
    raise InputError(Path(run) / "config.yaml", f"unknown model {model!r}")


__all__ = ["load_run_config", "predict", "run_model_name"]
