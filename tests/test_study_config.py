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
        ({"data": {"phantom": {}}, "arms": {"x": {"model": "resnet"}}}, "model must be one of"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "colour": 1}, "unknown keys: colour"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "device": "tpu"}, "device must be"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "realign": {"method": "icp"}}, "sweep, elastix or qa"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "realign": {"enabled": "maybe"}}, "auto, true or false"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "threads": 0}, "threads must be a positive integer"),
        ({"data": {"phantom": {}}, "arms": {"enet": {}}, "threads": "two"}, "threads must be a positive integer"),
    ],
)
def test_bad_configs(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudyConfig.from_dict(raw)


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
