"""The nnU-Net arm: wrapper overhead against nnunetv2 called directly, and learning on the phantom (CPU).

Part 1 — overhead (same data, same plan, same settings on both sides):

* preprocessing: ``thoraxseg.nnunet.plans.plan_and_preprocess`` (nnU-Net's fingerprint,
  integrity check, planner and preprocessor; worker pools as threads) against the same
  nnunetv2 API calls with nnU-Net's own spawn process pools; outputs compared
  (plans JSON, every preprocessed array);
* training steps: ``ThoraxsegTrainer`` against ``nnUNetTrainer`` itself on the ``cpu``
  plan, same fold, in-process augmentation (``nnUNet_n_proc_DA=0``): seconds per
  ``train_step`` (median) and per epoch (median of the epochs after the first);
* prediction: ``predict_nnunet`` (NIfTI in via nibabel, nnU-Net preprocessing,
  sliding window, export, connected-component clean-up, NIfTI out) against
  ``nnUNetPredictor.predict_from_files_sequential`` (nnU-Net's SimpleITK I/O), with and
  without mirroring; segmentations compared voxel by voxel (ours without clean-up).

Part 2 — learning: a small phantom cohort, ``--plans cpu``, fold 0, the given epochs ×
iterations; nnU-Net's final validation Dice per organ on the fold's validation cases
(whole volumes) and thoraxseg's evaluation of predictions on held-out phantoms.
Target: every organ's validation Dice > 0.5 within about 10 minutes of 2-core CPU.

Run: ``.venv/bin/python benchmarks/nnunet_arm.py [--work DIR] [--skip-overhead] [--skip-learning]
[--cases 12] [--test-cases 3] [--epochs 25] [--iterations 40]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from thoraxseg.data.phantom import generate_cohort
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.nnunet import api
from thoraxseg.nnunet.env import nnunet_environment, scoped_env, thread_pools
from thoraxseg.nnunet.export import export_dataset
from thoraxseg.nnunet.plans import plan_and_preprocess
from thoraxseg.nnunet.settings import RUN_LENGTH
from thoraxseg.utils.progress import console

DATASET = "Dataset055_SegTHOR"


def _ratio(ours: float, direct: float) -> str:
    return f"{ours / direct:.3f} ({(ours / direct - 1) * 100:+.1f} %)"


def bench_preprocessing(data: Path, work: Path, nproc: int) -> dict[str, Any]:
    """Plan + preprocess the default plan: ours (thread pools) vs nnunetv2's API with spawn pools."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    times: dict[str, float] = {}
    for side in ("direct", "ours"):
        root = work / f"pre_{side}"
        shutil.rmtree(root, ignore_errors=True)
        with nnunet_environment(root, num_processes=nproc) as paths, scoped_env(nnUNet_n_proc_DA=str(nproc)):
            export_dataset(data, paths.raw, check=False)
            t0 = time.perf_counter()
            if side == "ours":
                with thread_pools():
                    plan_and_preprocess(55, paths.preprocessed / DATASET, "default", nproc, check_integrity=True)
            else:
                extract_fingerprint_dataset(55, DatasetFingerprintExtractor, nproc, check_dataset_integrity=True,
                                            clean=True, verbose=False, show_progress_bar=False)
                plan_experiment_dataset(55, ExperimentPlanner)
                preprocess_dataset(55, "nnUNetPlans", ("3d_fullres",), [nproc], show_progress_bar=False)
            times[side] = time.perf_counter() - t0
    a, b = (work / f"pre_{s}" / "nnUNet_preprocessed" / DATASET for s in ("ours", "direct"))
    same_plans = json.loads((a / "nnUNetPlans.json").read_text()) == json.loads((b / "nnUNetPlans.json").read_text())
    import blosc2

    same_arrays = True
    files = sorted((a / "nnUNetPlans_3d_fullres").glob("*.b2nd"))
    for f in files:
        x = blosc2.open(str(f), mode="r")[:]
        y = blosc2.open(str(b / "nnUNetPlans_3d_fullres" / f.name), mode="r")[:]
        same_arrays &= bool(np.array_equal(x, y))
    return {"ours_s": times["ours"], "direct_s": times["direct"], "same_plans": same_plans,
            "same_arrays": same_arrays and len(files) > 0, "files": len(files)}


def _timed_steps(trainer: Any) -> list[float]:
    durations: list[float] = []
    step = trainer.train_step

    def timed(batch: dict) -> dict:
        t0 = time.perf_counter()
        out = step(batch)
        durations.append(time.perf_counter() - t0)
        return out

    trainer.train_step = timed
    return durations


