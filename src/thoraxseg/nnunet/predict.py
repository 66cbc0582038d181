"""Predict with a trained ``nnunet3d`` run: nnU-Net's sliding-window predictor on any layout, source geometry out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thoraxseg.data.layout import discover_cases
from thoraxseg.data.postprocess import Postprocess, clean_up
from thoraxseg.data.volume import Volume, load_image, save_label
from thoraxseg.errors import ConfigError, InputError
from thoraxseg.nnunet.env import default_processes, nnunet_environment
from thoraxseg.nnunet.plans import (
    CONFIGURATION,
)
from thoraxseg.nnunet.runfolder import TRAINER_NAME, quiet, read_run_config, trained_folds
from thoraxseg.utils.progress import track
from thoraxseg.utils.settings import torch_device

# ----------------------------------------------------------------------------------------------------------------
# prediction


def load_predictor(
    run: str | Path,
    device: str = "cpu",
    tta: bool = True,
    step: float = 0.5,
    folds: Sequence[int | str] | None = None,
    checkpoint: str | None = None,
) -> Any:
    """nnU-Net's :class:`nnUNetPredictor` for a trained run, initialised in code (no class lookup by name).

    Every trained fold of the run is loaded (``checkpoint_final.pth``, else latest, else best;
    ``checkpoint="best"``/``"latest"``/``"final"`` tries that one first); their logits are
    averaged (nnU-Net's ensembling).
    """
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from thoraxseg.nnunet.trainer import ThoraxsegTrainer, find_checkpoint

    run = Path(run)
    cfg = read_run_config(run)
    if not 0 < float(step) <= 1:
        raise ConfigError(f"step (tile overlap step, fraction of the patch) must be in (0, 1], got {step}")
    results = run / cfg["resolved"]["results_folder"]
    if not (results / "plans.json").is_file():
        raise InputError(results / "plans.json", "file not found (training has not started)")
    plans_manager = PlansManager(load_json(str(results / "plans.json")))
    dataset_json = load_json(str(results / "dataset.json"))
    configuration = plans_manager.get_configuration(CONFIGURATION)
    wanted = trained_folds(results) if folds is None else list(folds)
    parameters, mirror_axes, used = [], None, []
    for fold in wanted:
        ckpt = find_checkpoint(results / f"fold_{fold}", prefer=checkpoint)
        if ckpt is None:
            continue
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        parameters.append(state["network_weights"])
        mirror_axes = state.get("inference_allowed_mirroring_axes", mirror_axes)
        used.append((fold, ckpt.name))
    if not parameters:
        raise InputError(results, f"no checkpoint for folds {', '.join(map(str, wanted))}")
    network = ThoraxsegTrainer.build_network_architecture(
        plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(parameters[0])
    dev = torch_device(device)
    predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=bool(tta),
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, parameters, dataset_json,
                                    TRAINER_NAME, mirror_axes)
    predictor.thoraxseg_folds = used
    return predictor


def predict_array(predictor: Any, volume: Volume) -> np.ndarray:
    """Segment one CT with an initialised nnU-Net predictor; labels on the CT's own grid, axes ``(x, y, z)``.

    nnU-Net works in SimpleITK's axis order ``(z, y, x)`` with spacing reversed the same way
    (that is what its SimpleITK reader hands the network at training time), so the NIfTI
    ``(x, y, z)`` array is transposed on the way in and the segmentation on the way out.
    Preprocessing (crop, resampling to the plan's spacing, CT normalisation), sliding-window
    inference and resampling back are nnU-Net's (``predict_single_npy_array``'s steps).
    """
    import torch
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    image = np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0)[None]
    props = {"spacing": [float(v) for v in volume.spacing[::-1]]}
    adapter = PreprocessAdapterFromNpy([image], [None], [props], [None], predictor.plans_manager,
                                       predictor.dataset_json, predictor.configuration_manager,
                                       num_threads_in_multithreaded=1, verbose=False)
    item = next(adapter)
    logits = predictor.predict_logits_from_preprocessed_data(item["data"]).cpu()
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
        item["data_properties"], return_probabilities=False, num_threads_torch=torch.get_num_threads())
    seg = np.asarray(seg).transpose(2, 1, 0)
    if seg.shape != volume.shape:  # pragma: no cover - nnU-Net guarantees the source shape
        raise RuntimeError(f"nnU-Net returned shape {seg.shape}, expected {volume.shape}")
    return seg.astype(np.uint8)


def predict_nnunet(
    run: str | Path,
    images: str | Path,
    out: str | Path,
    tta: bool = True,
    step: float = 0.5,
    postprocess: Postprocess = True,
    device: str = "cpu",
    folds: Sequence[int | str] | None = None,
    checkpoint: str | None = None,
    verbose: bool = False,
) -> list[Path]:
    """Segment every case under ``images`` with a trained nnunet3d run.

    Parameters
    ----------
    run
        Run folder from :func:`train_nnunet`.
    images
        Any layout :func:`~thoraxseg.data.layout.discover_cases` accepts (labels are ignored).
    out
        Output folder; gets ``Patient_XX.nii.gz`` (uint8, 0..4) on each source image's grid.
    tta
        Mirroring test-time augmentation over the axes nnU-Net allowed in training (8× slower in 3D).
    step
        Sliding-window step as a fraction of the patch (nnU-Net's ``tile_step_size``; 0.5 = half overlap).
    postprocess
        The clean-up (:func:`thoraxseg.data.postprocess.clean_up`): ``True`` keeps each organ's largest
        piece, pieces stacked across missed slices counted as one; ``"largest"`` its largest connected
        component alone; ``False`` none.
    device
        ``"cpu"`` or ``"cuda"``.
    folds
        Folds to ensemble (default: the run's folds that have a checkpoint).
    checkpoint
        ``"final"``, ``"latest"`` or ``"best"`` to prefer that checkpoint (default: final, else
        latest, else best).
    Returns
    -------
    list of Path
        Written files, in case order.
    """
    run = Path(run)
    read_run_config(run)
    cases = discover_cases(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with nnunet_environment(run / "nnunet", num_processes=default_processes()), \
            quiet(run / "nnunet" / "nnunet_stdout.log", verbose):
        predictor = load_predictor(run, device=device, tta=tta, step=step, folds=folds, checkpoint=checkpoint)
        written = []
        for case in track(cases, f"nnU-Net: predicting ({len(predictor.thoraxseg_folds)} fold(s))"):
            volume = load_image(case.image_path)
            labels = predict_array(predictor, volume)
            labels = clean_up(labels, postprocess, volume.spacing)
            path = out / f"{case.patient_id}.nii.gz"
            save_label(labels, volume, path)
            written.append(path)
    return written
