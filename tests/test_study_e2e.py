"""End to end: `thoraxseg study` on a tiny phantom cohort — every stage, three arms, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study_fixture import TINY_2D_ARMS, tiny_study_config
from thoraxseg.cli import main
from thoraxseg.data.volume import load_image, load_label, same_geometry
from thoraxseg.labels import ORGAN_NAMES

TINY = tiny_study_config(
    {"phantom": {"cases": 6, "size": "small", "seed": 3, "corrupt_heart": True}, "test_cases": 2},
    arms={**TINY_2D_ARMS,
          "nnunet3d": {"model": "nnunet3d", "epochs": 1,
                       "config": {"plans": "cpu", "folds": "0", "iterations_per_epoch": 2,
                                  "val_iterations_per_epoch": 1, "final_validation": False},
                       "predict": {"tta": False}}},
)


@pytest.mark.slow
def test_tiny_study_runs_every_stage_and_resumes(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    study = tmp_path / "study"
    assert main(["study", "--config", str(cfg), "--out", str(study)]) == 0
    out = capsys.readouterr().out
    assert str((study / "report.html").resolve()) in out.replace("\n", "")

    # data, check and the label fix
    check = json.loads((study / "check.json").read_text())
    assert check["ok"] and check["n_warnings"] == 6  # every moved heart flagged
    fix = json.loads((study / "realign" / "fix.json").read_text())
    assert abs(abs(fix["rotation"]["angle_deg"]) - 27.0) < 0.5
    after = json.loads((study / "check_fixed.json").read_text())
    assert after["ok"] and after["n_warnings"] == 0  # the fix removed every warning
    split = json.loads((study / "data" / "split.json").read_text())
    assert len(split["test"]) == 2 and len(split["train"]) == 4 and not set(split["test"]) & set(split["train"])

    # every arm: run folder, predictions in the source geometry, metrics for every test patient and organ
    for arm in ("enet", "customnet", "nnunet3d"):
        run = study / "arms" / arm / "run"
        assert (run / "config.yaml").is_file() and (run / "log.csv").is_file()
        for pid in split["test"]:
            pred = load_label(study / "arms" / arm / "pred" / f"{pid}.nii.gz")
            image = load_image(study / "data" / "testset" / pid / f"{pid}.nii.gz")
            assert same_geometry(pred, image) is None
        metrics = pd.read_csv(study / "arms" / arm / "metrics.csv")
        assert sorted(metrics["patient"].unique()) == split["test"]
        assert set(metrics["organ"]) == set(ORGAN_NAMES)
        assert metrics["dice"].between(0, 1).all()

    stats = pd.read_csv(study / "compare" / "stats.csv")
    assert {"enet", "customnet", "nnunet3d"} <= set(stats["arm_a"]) | set(stats["arm_b"])
    html = (study / "report.html").read_text()
    assert html.count("<img") >= 8 and "http://" not in html and "https://" not in html

    # resume: a finished study skips everything (another thread count is not another study);
    # a removed stage (and what follows it) re-runs
    assert main(["study", "--config", str(cfg), "--out", str(study), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    ran = [ln for ln in out.splitlines() if "study: " in ln and "already complete" not in ln]
    assert ran == [] and out.count("already complete") == 4 + 3 * 3 + 2
    (study / ".stages" / "report.json").unlink()
    (study / "report.html").unlink()
    assert main(["study", "--config", str(cfg), "--out", str(study)]) == 0
    assert (study / "report.html").is_file()

    # another configuration in the same folder is refused
    changed = dict(TINY, seed=1)
    cfg.write_text(yaml.safe_dump(changed))
    assert main(["study", "--config", str(cfg), "--out", str(study)]) == 1
    assert "another configuration" in capsys.readouterr().err
