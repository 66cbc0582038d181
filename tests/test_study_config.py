"""Study configuration: the shipped configs parse; bad configs give one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from thoraxseg.cli import main
from thoraxseg.errors import ConfigError
from thoraxseg.study.config import StudyConfig, load_study_config
from thoraxseg.study.pipeline import planned_stages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo.yaml", "segthor_gpu.yaml"])
def test_shipped_configs_parse(name: str) -> None:
    cfg = load_study_config(ROOT / "configs" / name)
    assert list(cfg.arms) == ["enet", "customnet", "nnunet3d"]
    assert {a.model for a in cfg.arms.values()} == {"enet", "customnet", "nnunet3d"}
    stages = planned_stages(cfg)
    assert stages[:4] == ["data", "check", "realign", "split"] and stages[-2:] == ["compare", "report"]
    assert stages.index("train:enet") < stages.index("predict:enet") < stages.index("evaluate:enet")


def test_gpu_config_has_seed_settings() -> None:
    cfg = load_study_config(ROOT / "configs" / "segthor_gpu.yaml")
    assert cfg.device == "cuda"
    assert cfg.arms["customnet"].epochs == 100 and cfg.arms["customnet"].config["image_size"] == 256
    assert cfg.arms["nnunet3d"].config["folds"] == "all"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"arms": {"enet": {}}}, "data needs"),
        ({"data": {"phantom": {}}, "arms": {}}, "no arms"),
        ({"data": {"phantom": {}}, "arms": {"x": {"model": "resnet"}}},
         "arm 'x': model: 'resnet' is not one of enet, customnet, nnunet3d"),
        ({"data": {"phantom": {}}, "arms": {"x": {"model": "enett"}}}, r"'enett' is not one of .*did you mean enet\?"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "colour": 1}, "unknown setting: colour"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "postproces": 1}, r"postproces \(did you mean postprocess\?"),
        ({"data": {"phantom": {}, "tset_cases": 2}, "arms": {"enet": {}}}, r"in data: tset_cases \(did you mean test_c"),
        ({"data": {"phantom": {}}, "arms": {"enet": {"epoch": 2}}}, r"in arms.enet: epoch \(did you mean epochs\?"),
        ({"data": {"phantom": {}}, "arms": {"enet": {"epochs": "x"}}}, "arms.enet.epochs: cannot use 'x'"),
        ({"data": {"phantom": {}}, "arms": {"enet": {"epochs": 0}}}, "epochs must be >= 1, not 0"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "device": "tpu"}, "device must be cpu, cuda or cuda:N, not 'tpu'"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "realign": {"method": "icp"}},
         "'icp' is not one of sweep, elastix, qa"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "realign": {"enabled": "maybe"}},
         "realign.enabled: 'maybe' is not one of auto, true, false"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "threads": 0}, "threads must be a positive integer"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "threads": "two"}, "threads: cannot use 'two'"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "postprocess": "maybe"}, "postprocess: cannot use 'maybe'"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "tolerance_mm": -1}, "tolerance_mm must be a finite .* not -1"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "tolerance_mm": "nan"}, "tolerance_mm must be a finite"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "n_boot": 0}, "n_boot must be >= 1"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "workers": 0}, "workers must be >= 1"),
        ({"data": {"phantom": {}, "test_cases": 0}, "arms": {"enet": {}}}, "data.test_cases must be >= 1"),
    ],
)
def test_bad_configs(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig.from_dict(raw)


def test_values_are_coerced_not_truth_tested() -> None:
    """``bool("false")`` is True: YAML strings are converted by type, not by truthiness."""
    cfg = StudyConfig.from_dict({"data": {"phantom": {}, "test_cases": "3"}, "arms": {"enet": {"epochs": "2"}},
                                 "postprocess": "false", "unpaired": "yes", "device": "cuda:1", "seed": "7",
                                 "realign": {"enabled": "False"}})
    assert cfg.postprocess is False and cfg.unpaired is True and cfg.device == "cuda:1" and cfg.seed == 7
    assert cfg.data.test_cases == 3 and cfg.arms["enet"].epochs == 2 and cfg.realign.enabled is False
    assert StudyConfig.from_dict({"data": {"phantom": {}}, "arms": {"enet": {}}}).realign.enabled == "auto"


def test_relative_root_resolves_against_config_file(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("data: {root: ../segthor}\narms: {enet: {}}\n")
    cfg = load_study_config(tmp_path / "s.yaml")
    assert cfg.data.root == str((tmp_path.parent / "segthor").resolve())


def test_cli_reports_bad_yaml_in_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {phantom: [unclosed\n")
    assert main(["study", "--config", str(bad), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid YAML" in err[0] and str(bad) in err[0]
    assert not (tmp_path / "s").exists()


def test_study_with_a_missing_data_root_leaves_no_study_folder(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("data: {root: nowhere}\narms: {enet: {}}\n")
    assert main(["study", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere") in err[0] and "not found" in err[0]
    assert not (tmp_path / "s").exists()
