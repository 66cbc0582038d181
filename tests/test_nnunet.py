"""Fast tests of the nnU-Net arm: export, nnU-Net's integrity check, plans, environment, axis mapping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thoraxseg.arms import get_arm
from thoraxseg.arms.curves import plot_curves
from thoraxseg.cli import main
from thoraxseg.data.volume import Volume, load_image, load_label, save_volume
from thoraxseg.errors import ConfigError, InputError
from thoraxseg.nnunet import api, env, export, plans, runlog
from thoraxseg.nnunet import settings as nnsettings
from thoraxseg.nnunet import train as nntrain
from thoraxseg.nnunet.trainer import find_checkpoint


def _case(root: Path, pid: str, shape=(20, 18, 10), spacing=(2.0, 2.0, 3.0), seed=0, label_value=2) -> None:
    rng = np.random.default_rng(seed)
    img = rng.normal(-700, 30, shape).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[5:12, 4:10, 2:7] = label_value
    img[lab > 0] = 40
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [-20.0, 10.0, -50.0]
    d = root / "train" / pid
    d.mkdir(parents=True, exist_ok=True)
    save_volume(Volume(img, aff), d / f"{pid}.nii.gz")
    save_volume(Volume(lab, aff), d / "GT.nii.gz")


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    for i in range(1, 4):
        _case(root, f"Patient_{i:02d}", seed=i)
    return root


# ------------------------------------------------------------------------------------------------ export


def test_export_writes_nnunet_raw_layout(cohort: Path, tmp_path: Path) -> None:
    folder = export.export_dataset(cohort, tmp_path / "raw", dataset_id=55, name="SegTHOR")
    assert folder == tmp_path / "raw" / "Dataset055_SegTHOR"
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"}
    assert ds["labels"] == {"background": 0, "esophagus": 1, "heart": 2, "trachea": 3, "aorta": 4}
    assert ds["numTraining"] == 3 and ds["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "SegTHOR_001_0000.nii.gz", "SegTHOR_002_0000.nii.gz", "SegTHOR_003_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [
        "SegTHOR_001.nii.gz", "SegTHOR_002.nii.gz", "SegTHOR_003.nii.gz"]
    mapping = export.read_mapping(folder)
    assert mapping == {"SegTHOR_001": "Patient_01", "SegTHOR_002": "Patient_02", "SegTHOR_003": "Patient_03"}
    src = cohort / "train" / "Patient_02"
    assert (folder / "imagesTr" / "SegTHOR_002_0000.nii.gz").read_bytes() == (src / "Patient_02.nii.gz").read_bytes()
    assert (folder / "labelsTr" / "SegTHOR_002.nii.gz").read_bytes() == (src / "GT.nii.gz").read_bytes()
    assert not (folder / "imagesTr" / "SegTHOR_002_0000.nii.gz").is_symlink()
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]  # no temporary left


def test_export_symlink_mode(cohort: Path, tmp_path: Path) -> None:
    folder = export.export_dataset(cohort, tmp_path / "raw", mode="symlink")
    link = folder / "labelsTr" / "SegTHOR_001.nii.gz"
    assert link.is_symlink()
    assert link.resolve() == (cohort / "train" / "Patient_01" / "GT.nii.gz").resolve()


def test_export_refuses_existing_folder_and_id_clash(cohort: Path, tmp_path: Path) -> None:
    export.export_dataset(cohort, tmp_path / "raw")
    with pytest.raises(ConfigError, match="already exists"):
        export.export_dataset(cohort, tmp_path / "raw")
    export.export_dataset(cohort, tmp_path / "raw", overwrite=True)
    with pytest.raises(ConfigError, match="already used by Dataset055_SegTHOR"):
        export.export_dataset(cohort, tmp_path / "raw", name="Other")
    with pytest.raises(ConfigError, match=r"1\.\.999"):
        export.export_dataset(cohort, tmp_path / "raw", dataset_id=1000)
    with pytest.raises(ConfigError, match="mode"):
        export.export_dataset(cohort, tmp_path / "raw2", mode="hardlink")


def test_export_rejects_bad_labels_and_grids_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    _case(bad, "Patient_01")
    _case(bad, "Patient_02", label_value=7)
    with pytest.raises(InputError, match=r"Patient_02/GT\.nii\.gz: labels outside 0-4: \[7\]"):
        export.export_dataset(bad, tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset055_SegTHOR").exists()

    grid = tmp_path / "grid"
    _case(grid, "Patient_01")
    lab = load_label(grid / "train" / "Patient_01" / "GT.nii.gz")
    lab.affine = np.diag([2.0, 2.0, 2.5, 1.0])
    save_volume(lab, grid / "train" / "Patient_01" / "GT.nii.gz")
    with pytest.raises(InputError, match=r"label grid differs from image Patient_01\.nii\.gz: spacing"):
        export.export_dataset(grid, tmp_path / "raw")


def test_export_passes_nnunet_integrity_check_and_the_check_can_fail(cohort: Path, tmp_path: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    with env.nnunet_environment(tmp_path / "nn", num_processes=1), env.thread_pools():
        folder = export.export_dataset(cohort, tmp_path / "nn" / "nnUNet_raw")
        verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem

        bad = tmp_path / "bad"
        _case(bad, "Patient_01")
        _case(bad, "Patient_02", label_value=7)
        folder = export.export_dataset(bad, tmp_path / "nn" / "nnUNet_raw", check=False, overwrite=True)
        with pytest.raises((RuntimeError, AssertionError)):
            verify_dataset_integrity(str(folder), num_processes=1)


def test_cli_export(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["nnunet", "export", "--data", str(cohort), "--out", str(tmp_path / "raw"),
                 "--dataset-id", "56", "--name", "Thorax"])
    assert code == 0
    assert "wrote 3 case(s)" in capsys.readouterr().out
    assert (tmp_path / "raw" / "Dataset056_Thorax" / "dataset.json").is_file()
    code = main(["nnunet", "export", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "raw")])
    assert code == 1
    assert "missing: folder not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ environment


def test_environment_is_scoped_and_restored(tmp_path: Path) -> None:
    import nnunetv2.configuration as nn_config
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nn_trainer

    os.environ["nnUNet_raw"] = "/sentinel/raw"
    os.environ.pop("nnUNet_results", None)
    before_nproc = (nn_config.default_num_processes, nn_trainer.default_num_processes)
    try:
        with pytest.raises(KeyError), env.nnunet_environment(tmp_path / "nn", n_proc_da=0, num_processes=3) as p:
            from nnunetv2.paths import nnUNet_raw, nnUNet_results

            assert os.fspath(nnUNet_raw) == str(p.raw) == str((tmp_path / "nn" / "nnUNet_raw").resolve())
            assert os.fspath(nnUNet_results) == str(p.results)
            assert os.environ["nnUNet_n_proc_DA"] == "0"
            assert nn_trainer.default_num_processes == 3 == nn_config.default_num_processes
            raise KeyError("boom")  # restored on errors too
        assert os.environ["nnUNet_raw"] == "/sentinel/raw"
        assert "nnUNet_results" not in os.environ
        assert (nn_config.default_num_processes, nn_trainer.default_num_processes) == before_nproc
    finally:
        os.environ.pop("nnUNet_raw", None)


def test_thread_pools_replace_and_restore_multiprocessing() -> None:
    import multiprocessing

    import nnunetv2.preprocessing.preprocessors.default_preprocessor as prep

    with env.thread_pools():
        with prep.multiprocessing.get_context("spawn").Pool(2) as pool:
            assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
            assert all(w.is_alive() for w in pool._pool)  # nnU-Net polls workers like this
        assert prep.multiprocessing is not multiprocessing
    assert prep.multiprocessing is multiprocessing


# ------------------------------------------------------------------------------------------------ settings


def test_parse_folds_and_errors() -> None:
    assert nnsettings.parse_folds("0") == [0]
    assert nnsettings.parse_folds(["all", 1, 1]) == ["all", 1]
    assert nnsettings.parse_folds("0-4") == [0, 1, 2, 3, 4]
    for bad in ("x", "3-1", "", "0,-"):
        with pytest.raises(ConfigError):
            nnsettings.parse_folds(bad)


def test_resolve_settings_merges_config_and_arguments(tmp_path: Path) -> None:
    s = nnsettings.resolve_settings(None)
    assert (s["plans"], s["folds"], s["epochs"], s["iterations_per_epoch"]) == ("default", [0], 1000, 250)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: nnunet3d\nnnunet:\n  plans: cpu\n  epochs: 7\n  seed: 3\n")
    s = nnsettings.resolve_settings(cfg, epochs=9)
    assert (s["plans"], s["epochs"], s["seed"], s["iterations_per_epoch"]) == ("cpu", 9, 3, 40)
    assert (s["oversample_foreground"], s["final_validation"]) == (0.33, False)  # nnU-Net's sampling
    with pytest.raises(ConfigError, match=r"unknown nnunet3d setting: epochz \(did you mean epochs\?"):
        nnsettings.resolve_settings({"epochz": 3})
    with pytest.raises(ConfigError, match="setting epochs: cannot use 'many'"):
        nnsettings.resolve_settings({"epochs": "many"})
    assert nnsettings.resolve_settings({"final_validation": "false", "verbose": "yes"}, plans="default")[
        "final_validation"] is False  # typed, not bool("false")
    with pytest.raises(ConfigError, match="model 'enet'"):
        nnsettings.resolve_settings({"model": "enet"})
    with pytest.raises(ConfigError, match="plans: 'gpu' is not one of default, cpu"):
        nnsettings.resolve_settings(None, plans="gpu")
    assert nnsettings.resolve_settings(None, device="cuda:1")["device"] == "cuda:1"
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        nnsettings.resolve_settings(None, device="gpu")
    with pytest.raises(InputError, match="config file not found"):
        nnsettings.resolve_settings(tmp_path / "none.yaml")


def test_train_rejects_cuda_without_gpu_and_empty_data(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            api.train_nnunet(tmp_path, tmp_path / "run", device="cuda")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cases found"):
        api.train_nnunet(tmp_path / "empty", tmp_path / "run", plans="cpu")
    assert not (tmp_path / "run").exists()


def test_predict_rejects_a_folder_that_is_not_an_nnunet_run(tmp_path: Path, cohort: Path) -> None:
    with pytest.raises(InputError, match=r"config\.yaml: not a training run folder"):
        api.predict_nnunet(tmp_path, cohort, tmp_path / "pred")
    (tmp_path / "config.yaml").write_text("model: enet\n")
    with pytest.raises(InputError, match="not an nnunet3d run"):
        api.predict_nnunet(tmp_path, cohort, tmp_path / "pred")
    with pytest.raises(ConfigError, match="batch_size do not apply to nnunet3d"):  # the 2D arms' option
        get_arm("nnunet3d").predict(tmp_path, cohort, tmp_path / "pred", batch_size=4)


# ------------------------------------------------------------------------------------------------ plans


def _default_plans(spacing=(2.5, 0.8, 0.8), patch=(80, 192, 160)) -> dict:
    _, strides, kernels = plans._topology(list(spacing), list(patch))
    n = len(strides)
    return {
        "dataset_name": "Dataset055_SegTHOR", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2],
        "configurations": {
            "2d": {"data_identifier": "nnUNetPlans_2d"},
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": list(patch),
                "spacing": list(spacing),
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": n, "features_per_stage": [min(320, 32 * 2**i) for i in range(n)],
                        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels, "strides": strides,
                        "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            },
        },
    }


@pytest.mark.parametrize("cpu", [plans.CPU_PLAN, plans.LEGACY_CPU_PLAN,
                                 plans.CpuPlan(max_patch=(24, 96, 96), base_features=4, max_features=32, batch_size=1)])
def test_make_cpu_plans_reduces_network_and_keeps_data_settings(cpu: plans.CpuPlan) -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    default = _default_plans()
    out = plans.make_cpu_plans(default, cpu)
    assert default["configurations"]["3d_fullres"]["batch_size"] == 2 and "2d" in default["configurations"]
    assert out["plans_name"] == "nnUNetPlans_cpu" and list(out["configurations"]) == ["3d_fullres"]
    cfg = out["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    assert cfg["data_identifier"] == "nnUNetPlans_cpu_3d_fullres"
    assert cfg["spacing"] == [2.5, 0.8, 0.8] and cfg["batch_size"] == cpu.batch_size
    # capped per axis, and never larger than nnU-Net's own patch (80, 192, 160)
    assert all(p <= min(m, d) for p, m, d in zip(cfg["patch_size"], cpu.max_patch, (80, 192, 160), strict=True))
    assert arch["features_per_stage"][0] == cpu.base_features
    assert max(arch["features_per_stage"]) <= cpu.max_features
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == arch["n_stages"] == len(arch["n_conv_per_stage"])
    assert out["thoraxseg_cpu_plan"]["nnunet_default"]["patch_size"] == [80, 192, 160]
    assert out["thoraxseg_cpu_plan"]["cpu_plan"] == cpu.as_dict()
    net = get_network_from_plans(cfg["architecture"]["network_class_name"], arch,
                                 cfg["architecture"]["_kw_requires_import"], 1, 5, allow_init=True,
                                 deep_supervision=False)
    with torch.no_grad():
        o = net(torch.zeros(1, 1, *cfg["patch_size"]))
    assert tuple(o.shape) == (1, 5, *cfg["patch_size"])
    with pytest.raises(ConfigError, match="3d_fullres"):
        plans.make_cpu_plans({"configurations": {"2d": {}}})


@pytest.mark.parametrize(("value", "match"), [
    ([16, 128, 128], "must be a mapping"),
    ({"max_patch": [16, 128]}, "max_patch must be three integers"),
    ({"max_patch": [4, 128, 128]}, "max_patch must be three integers"),
    ({"max_patch": "16,128,128"}, "max_patch must be three integers"),
    ({"base_features": 0}, "base_features must be an integer >= 1"),
    ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ({"base_features": 32, "max_features": 16}, "max_features .16. must be >= base_features .32."),
    ({"patch": [16, 128, 128]}, "unknown cpu_plan setting.*patch.*known: max_patch"),
])
def test_cpu_plan_settings_are_checked(value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plans.CpuPlan.from_settings(value)  # type: ignore[arg-type]


def test_cpu_plan_setting_is_resolved_and_refused_for_the_default_plan() -> None:
    s = nnsettings.resolve_settings(None, plans="cpu", cpu_plan={"base_features": 4, "max_features": 32})
    assert s["cpu_plan"] == {**plans.CPU_PLAN.as_dict(), "base_features": 4, "max_features": 32}
    assert nnsettings.resolve_settings(None, plans="cpu")["cpu_plan"] is None  # filled in per run (new or continued)
    with pytest.raises(ConfigError, match="cpu_plan is a setting of --plans cpu"):
        nnsettings.resolve_settings(None, plans="default", cpu_plan={"base_features": 4})


def test_a_run_continues_with_the_cpu_plan_it_was_made_with(cohort: Path, tmp_path: Path) -> None:
    import yaml

    new = nntrain._start(cohort, tmp_path / "new", None, {"plans": "cpu"})[2]
    assert new["cpu_plan"] == plans.CPU_PLAN.as_dict()
    run = tmp_path / "old"
    run.mkdir()
    old_cfg = {"model": "nnunet3d", "data": str(cohort.resolve()), "plans": "cpu", "dataset_id": 55,
               "dataset_name": "SegTHOR"}  # written before cpu_plan was recorded
    (run / "config.yaml").write_text(yaml.safe_dump(old_cfg))
    assert nntrain._start(cohort, run, None, {"plans": "cpu"})[2]["cpu_plan"] == plans.LEGACY_CPU_PLAN.as_dict()
    with pytest.raises(ConfigError, match="other cpu_plan"):
        nntrain._start(cohort, run, None, {"plans": "cpu", "cpu_plan": plans.CPU_PLAN.as_dict()})
    (run / "config.yaml").write_text(yaml.safe_dump({**old_cfg, "cpu_plan": {**plans.CPU_PLAN.as_dict(),
                                                                             "base_features": 4}}))
    assert nntrain._start(cohort, run, None, {"plans": "cpu"})[2]["cpu_plan"]["base_features"] == 4


@settings(max_examples=40, deadline=None)
@given(spacing=st.lists(st.floats(0.5, 8.0), min_size=3, max_size=3),
       patch=st.lists(st.integers(8, 320), min_size=3, max_size=3))
def test_cpu_patch_fits_the_cap_and_the_pooling(spacing: list[float], patch: list[int]) -> None:
    new, strides, kernels = plans.cpu_patch_and_topology(spacing, patch, (48, 64, 64))
    assert all(p <= m for p, m in zip(new, (48, 64, 64), strict=True))
    assert len(strides) == len(kernels)
    factor = np.prod(np.array(strides), axis=0)
    assert all(p % f == 0 for p, f in zip(new, factor, strict=True))


# ------------------------------------------------------------------------------------------------ axis mapping


class _Threshold(torch.nn.Module):
    """A voxel-wise 'network': heart (2) where the normalised CT is > 0, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x[:, :1] * 10
        low = torch.full_like(z, -100.0)
        return torch.cat([-z, low, z, low, low], dim=1)


