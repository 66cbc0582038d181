"""Train nnU-Net (``3d_fullres``) as thoraxseg's ``nnunet3d`` arm: export, plan, preprocess, train folds.

See :mod:`thoraxseg.nnunet.api` for the run folder; resumable (each fold from its last checkpoint).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from thoraxseg.arms.curves import plot_curves
from thoraxseg.data.layout import labelled_cases
from thoraxseg.errors import ConfigError
from thoraxseg.labels import ORGAN_NAMES, ORGANS
from thoraxseg.nnunet.env import NnunetPaths, nnunet_environment, scoped_env, thread_pools
from thoraxseg.nnunet.export import dataset_folder_name, export_dataset
from thoraxseg.nnunet.plans import (
    CONFIGURATION,
    CPU_PLAN,
    LEGACY_CPU_PLAN,
    CpuPlan,
    plan_and_preprocess,
    plans_identifier,
    write_splits,
)
from thoraxseg.nnunet.runfolder import (
    CURVES_EVERY_S,
    FOLD_LOG,
    PREPARED_MARKER,
    TRAINER_NAME,
    nnunet_version,
    quiet,
    read_run_config,
    trained_folds,
)
from thoraxseg.nnunet.runlog import read_log_csv, rows_from_logger, write_log_csv
from thoraxseg.nnunet.settings import (
    IDENTITY_KEYS,
    MODEL,
    resolve_settings,
)
from thoraxseg.utils.atomic import removed_on_failure, write_json_atomic, write_text_atomic
from thoraxseg.utils.progress import err_console, make_progress
from thoraxseg.utils.settings import torch_device

# ----------------------------------------------------------------------------------------------------------------
# training


def _input_fingerprint(cases: Sequence[Any]) -> list[list[Any]]:
    """Patient ID, byte size and modification time (ns) of every image and label: a changed cohort re-prepares."""
    rows = []
    for c in cases:
        row: list[Any] = [c.patient_id]
        for p in (c.image_path, c.label_path):
            st = Path(p).stat()
            row += [st.st_size, st.st_mtime_ns]
        rows.append(row)
    return rows


def _prepare(data: Path, paths: NnunetPaths, s: dict[str, Any], marker: Path) -> dict[str, Any]:
    """Export, plan, preprocess and split, unless a complete preparation for the same inputs exists."""
    dataset = dataset_folder_name(s["dataset_id"], s["dataset_name"])
    ident = plans_identifier(s["plans"])
    cases = labelled_cases(data)
    want = {"data": str(data), "dataset": dataset, "plans_identifier": ident, "export_mode": s["export_mode"],
            "nnunetv2": nnunet_version(), "inputs": _input_fingerprint(cases), "cpu_plan": s["cpu_plan"]}
    if marker.is_file():
        have = json.loads(marker.read_text(encoding="utf-8"))
        have = _with_recorded_cpu_plan(have, ident == plans_identifier("cpu"))
        if all(have.get(k) == v for k, v in want.items()):
            return have
        marker.unlink()
    export_dataset(data, paths.raw, s["dataset_id"], s["dataset_name"], mode=s["export_mode"], overwrite=True)
    pre = paths.preprocessed / dataset
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA): it must be >= 1 here
    with make_progress() as progress, thread_pools(s["pools"] == "thread"), \
            scoped_env(nnUNet_n_proc_DA=str(s["num_processes"])):
        task = progress.add_task(f"nnU-Net: fingerprint, plan, preprocess {len(cases)} cases", total=None)
        plan_and_preprocess(s["dataset_id"], pre, s["plans"], num_processes=s["num_processes"],
                            check_integrity=s["check_integrity"], verbose=s["verbose"],
                            cpu=CpuPlan.from_settings(s["cpu_plan"]))
        progress.update(task, total=1, completed=1)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    assert convert_id_to_dataset_name(s["dataset_id"]) == dataset
    case_ids = sorted(p.name[: -len(".nii.gz")] for p in (paths.raw / dataset / "labelsTr").glob("*.nii.gz"))
    write_splits(pre, case_ids)
    have = {**want, "cases": len(cases), "case_ids": case_ids}
    write_json_atomic(marker, have)
    return have


def _plan_summary(plans: dict[str, Any]) -> dict[str, Any]:
    cfg = plans["configurations"][CONFIGURATION]
    arch = cfg["architecture"]["arch_kwargs"]
    return {
        "patch_size_zyx": [int(v) for v in cfg["patch_size"]],
        "spacing_mm_zyx": [float(v) for v in cfg["spacing"]],
        "transpose_forward": list(plans.get("transpose_forward", [0, 1, 2])),
        "batch_size": int(cfg["batch_size"]),
        "features_per_stage": [int(v) for v in arch["features_per_stage"]],
        "n_stages": int(arch["n_stages"]),
        "batch_dice": bool(cfg.get("batch_dice", False)),
    }


def _write_run_log(run: Path, results: Path, plot: bool = True) -> None:
    rows: list[dict[str, Any]] = []
    for fold in trained_folds(results):
        rows.extend(read_log_csv(results / f"fold_{fold}" / FOLD_LOG))
    write_log_csv(run / "log.csv", rows)
    if rows and plot:
        plot_curves(rows, run / "curves.png", title="nnU-Net 3d_fullres", loss_label="loss (Dice + CE, deep supervision)",
                    dice_label="validation pseudo Dice")


def _validation_summary(results: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fold in trained_folds(results):
        summary = results / f"fold_{fold}" / "validation" / "summary.json"
        if not summary.is_file():
            continue
        content = json.loads(summary.read_text(encoding="utf-8"))
        dice = {name: content["mean"].get(str(int(o)), {}).get("Dice") for name, o in zip(ORGAN_NAMES, ORGANS,
                                                                                            strict=True)}
        dice["mean"] = content.get("foreground_mean", {}).get("Dice")
        out[str(fold)] = {"dice": dice, "cases": len(content.get("metric_per_case", []))}
    return out


def _checkpoint_epoch(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["current_epoch"])


def _train_fold(fold: int | str, s: dict[str, Any], pre: Path, ident: str, run: Path, results: Path,
                record: Callable[[int | str, int | str], None]) -> None:
    """Train (or continue) one fold; ``record(fold, start epoch or "complete")`` is called before training."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from thoraxseg.nnunet.trainer import find_checkpoint

    fold_dir = results / f"fold_{fold}"
    ckpt = find_checkpoint(fold_dir, newest=True)
    final = fold_dir / "checkpoint_final.pth"
    if ckpt == final and _checkpoint_epoch(final) >= s["epochs"]:
        record(fold, "complete")
        return
    plans = load_json(str(pre / f"{ident}.json"))
    if s["batch_size"]:
        plans["configurations"][CONFIGURATION]["batch_size"] = int(s["batch_size"])
    plans["continue_training"] = ckpt is not None
    dataset_json = load_json(str(pre / "dataset.json"))
    # Seeds only: torch's deterministic-algorithms mode costs ~10 % per step on CPU and nnU-Net does not use
    # it (CPU convolutions are deterministic here anyway; the tests check same seed -> same weights).
    # On CUDA, nnU-Net's own run_training() sets cudnn.benchmark; restored afterwards.
    random.seed(s["seed"])
    np.random.seed(s["seed"] % 2**32)  # noqa: NPY002 - nnU-Net samples with the global NumPy RNG
    torch.manual_seed(s["seed"])
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic)
    try:
        if s["device"].startswith("cuda"):
            cudnn.benchmark, cudnn.deterministic = True, False
        _run_trainer(fold, s, plans, dataset_json, ckpt, run, results, record)
    finally:
        cudnn.benchmark, cudnn.deterministic = saved