def bench_training(data: Path, work: Path, epochs: int, iterations: int) -> dict[str, Any]:
    """Seconds per train_step and per epoch: ThoraxsegTrainer (via train_nnunet) vs nnUNetTrainer."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from thoraxseg.nnunet import trainer as trainer_module

    run = work / "train_ours"
    shutil.rmtree(run, ignore_errors=True)
    captured: list[Any] = []
    original_run = trainer_module.ThoraxsegTrainer.run_training

    def run_and_time(self: Any) -> None:
        self._bench_durations = _timed_steps(self)
        captured.append(self)
        original_run(self)

    trainer_module.ThoraxsegTrainer.run_training = run_and_time  # type: ignore[method-assign]
    try:
        api.train_nnunet(data, run, plans="cpu", epochs=epochs, iterations_per_epoch=iterations,
                         val_iterations_per_epoch=2, final_validation=False)
    finally:
        trainer_module.ThoraxsegTrainer.run_training = original_run  # type: ignore[method-assign]
    ours = captured[0]
    ours_epochs = [e - s for s, e in zip(ours.logged()["epoch_start_timestamps"],
                                         ours.logged()["epoch_end_timestamps"], strict=True)]

    with nnunet_environment(run / "nnunet", num_processes=1) as paths, scoped_env(nnUNet_n_proc_DA="0"):
        pre = paths.preprocessed / DATASET
        plans = load_json(str(pre / "nnUNetPlans_cpu.json"))
        plans["continue_training"] = False
        torch.manual_seed(0)
        direct = nnUNetTrainer(plans, "3d_fullres", 0, load_json(str(pre / "dataset.json")),
                               device=torch.device("cpu"))
        direct.num_epochs, direct.num_iterations_per_epoch, direct.num_val_iterations_per_epoch = epochs, iterations, 2
        direct_steps = _timed_steps(direct)
        direct.run_training()
        log = direct.logger.local_logger.my_fantastic_logging
        direct_epochs = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"],
                                               strict=True)]
    return {"ours_step": statistics.median(ours._bench_durations), "direct_step": statistics.median(direct_steps),
            "ours_epoch": statistics.median(ours_epochs[1:] or ours_epochs),
            "direct_epoch": statistics.median(direct_epochs[1:] or direct_epochs),
            "steps": len(direct_steps), "run": run}


def bench_prediction(run: Path, images: Path, work: Path, tta_modes: tuple[bool, ...] = (False, True)
                     ) -> dict[str, Any]:
    """Per-case prediction time: predict_nnunet vs nnUNetPredictor.predict_from_files_sequential.

    One untimed prediction first: the first convolutions of a process pay one-off set-up costs
    (oneDNN primitives) that would otherwise be charged to whichever side runs first.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from thoraxseg.data.layout import discover_cases
    from thoraxseg.data.volume import load_label

    cases = discover_cases(images)
    out: dict[str, Any] = {"cases": len(cases)}
    warm = work / "pred_warmup"
    shutil.rmtree(warm, ignore_errors=True)
    (warm / "in" / cases[0].patient_id).mkdir(parents=True)
    shutil.copy(cases[0].image_path, warm / "in" / cases[0].patient_id / f"{cases[0].patient_id}.nii.gz")
    api.predict_nnunet(run, warm / "in", warm / "out", tta=False, postprocess=False)
    for tta in tta_modes:
        key = "tta" if tta else "no_tta"
        ours_dir, direct_dir = work / f"pred_ours_{key}", work / f"pred_direct_{key}"
        for d in (ours_dir, direct_dir):
            shutil.rmtree(d, ignore_errors=True)
        direct_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        api.predict_nnunet(run, images, ours_dir, tta=tta, postprocess=False)
        out[f"ours_{key}"] = (time.perf_counter() - t0) / len(cases)
        with nnunet_environment(run / "nnunet", num_processes=2):
            # both sides pay for loading the checkpoint and building the network once (nnU-Net's own
            # initialize_from_trained_model_folder looks the trainer class up by name, see the README)
            t0 = time.perf_counter()
            ref = api.load_predictor(run, tta=tta)  # same weights and plan, initialised in code
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                        perform_everything_on_device=False, device=torch.device("cpu"),
                                        allow_tqdm=False)
            predictor.manual_initialization(ref.network, ref.plans_manager, ref.configuration_manager,
                                            ref.list_of_parameters, ref.dataset_json, "ThoraxsegTrainer",
                                            ref.allowed_mirroring_axes)
            predictor.predict_from_files_sequential([[str(c.image_path)] for c in cases],
                                                    [str(direct_dir / c.patient_id) for c in cases],
                                                    save_probabilities=False, overwrite=True)
            out[f"direct_{key}"] = (time.perf_counter() - t0) / len(cases)
        agree = [float((load_label(ours_dir / f"{c.patient_id}.nii.gz").array
                        == load_label(direct_dir / f"{c.patient_id}.nii.gz").array).mean()) for c in cases]
        out[f"agree_{key}"] = min(agree)
    return out