def _stub_predictor(spacing_zyx: list[float], transpose: list[int], patch: list[int], tta: bool = True):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    backward = [int(np.argsort(transpose)[i]) for i in range(3)]
    spacing_t = [spacing_zyx[i] for i in transpose]
    cfg = _default_plans(tuple(spacing_t), tuple(patch))["configurations"]["3d_fullres"]
    cfg.update({
        "preprocessor_name": "DefaultPreprocessor", "median_image_size_in_voxels": patch,
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
    })
    plan = {
        "dataset_name": "Dataset055_SegTHOR", "plans_name": "test", "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": spacing_t, "original_median_shape_after_transp": patch,
        "transpose_forward": transpose, "transpose_backward": backward, "configurations": {"3d_fullres": cfg},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        # CT normalisation: clip to [p0.5, p99.5], subtract mean 100 HU, divide by std 100 HU
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 4000.0, "mean": 100.0, "median": 100.0, "min": -2000.0, "percentile_00_5": -2000.0,
            "percentile_99_5": 4000.0, "std": 100.0}},
    }
    pm = PlansManager(plan)
    dataset_json = export.nnunet_dataset_json(1)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    net = _Threshold()
    predictor.manual_initialization(net, pm, pm.get_configuration("3d_fullres"), [net.state_dict()], dataset_json,
                                    "stub", (0, 1, 2))
    return predictor