def _run_trainer(fold: int | str, s: dict[str, Any], plans: dict[str, Any], dataset_json: dict[str, Any],
                 ckpt: Path | None, run: Path, results: Path,
                 record: Callable[[int | str, int | str], None]) -> None:
    import torch

    from thoraxseg.nnunet.trainer import ThoraxsegTrainer

    fold_dir = results / f"fold_{fold}"
    device = torch_device(s["device"])
    trainer = ThoraxsegTrainer(plans=plans, configuration=CONFIGURATION, fold=fold, dataset_json=dataset_json,
                               device=device)
    if device.type == "cuda" and device.index is not None:
        # nnU-Net's trainer always picks cuda:0 (it expects CUDA_VISIBLE_DEVICES); cuda:N is honoured here,
        # before initialize() builds the network on trainer.device
        torch.cuda.set_device(device)
        trainer.device = device

    last_plot = [time.monotonic()]

    def on_epoch(t: ThoraxsegTrainer) -> None:
        write_log_csv(fold_dir / FOLD_LOG, rows_from_logger(t.logged(), fold))
        plot = time.monotonic() - last_plot[0] > CURVES_EVERY_S or t.current_epoch >= t.num_epochs
        _write_run_log(run, results, plot=plot)
        if plot:
            last_plot[0] = time.monotonic()
        if t.progress is not None:
            logged = t.logged()
            per_organ = " ".join(f"{name[:4]} {float(d):.2f}" for name, d in
                                 zip(ORGAN_NAMES, logged["dice_per_class_or_region"][-1], strict=False))
            t.progress.update(t.progress_task, description=f"nnU-Net fold {fold}: epoch {t.current_epoch}/"
                              f"{t.num_epochs}, pseudo Dice {logged['mean_fg_dice'][-1]:.3f} ({per_organ})")

    trainer.configure(num_epochs=s["epochs"], iterations_per_epoch=s["iterations_per_epoch"],
                      val_iterations_per_epoch=s["val_iterations_per_epoch"], save_every=s["save_every"],
                      seed=s["seed"], initial_lr=s["initial_lr"], epoch_callback=on_epoch,
                      oversample_foreground=s["oversample_foreground"])
    start = 0
    if ckpt is not None:
        trainer.load_checkpoint(str(ckpt))
        start = int(trainer.current_epoch)
        err_console.print(f"nnU-Net fold {fold}: continuing from epoch {start} ({ckpt.name})")
    record(fold, start)
    workers = s["num_workers"]
    with make_progress() as progress:
        total = max(0, s["epochs"] - start) * s["iterations_per_epoch"]
        trainer.progress = progress
        trainer.progress_task = progress.add_task(f"nnU-Net fold {fold}: epoch {start}/{s['epochs']}", total=total)
        # None: leave nnUNet_n_proc_DA (or nnU-Net's own default) alone
        with contextlib.nullcontext() if workers is None else scoped_env(nnUNet_n_proc_DA=str(workers)):
            trainer.run_training()
    if s["final_validation"]:
        with thread_pools(s["pools"] == "thread"):
            trainer.perform_actual_validation(False)


