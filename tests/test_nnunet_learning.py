"""The nnU-Net arm learns all four organs on realistic data and predicts where they are (slow, ~10 CPU minutes).

The other nnU-Net tests train a handful of steps and check plumbing; this one would have caught the
demo's first nnU-Net run, whose validation pseudo Dice was 0.93 for the heart while its whole-volume
predictions on new patients lay in the air outside the body (every training patch had been centred on
an organ, so the network never saw the rest of the thorax), and the previous demo's, which found no esophagus
and no trachea (per-patch Dice on 32³ patches). It trains the default ``--plans cpu`` run (the demo's
2400 steps) on the demo's number of small phantoms, predicts held-out phantoms through the public path
and checks accuracy and location.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thoraxseg.data.layout import discover_cases
from thoraxseg.data.phantom import generate_cohort
from thoraxseg.data.volume import load_image, load_label
from thoraxseg.metrics.evaluate import evaluate_folders
from thoraxseg.nnunet import api

# The module-scoped training (~9 min on 2 idle cores) counts against its first test's timeout; the
# project's 30 min (pyproject.toml) leaves no room for a machine 3x slower or a loaded one (it passed 30 min
# with a second training beside it), so this module gets 60 min.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    base = tmp_path_factory.mktemp("nnunet_learning")
    train = generate_cohort(base / "train", 12, size="small", seed=0, progress=False)
    test = generate_cohort(base / "test", 8, size="small", seed=1000, progress=False)
    run = base / "run"
    # the default CPU run, 60 x 40 steps (~9 min on 2 cores): benchmarks/nnunet_cpu_plan.py measured the
    # esophagus and trachea appearing after ~1700 steps (batch Dice) and never within 2000 steps of the
    # per-patch Dice
    api.train_nnunet(train, run, plans="cpu", folds="0", val_iterations_per_epoch=2, final_validation=False, seed=0)
    pred = base / "pred"
    api.predict_nnunet(run, test, pred, tta=False)
    return test, pred, evaluate_folders(test, pred)


def test_all_four_organs_are_segmented_on_new_patients(learned: tuple[Path, Path, pd.DataFrame]) -> None:
    _, _, df = learned
    assert len(df) == 8 * 4
    table = df.pivot(index="patient", columns="organ", values="dice").round(3).to_string()
    means = df.groupby("organ")["dice"].mean()
    # Measured on the development machine (benchmarks/nnunet_cpu_plan.py, variant "default", the same
    # cohorts): heart 0.93, aorta 0.88, trachea 0.77, esophagus 0.56 (0.28-0.75 per patient). Another
    # CPU follows another training trajectory; the bounds leave room for that, not for a missed organ.
    for organ in ("heart", "trachea", "aorta"):
        assert means[organ] > 0.6, table
    assert means["esophagus"] > 0.4, table  # the thinnest organ, ~3 voxels across on this grid
    assert (df["dice"] > 0.15).all(), table  # every organ found on every patient
    # the failure this guards against put the heart 300-400 mm away; a learned heart is within ~10 mm
    heart = df[df["organ"] == "heart"]
    assert (heart["hd95"] < 50).all(), heart[["patient", "dice", "hd95"]].to_string()


def test_predicted_soft_tissue_organs_lie_inside_the_body(learned: tuple[Path, Path, pd.DataFrame]) -> None:
    """Heart, aorta and esophagus predictions are on soft tissue/blood, not on air (< -400 HU)."""
    test, pred, _ = learned
    for case in discover_cases(test):
        ct = load_image(case.image_path).array
        labels = load_label(pred / f"{case.patient_id}.nii.gz").array
        assert (labels == 2).sum() > 100, f"{case.patient_id}: no heart predicted"
        for code in (1, 2, 4):  # esophagus, heart, aorta (the trachea is air)
            mask = labels == code
            # every organ is predicted on every patient (the Dice test requires > 0.15 each): no silent skip
            assert mask.any(), f"{case.patient_id}: label {code} not predicted"
            air = float(np.mean(ct[mask] < -400))
            assert air < 0.1, f"{case.patient_id}: {air:.0%} of predicted label {code} is air"