def run_overhead(work: Path, cases: int, epochs: int, iterations: int) -> None:
    data = generate_cohort(work / "cohort_overhead", cases, size="small", seed=7)
    with (work / "nnunet_direct_stdout.log").open("w") as log, contextlib.redirect_stdout(log):
        pre = bench_preprocessing(data, work, nproc=2)
        tr = bench_training(data, work, epochs, iterations)
        pr = bench_prediction(tr["run"], data, work)
    table = Table(title=f"nnU-Net arm: wrapper vs nnunetv2 directly ({cases} small phantoms, 2 processes)")
    for col in ("stage", "thoraxseg", "nnunetv2 directly", "ratio (target < 1.05)", "same result"):
        table.add_column(col)
    table.add_row("plan + preprocess 3d_fullres (s)", f"{pre['ours_s']:.1f}", f"{pre['direct_s']:.1f}",
                  _ratio(pre["ours_s"], pre["direct_s"]),
                  f"plans {pre['same_plans']}, {pre['files']} arrays {pre['same_arrays']}")
    table.add_row(f"train step, cpu plan (s, median of {tr['steps']})", f"{tr['ours_step']:.3f}",
                  f"{tr['direct_step']:.3f}", _ratio(tr["ours_step"], tr["direct_step"]), "-")
    table.add_row(f"epoch of {iterations} steps (s, median)", f"{tr['ours_epoch']:.2f}", f"{tr['direct_epoch']:.2f}",
                  _ratio(tr["ours_epoch"], tr["direct_epoch"]), "-")
    for key, label in (("no_tta", "predict, no mirroring (s/case)"), ("tta", "predict, mirroring (s/case)")):
        table.add_row(label, f"{pr['ours_' + key]:.2f}", f"{pr['direct_' + key]:.2f}",
                      _ratio(pr["ours_" + key], pr["direct_" + key]), f"voxels agree {pr['agree_' + key]:.4%}")
    console.print(table)


def run_learning(work: Path, cases: int, test_cases: int, epochs: int, iterations: int) -> None:
    from thoraxseg.metrics.evaluate import evaluate_folders

    data = generate_cohort(work / "cohort_learn", cases, size="small", seed=0)
    test = generate_cohort(work / "cohort_test", test_cases, size="small", seed=1000)
    run = work / "run_learn"
    shutil.rmtree(run, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    api.train_nnunet(data, run, plans="cpu", epochs=epochs, iterations_per_epoch=iterations, folds="0",
                     final_validation=True)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    api.predict_nnunet(run, test, work / "pred_learn", tta=True)
    pred_s = time.perf_counter() - t0
    df = evaluate_folders(test, work / "pred_learn")
    val = json.loads((run / "validation.json").read_text())["0"]
    table = Table(title=f"nnU-Net 3d_fullres, --plans cpu: {cases} small phantoms (fold 0), {epochs} epochs × "
                        f"{iterations} iterations; train {train_s / 60:.1f} min wall ({train_cpu / 60:.1f} CPU-min), "
                        f"predict {pred_s / test_cases:.1f} s/case")
    for col in ("organ", f"validation Dice ({val['cases']} cases, nnU-Net)",
                f"held-out Dice ({test_cases} cases, mean)", "held-out HD95 (mm)", "> 0.5"):
        table.add_column(col)
    for organ in ORGAN_NAMES:
        v = val["dice"][organ]
        d = df[df["organ"] == organ]
        table.add_row(organ, f"{v:.3f}", f"{d['dice'].mean():.3f}", f"{d['hd95'].mean():.1f}",
                      "yes" if v > 0.5 else "NO")
    console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, help="working folder (default: a temporary folder, removed)")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-learning", action="store_true")
    p.add_argument("--overhead-cases", type=int, default=4)
    p.add_argument("--overhead-epochs", type=int, default=3)
    p.add_argument("--overhead-iterations", type=int, default=8)
    p.add_argument("--cases", type=int, default=12, help="training phantoms (fold 0 validates on 1/5)")
    p.add_argument("--test-cases", type=int, default=3, help="held-out phantoms for predict + evaluate")
    p.add_argument("--epochs", type=int, default=RUN_LENGTH["cpu"][0])
    p.add_argument("--iterations", type=int, default=RUN_LENGTH["cpu"][1])
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nnunet_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_overhead:
            run_overhead(work, args.overhead_cases, args.overhead_epochs, args.overhead_iterations)
        if not args.skip_learning:
            run_learning(work, args.cases, args.test_cases, args.epochs, args.iterations)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
