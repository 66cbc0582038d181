"""Slice-wise 2D prediction stitched into 3D: source geometry, exact stitching, post-processing, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import cc3d
import numpy as np
import pytest
import torch
from torch import nn

from test_training_toydata import make_toy_case, make_toy_cohort
from thoraxseg.cli import main
from thoraxseg.data.layout import discover_cases
from thoraxseg.data.volume import Volume, load_image, load_label, same_geometry, save_volume
from thoraxseg.errors import InputError
from thoraxseg.inference import predict
from thoraxseg.inference.predict2d import load_run_model, predict_array
from thoraxseg.networks import build_model
from thoraxseg.training.config import dump_yaml, resolve_config
from thoraxseg.training.trainer import CHECKPOINT_FORMAT


def make_run(run: Path, model: str = "enet", width: int = 4, image_size: int = 64, seed: int = 0,
             spacing_mm: float | None = 3.0) -> Path:
    """A run folder holding an untrained network (enough to test geometry and plumbing).

    ``spacing_mm=None`` makes a square-resize run (``preprocessing: square``).
    """
    settings = {"model": model, "width": width, "image_size": image_size}
    settings.update({"spacing_mm": spacing_mm} if spacing_mm is not None else {"preprocessing": "square"})
    cfg = resolve_config(settings)
    torch.manual_seed(seed)
    net = build_model(model, width=width)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": 0, "model": net.state_dict()},
               run / "best.pt")
    return run


class ThresholdNet(nn.Module):
    """Logits from the windowed intensity alone: aorta where HU > 150, trachea where HU < −900, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, H, W), window −1000…1000 → [−1, 1]
        logits = torch.zeros(x.shape[0], 5, *x.shape[2:])
        logits[:, 4] = 50 * (x[:, 0] - 0.15)
        logits[:, 3] = 50 * (-0.9 - x[:, 0])
        return logits


def _threshold(ct: np.ndarray) -> np.ndarray:
    out = np.zeros(ct.shape, np.uint8)
    out[ct > 150] = 4
    out[ct < -900] = 3
    return out


@pytest.mark.parametrize("shape", [(32, 32, 6), (32, 24, 5), (20, 28, 3)])
def test_stitching_is_exact_without_resize(shape: tuple[int, int, int]) -> None:
    ct, _ = make_toy_case(shape, seed=1)
    labels = predict_array(ThresholdNet(), ct, image_size=max(shape[:2]), batch_size=4)
    assert labels.shape == ct.shape and labels.dtype == np.uint8
    assert np.array_equal(labels, _threshold(ct))


def test_stitching_resizes_back_to_the_source_grid() -> None:
    ct, _ = make_toy_case((48, 40, 4), seed=2)
    labels = predict_array(ThresholdNet(), ct, image_size=96, batch_size=3)
    assert labels.shape == ct.shape
    assert (labels == _threshold(ct)).mean() > 0.97


@pytest.mark.realct
def test_prediction_has_the_source_geometry_on_real_ct(realct_dir: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", "enet", width=4, image_size=64)
    out = tmp_path / "pred"
    written = predict(run, realct_dir, out, device="cpu", batch_size=48)
    assert written == [out / "Patient_R1.nii.gz"]
    src = load_image(realct_dir / "Patient_R1.nii.gz")
    pred = load_label(written[0])
    assert same_geometry(src, pred) is None
    assert pred.shape == src.shape == (120, 126, 164)
    assert np.array_equal(pred.affine, src.affine)
    assert pred.header is not None and pred.header.get_data_dtype() == np.uint8
    assert int(pred.header["sform_code"]) == int(src.header["sform_code"])
    assert set(np.unique(pred.array).tolist()) <= {0, 1, 2, 3, 4}


def test_cli_predict_writes_every_case_and_postprocesses(tmp_path: Path) -> None:
    data = make_toy_cohort(tmp_path / "data", cases=2, shape=(40, 40, 10))
    run = make_run(tmp_path / "run", "customnet", width=4, image_size=32, seed=5)
    assert main(["predict", "--run", str(run), "--images", str(data), "--out", str(tmp_path / "pp")]) == 0
    assert main(["predict", "--run", str(run), "--images", str(data), "--out", str(tmp_path / "raw"),
                 "--no-postprocess", "--batch-size", "3"]) == 0
    for case in discover_cases(data):
        pp = load_label(tmp_path / "pp" / f"{case.patient_id}.nii.gz")
        raw = load_label(tmp_path / "raw" / f"{case.patient_id}.nii.gz")
        assert same_geometry(pp, load_image(case.image_path)) is None
        keep = pp.array > 0
        assert np.array_equal(pp.array[keep], raw.array[keep])  # post-processing only removes voxels
        for organ in range(1, 5):
            assert cc3d.connected_components(pp.array == organ, connectivity=26).max() <= 1


def test_untrained_runs_fall_back_and_bad_runs_fail_cleanly(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "best.pt").rename(run / "last.pt")
    model, cfg = load_run_model(run)  # best.pt missing: last.pt is used
    assert cfg["model"] == "enet" and not model.training
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        load_run_model(run)
    with pytest.raises(InputError, match=r"config\.yaml missing"):
        predict(tmp_path / "nowhere", tmp_path, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("model: enet\n")
    with pytest.raises(InputError, match="no checkpoint"):
        predict(tmp_path / "empty", tmp_path, tmp_path / "out")


def test_flat_image_folder_is_accepted(tmp_path: Path) -> None:
    ct, _ = make_toy_case((32, 32, 4), seed=3)
    save_volume(Volume(ct, np.diag([1.5, 1.5, 2.5, 1.0])), tmp_path / "imgs" / "Patient_09.nii.gz")
    run = make_run(tmp_path / "run", "enet", width=4, image_size=32)
    written = predict(run, tmp_path / "imgs", tmp_path / "pred", postprocess=False)
    assert [p.name for p in written] == ["Patient_09.nii.gz"]
    assert load_label(written[0]).spacing == (1.5, 1.5, 2.5)


def test_a_failed_prediction_leaves_the_output_folder_as_it_was(tmp_path: Path) -> None:
    data = make_toy_cohort(tmp_path / "data", cases=3, shape=(40, 40, 6))
    cases = discover_cases(data)
    run = make_run(tmp_path / "run", "enet", width=4, image_size=32)
    cases[-1].image_path.write_bytes(cases[-1].image_path.read_bytes()[:200])  # the last CT truncated
    with pytest.raises(InputError, match=cases[-1].patient_id):
        predict(run, data, tmp_path / "new" / "pred")
    assert not (tmp_path / "new").exists()  # not even its parent is created
    old = tmp_path / "old"
    old.mkdir()
    (old / f"{cases[0].patient_id}.nii.gz").write_bytes(b"an earlier prediction")
    with pytest.raises(InputError, match=cases[-1].patient_id):
        predict(run, data, old)
    assert [p.name for p in old.iterdir()] == [f"{cases[0].patient_id}.nii.gz"]  # untouched: no temp folder left
    assert (old / f"{cases[0].patient_id}.nii.gz").read_bytes() == b"an earlier prediction"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    shutil.rmtree(cases[-1].image_path.parent)  # now every case reads: the earlier file is replaced, the others added
    written = predict(run, data, old)
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in written) and len(written) == 2
    assert load_label(old / f"{cases[0].patient_id}.nii.gz").shape == (40, 40, 6)
