"""The arm registry: the built-in arms, lookups, and a tiny extra arm run through ``thoraxseg study``.

The extra arm is registered here, in the test, and nowhere else: the study (config check,
training, prediction, evaluation, report), ``thoraxseg train``/``predict``, model bundles and
``thoraxseg segment`` find it through :mod:`thoraxseg.arms` alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from thoraxseg.arms import Arm, TrainOption, arm_names, get_arm, register_arm, unregister_arm
from thoraxseg.cli import main
from thoraxseg.data.layout import StudyLayout, discover_cases, labelled_cases
from thoraxseg.data.postprocess import keep_largest_component
from thoraxseg.data.volume import load_image, load_label, same_geometry, save_label
from thoraxseg.errors import ConfigError
from thoraxseg.labels import ORGANS
from thoraxseg.study.config import StudyConfig
from thoraxseg.utils.atomic import write_json_atomic, write_text_atomic

EXTRA = "hounsfield"


def _train(name: str, data: Path, out: Path, config: Any = None, epochs: int | None = None, device: str = "cpu",
           seed: int = 0, low: int = 10, **settings: Any) -> Path:
    """'Learns' each organ's HU window (``low``-th to (100 − ``low``)-th percentile of its labelled voxels)."""
    values: dict[int, list[np.ndarray]] = {int(o): [] for o in ORGANS}
    for case in labelled_cases(data):
        ct, lab = load_image(case.image_path).array, load_label(case.label_path).array
        for o in values:
            values[o].append(ct[lab == o])
    windows = {o: [float(np.percentile(np.concatenate(v), low)), float(np.percentile(np.concatenate(v), 100 - low))]
               for o, v in values.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "windows.json", windows)
    write_text_atomic(out / "config.yaml", yaml.safe_dump({"model": name, "data": str(data), "epochs": epochs,
                                                           "seed": seed}))
    return out


def _predict(run: Path, images: Path, out: Path, postprocess: bool = True, device: str = "cpu",
             order: str = "heart_last") -> list[Path]:
    windows = {int(k): v for k, v in json.loads((run / "windows.json").read_text()).items()}
    written = []
    for case in discover_cases(images):
        ct = load_image(case.image_path)
        labels = np.zeros(ct.shape, np.uint8)
        for organ in sorted(windows, key=lambda o: (o == 2) == (order == "heart_last")):
            low, high = windows[organ]
            labels[(ct.array >= low) & (ct.array <= high) & (labels == 0)] = organ
        if postprocess:
            labels = keep_largest_component(labels, spacing=ct.spacing)
        path = out / f"{case.patient_id}.nii.gz"
        save_label(labels, ct, path)
        written.append(path)
    return written


def _check(name: str, config: dict[str, Any], epochs: int | None) -> None:
    if set(config) - {"note"}:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(set(config) - {'note'}))}")


@pytest.fixture()
def extra_arm() -> Iterator[Arm]:
    arm = register_arm(Arm(name=EXTRA, description="HU windows per organ (test arm)", train_impl=_train,
                           predict_impl=_predict, files_impl=lambda run, cfg: {"windows.json": run / "windows.json"},
                           check_impl=_check, predict_options=("order",),
                           train_options=(TrainOption("--low", "low", "lower HU percentile of a window", int),)))
    yield arm
    unregister_arm(EXTRA)


def test_builtin_arms_in_order_and_lookup() -> None:
    assert arm_names()[:3] == ("enet", "customnet", "nnunet3d")
    assert get_arm("ENet").name == "enet" and get_arm("customnet").launcher == "torchrun"
    assert "nnunetv2" in get_arm("nnunet3d").packages and "nnunetv2" not in get_arm("enet").packages
    with pytest.raises(ConfigError, match=r"model: 'unet' is not one of enet, customnet, nnunet3d"):
        get_arm("unet")
    with pytest.raises(ValueError, match="already registered"):
        register_arm(get_arm("enet"))


def test_prediction_options_of_another_arm_are_refused() -> None:
    get_arm("nnunet3d").check_predict_options({"tta": False, "step": None, "batch_size": None})
    with pytest.raises(ConfigError, match=r"option\(s\) tta do not apply to enet \(it takes batch_size"):
        get_arm("enet").check_predict_options({"tta": False})
    with pytest.raises(ConfigError, match="arm 'a' \\(enet\\): prediction option\\(s\\) step do not apply"):
        StudyConfig.from_dict({"data": {"phantom": {}}, "arms": {"a": {"model": "enet", "predict": {"step": 0.5}}}})