@contextlib.contextmanager
def _run_lock(nn_root: Path) -> Iterator[None]:
    """Exclusive lock on ``RUN/nnunet/.lock`` (several fold jobs may share one RUN, e.g. a SLURM array)."""
    import fcntl

    nn_root.mkdir(parents=True, exist_ok=True)
    with (nn_root / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _with_recorded_cpu_plan(record: dict[str, Any], cpu: bool) -> dict[str, Any]:
    """A run's ``config.yaml`` or ``prepared.json`` content, with the ``cpu_plan`` it was made with.

    Runs of the ``cpu`` plan made before ``cpu_plan`` was recorded used :data:`LEGACY_CPU_PLAN`.
    """
    if cpu and not record.get("cpu_plan"):
        return {**record, "cpu_plan": LEGACY_CPU_PLAN.as_dict()}
    return record


def _start(data: str | Path, out: str | Path, config: Mapping[str, Any] | str | Path | None,
           explicit: dict[str, Any]) -> tuple[Path, Path, dict[str, Any]]:
    data_path = Path(data).resolve()
    run = Path(out).resolve()
    s = resolve_settings(config, **explicit)
    torch_device(s["device"])
    labelled_cases(data_path)  # fail early, naming the folder, when there is nothing to train on
    old = read_run_config(run) if (run / "config.yaml").is_file() else None
    if old is not None:
        old = _with_recorded_cpu_plan(old, old.get("plans") == "cpu")
    if s["plans"] == "cpu" and s["cpu_plan"] is None:  # a run continues with the plan it was made with
        s["cpu_plan"] = (old or {}).get("cpu_plan") or CPU_PLAN.as_dict()
    if old is not None:
        diff = [k for k in IDENTITY_KEYS if old.get(k) != s[k]]
        if old.get("data") != str(data_path):
            diff.append("data")
        if diff:
            raise ConfigError(f"{run}: holds an nnunet3d run with other {', '.join(diff)}; "
                              "use another --out (or the same settings to continue it)")
    return data_path, run, s


def _prepare_run(data: Path, run: Path, s: dict[str, Any], paths: NnunetPaths) -> tuple[Path, Path]:
    """Prepare (once) and write ``RUN/config.yaml``; returns (preprocessed dataset, results folder)."""
    import thoraxseg

    ident = plans_identifier(s["plans"])
    dataset = dataset_folder_name(s["dataset_id"], s["dataset_name"])
    with _run_lock(paths.root):
        prepared = _prepare(data, paths, s, paths.root / PREPARED_MARKER)
        pre = paths.preprocessed / dataset
        results = paths.results / dataset / f"{TRAINER_NAME}__{ident}__{CONFIGURATION}"
        plan = json.loads((pre / f"{ident}.json").read_text(encoding="utf-8"))
        resolved = {
            "dataset": dataset,
            "plans_identifier": ident,
            "configuration": CONFIGURATION,
            "trainer": TRAINER_NAME,
            "results_folder": os.path.relpath(results, run),
            "cases": prepared.get("cases"),
            "plan": _plan_summary(plan),
        }
        cfg = {"model": MODEL, "data": str(data), **s, "folds": ",".join(str(f) for f in s["folds"]),
               "resolved": resolved,
               "versions": {"thoraxseg": thoraxseg.__version__, "nnunetv2": prepared.get("nnunetv2")}}
        write_text_atomic(run / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    return pre, results


def _kept_when_prepared(run: Path) -> contextlib.AbstractContextManager[Path]:
    """A new run folder is removed again when the call fails before nnU-Net's preparation completed."""
    return removed_on_failure(run, keep=lambda r: (r / "nnunet" / PREPARED_MARKER).is_file())


def _environment(run: Path, s: dict[str, Any]) -> contextlib.AbstractContextManager[NnunetPaths]:
    return nnunet_environment(run / "nnunet", num_processes=s["num_processes"],
                              compile_network=False if s["device"] == "cpu" else None)


def prepare_nnunet(
    data: str | Path,
    out: str | Path,
    config: Mapping[str, Any] | str | Path | None = None,
    plans: str | None = None,
    **overrides: Any,
) -> Path:
    """Export, fingerprint, plan and preprocess into ``out`` without training (idempotent).

    Useful before starting several fold jobs on one run folder (SLURM array): they then find
    the preparation done. Arguments as for :func:`train_nnunet`. Returns the run folder.
    """
    data_path, run, s = _start(data, out, config, {"plans": plans, **overrides})
    with _kept_when_prepared(run), _environment(run, s) as paths, \
            quiet(paths.root / "nnunet_stdout.log", s["verbose"]):
        _prepare_run(data_path, run, s, paths)
    return run


def train_nnunet(
    data: str | Path,
    out: str | Path,
    config: Mapping[str, Any] | str | Path | None = None,
    folds: str | int | Sequence[int | str] | None = None,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    plans: str | None = None,
    device: str | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> Path:
    """Export, plan, preprocess (``3d_fullres``) and train nnU-Net into the run folder ``out``.

    Parameters
    ----------
    data
        Training cohort, any layout with labels (``train/Patient_XX/{Patient_XX,GT}.nii.gz``...).
    out
        Run folder ``RUN`` (created; a rerun continues it). Several processes may train
        different folds into one ``RUN`` at the same time (preparation runs once, under a lock).
    config
        Settings as a mapping or a YAML file (a previous ``RUN/config.yaml`` works); explicit
        arguments win. Keys: :class:`~thoraxseg.nnunet.settings.NnunetSettings`.
    folds
        ``"0"`` (default), ``"0,1"``, ``"0-4"``, or ``"all"`` (nnU-Net's fold trained on every case,
        whose validation is then on training cases).
    epochs, iterations_per_epoch
        Run length; default nnU-Net's 1000 × 250 for ``plans="default"``, see
        :data:`~thoraxseg.nnunet.settings.RUN_LENGTH`
        for ``"cpu"``.
    plans
        ``"default"`` (nnU-Net's plan, for a GPU) or ``"cpu"`` (reduced network and patch, see
        :mod:`thoraxseg.nnunet.plans`).
    device
        ``"cpu"`` (default) or ``"cuda"``.
    seed
        Seeds network initialisation and every epoch's sampling/augmentation (default 0).
    **overrides
        Any other setting of :class:`~thoraxseg.nnunet.settings.NnunetSettings`
        (``val_iterations_per_epoch``, ``num_workers``, ...).

    Returns
    -------
    Path
        The run folder.
    """
    data_path, run, s = _start(data, out, config, {
        "folds": folds, "epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "plans": plans,
        "device": device, "seed": seed, **overrides})
    started = _dt.datetime.now().isoformat(timespec="seconds")
    session: dict[str, Any] = {"id": f"{started}/{os.getpid()}", "started": started, "folds": {}}
    with _kept_when_prepared(run), _environment(run, s) as paths, \
            quiet(paths.root / "nnunet_stdout.log", s["verbose"]):
        pre, results = _prepare_run(data_path, run, s, paths)
        sessions_path = paths.root / "sessions.json"

        def record(fold: int | str, start: int | str) -> None:
            """Log in RUN/nnunet/sessions.json from which epoch each fold went on in this call."""
            with _run_lock(paths.root):
                sessions = json.loads(sessions_path.read_text(encoding="utf-8")) if sessions_path.is_file() else []
                session["folds"][str(fold)] = start
                write_json_atomic(sessions_path, [*(x for x in sessions if x.get("id") != session["id"]), session])

        for fold in s["folds"]:
            _train_fold(fold, s, pre, plans_identifier(s["plans"]), run, results, record)
        _write_run_log(run, results)
        summary = _validation_summary(results)
        if summary:
            write_json_atomic(run / "validation.json", summary)
    return run


def train_nnunet_arm(name: str, data: Path, out: Path, config: Mapping[str, Any] | str | Path | None = None,
                     epochs: int | None = None, device: str = "cpu", **settings: Any) -> Path:
    """The ``nnunet3d`` arm's training entry (:class:`thoraxseg.arms.Arm`): :func:`train_nnunet`."""
    return train_nnunet(data, out, config=config, epochs=epochs, device=device, **settings)