def _check_mapping(volume: Volume, transpose: list[int], patch: list[int], tta: bool = True) -> None:
    predictor = _stub_predictor(list(volume.spacing[::-1]), transpose, patch, tta)
    seg = api.predict_array(predictor, volume)
    expected = np.where(volume.array > 100, 2, 0)
    assert seg.shape == volume.shape and seg.dtype == np.uint8
    agreement = float((seg == expected).mean())
    assert agreement > 0.999, agreement  # a flipped or transposed axis gives far less


def test_predict_array_keeps_nifti_axis_order_anisotropic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.normal(-300, 300, (30, 22, 14)).astype(np.int16)
    arr[3:17, 2:8, 1:5] = 600  # an asymmetric bright block
    aff = np.array([[0, -1.2, 0, 30], [-0.9, 0, 0, 10], [0, 0, 2.5, -40], [0, 0, 0, 1.0]])  # swapped, flipped
    vol = Volume(arr, aff)
    save_volume(vol, tmp_path / "ct.nii.gz")
    vol = load_image(tmp_path / "ct.nii.gz")
    _check_mapping(vol, [0, 1, 2], [16, 16, 16])
    _check_mapping(vol, [2, 0, 1], [16, 16, 16], tta=False)


@pytest.mark.realct
def test_predict_array_keeps_axis_order_on_real_lps_ct(realct_dir: Path) -> None:
    vol = load_image(realct_dir / "Patient_R1.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    _check_mapping(vol, [0, 1, 2], [64, 64, 64], tta=False)


# ------------------------------------------------------------------------------------------------ run log


def test_run_log_csv_and_curves(tmp_path: Path) -> None:
    log = {"train_losses": [1.0, 0.5], "val_losses": [0.9, 0.4], "mean_fg_dice": [0.2, float("nan")],
           "dice_per_class_or_region": [[0.1, 0.2, 0.3, 0.2], [0.5, float("nan"), 0.7, 0.6]],
           "lrs": [0.01, 0.005], "epoch_start_timestamps": [0.0, 5.0], "epoch_end_timestamps": [4.0, 9.5]}
    rows = runlog.rows_from_logger(log, fold="all")
    runlog.write_log_csv(tmp_path / "log.csv", rows)
    back = runlog.read_log_csv(tmp_path / "log.csv")
    assert list(back[0]) == list(runlog.LOG_COLUMNS)
    assert [r["epoch"] for r in back] == ["0", "1"]
    assert back[1]["val_dice_heart"] == "" and back[1]["val_dice_mean"] == ""  # NaN → empty cell
    assert back[1]["seconds"] == "4.5" and back[0]["fold"] == "all"
    plot_curves(back, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_find_checkpoint_order(tmp_path: Path) -> None:
    assert find_checkpoint(tmp_path) is None
    for name in ("checkpoint_best.pth", "checkpoint_latest.pth"):
        (tmp_path / name).write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "checkpoint_latest.pth"
    assert find_checkpoint(tmp_path, prefer="best").name == "checkpoint_best.pth"
    (tmp_path / "checkpoint_final.pth").write_bytes(b"x")
    assert find_checkpoint(tmp_path).name == "checkpoint_final.pth"
    os.utime(tmp_path / "checkpoint_final.pth", ns=(1, 1))  # an extended run: latest is newer than final
    assert find_checkpoint(tmp_path, newest=True).name == "checkpoint_latest.pth"
    assert find_checkpoint(tmp_path).name == "checkpoint_final.pth"  # prediction keeps nnU-Net's order
    with pytest.raises(ConfigError):
        find_checkpoint(tmp_path, prefer="newest")


def test_cli_prepare_plans_and_preprocesses_without_training(cohort: Path, tmp_path: Path) -> None:
    before = {k: v for k, v in os.environ.items() if k.startswith("nnUNet")}
    run = tmp_path / "run"
    assert main(["nnunet", "prepare", "--data", str(cohort), "--out", str(run), "--plans", "cpu"]) == 0
    pre = run / "nnunet" / "nnUNet_preprocessed" / "Dataset055_SegTHOR"
    cpu = json.loads((pre / "nnUNetPlans_cpu.json").read_text())
    assert cpu["plans_name"] == "nnUNetPlans_cpu" and "thoraxseg_cpu_plan" in cpu
    assert len(list((pre / "nnUNetPlans_cpu_3d_fullres").glob("*_seg.b2nd"))) == 3
    splits = json.loads((pre / "splits_final.json").read_text())
    assert len(splits) == 3 and all(len(s["val"]) == 1 for s in splits)  # k = min(5, cases)
    cfg = api.read_run_config(run)
    assert cfg["resolved"]["plans_identifier"] == "nnUNetPlans_cpu"
    assert not (run / "nnunet" / "nnUNet_results" / "Dataset055_SegTHOR").exists()
    assert {k: v for k, v in os.environ.items() if k.startswith("nnUNet")} == before
    marker = (run / "nnunet" / "prepared.json").read_text()
    api.prepare_nnunet(cohort, run, plans="cpu")  # prepared already: nothing redone
    assert (run / "nnunet" / "prepared.json").read_text() == marker