def test_arm_settings_are_checked_before_any_stage() -> None:
    """A bad setting of an arm fails when the study file is read, not after the other arms trained."""
    with pytest.raises(ConfigError, match=r"arm 'e' \(enet\): .*image_size"):
        StudyConfig.from_dict({"data": {"phantom": {}}, "arms": {"e": {"model": "enet", "config": {"image_size": 30}}}})
    with pytest.raises(ConfigError, match=r"arm 'n' \(nnunet3d\): .*oversample_foreground must be in \[0, 1\]"):
        StudyConfig.from_dict({"data": {"phantom": {}},
                               "arms": {"n": {"model": "nnunet3d", "config": {"oversample_foreground": 2}}}})


@pytest.mark.slow
def test_an_arm_registered_in_a_test_runs_through_the_whole_study(extra_arm: Arm, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "study"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "name": "extra-arm", "seed": 0,
        "data": {"phantom": {"cases": 5, "size": "small", "seed": 3, "corrupt_heart": False}, "test_cases": 2},
        "realign": {"enabled": False},
        "arms": {"hu": {"model": EXTRA, "config": {"note": "x"}, "predict": {"order": "heart_last"}}},
        "n_boot": 100, "workers": 1,
    }))
    assert main(["study", "--config", str(config), "--out", str(study)]) == 0, capsys.readouterr().err
    metrics = pd.read_csv(StudyLayout(study).metrics("hu"))
    assert sorted(metrics["patient"].unique()) == sorted(json.loads(StudyLayout(study).split.read_text())["test"])
    heart = metrics[metrics["organ"] == "heart"]["dice"]
    assert len(heart) == 2 and (heart > 0.05).all()  # a HU window finds part of the blood-filled heart
    report = StudyLayout(study).report.read_text(encoding="utf-8")
    assert "<h3>hu</h3>" in report or ">hu<" in report  # the arm's own table in the report

    # the same run folder through predict, export-model and segment (a bundle of the extra arm)
    lay = StudyLayout(study)
    run, testset = lay.run("hu"), lay.testset
    case = discover_cases(testset)[0]
    assert main(["predict", "--run", str(run), "--images", str(testset), "--out", str(tmp_path / "pred")]) == 0
    assert main(["predict", "--run", str(run), "--images", str(testset), "--out", str(tmp_path / "pred2"),
                 "--no-tta"]) == 1
    assert "tta do not apply to hounsfield" in capsys.readouterr().err
    assert main(["export-model", str(run), "--out", str(tmp_path / "hu.zip")]) == 0
    assert main(["segment", str(case.image_path), "--model", str(tmp_path / "hu.zip"), "--out", str(tmp_path / "seg"),
                 "--formats", "nifti"]) == 0
    seg = load_label(next((tmp_path / "seg").rglob("labels.nii.gz")))
    pred = load_label(tmp_path / "pred" / f"{case.patient_id}.nii.gz")
    assert same_geometry(seg, load_image(case.image_path)) is None  # None: the same grid
    assert np.array_equal(seg.array, pred.array) and (seg.array == 2).any()


def test_train_cli_knows_a_registered_arm(extra_arm: Arm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_training_toydata import make_toy_cohort

    data = make_toy_cohort(tmp_path / "toy", cases=2)
    assert main(["train", "--model", EXTRA, "--data", str(data), "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "windows.json").read_text())
    assert main(["train", "--model", EXTRA, "--data", str(data), "--out", str(tmp_path / "r2"), "--lr", "0.1"]) == 1
    assert f"lr apply to enet, customnet only, not {EXTRA}" in capsys.readouterr().err
    # the arm's own flag, offered by `train` from the registry alone, and refused for the other arms
    assert main(["train", "--model", EXTRA, "--data", str(data), "--out", str(tmp_path / "r3"), "--low", "30"]) == 0
    narrow, wide = (json.loads((tmp_path / r / "windows.json").read_text()) for r in ("r3", "r"))
    widths = [(narrow[o][1] - narrow[o][0], wide[o][1] - wide[o][0]) for o in wide]
    assert all(n <= w for n, w in widths) and any(n < w for n, w in widths)  # 30-70 % inside 10-90 % of the same HU
    assert main(["train", "--model", "enet", "--data", str(data), "--out", str(tmp_path / "r4"), "--low", "30"]) == 1
    assert f"low apply to {EXTRA} only, not enet" in capsys.readouterr().err
    assert not (tmp_path / "r4").exists()
