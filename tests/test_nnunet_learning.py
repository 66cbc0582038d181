"""The nnU-Net arm learns on realistic data and predicts where the organs are (slow, a few CPU minutes).

The other nnU-Net tests train a handful of steps and check plumbing; this one would have caught the
demo's first nnU-Net run, whose validation pseudo Dice was 0.93 for the heart while its whole-volume
predictions on new patients lay in the air outside the body (every training patch had been centred on
an organ, so the network never saw the rest of the thorax). It trains the ``--plans cpu`` network on
small phantoms, predicts held-out phantoms through the public path and checks accuracy and location.
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

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    base = tmp_path_factory.mktemp("nnunet_learning")
    train = generate_cohort(base / "train", 8, size="small", seed=0, progress=False)
    test = generate_cohort(base / "test", 2, size="small", seed=1000, progress=False)
    run = base / "run"
    # 800 steps of the CPU plan (~4 min on 2 cores): enough for the heart, the largest organ
    api.train_nnunet(train, run, plans="cpu", folds="0", epochs=20, iterations_per_epoch=40,
                     val_iterations_per_epoch=2, final_validation=False, seed=0)
    pred = base / "pred"
    api.predict_nnunet(run, test, pred, tta=False)
    return test, pred, evaluate_folders(test, pred)


def test_heart_is_segmented_on_new_patients(learned: tuple[Path, Path, pd.DataFrame]) -> None:
    _, _, df = learned
    heart = df[df["organ"] == "heart"]
    assert len(heart) == 2
    assert (heart["dice"] > 0.6).all(), heart[["patient", "dice", "hd95"]].to_string()
    # after 800 steps the heart still leaks into the adjacent liver in places (HD95 ~55-75 mm; the demo's
    # 1440 steps reach 8 mm); the failure this guards against put the heart 300-400 mm away
    assert (heart["hd95"] < 100).all(), heart[["patient", "dice", "hd95"]].to_string()


def test_predicted_soft_tissue_organs_lie_inside_the_body(learned: tuple[Path, Path, pd.DataFrame]) -> None:
    """Heart, aorta and esophagus predictions are on soft tissue/blood, not on air (< -400 HU)."""
    test, pred, _ = learned
    for case in discover_cases(test):
        ct = load_image(case.image_path).array
        labels = load_label(pred / f"{case.patient_id}.nii.gz").array
        assert (labels == 2).sum() > 100, f"{case.patient_id}: no heart predicted"
        for code in (1, 2, 4):  # esophagus, heart, aorta (the trachea is air)
            mask = labels == code
            if mask.any():
                air = float(np.mean(ct[mask] < -400))
                assert air < 0.1, f"{case.patient_id}: {air:.0%} of predicted label {code} is air"
