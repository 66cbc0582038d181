"""End-to-end nnU-Net arm on a tiny synthetic cohort: train (killed, then resumed) → predict → evaluate.

One training run is shared by the module: it is started in a subprocess, SIGKILLed right
after its first epoch checkpoint, and resumed in-process; the other tests use the result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cc3d
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage

from thoraxseg.data.postprocess import keep_largest_component
from thoraxseg.data.volume import Volume, load_image, load_label, same_geometry, save_volume
from thoraxseg.errors import ConfigError
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.nnunet import api
from thoraxseg.nnunet.runlog import LOG_COLUMNS, read_log_csv

pytestmark = pytest.mark.slow

SETTINGS = {"plans": "cpu", "folds": "0", "epochs": 3, "iterations_per_epoch": 3, "val_iterations_per_epoch": 1,
            "seed": 0, "final_validation": True}
FOLD = Path("nnunet/nnUNet_results/Dataset055_SegTHOR/ThoraxsegTrainer__nnUNetPlans_cpu__3d_fullres/fold_0")

_TRAIN_SCRIPT = """
import json, sys
from thoraxseg.nnunet.api import train_nnunet
if __name__ == "__main__":
    train_nnunet(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
"""


def toy_cohort(root: Path, ids: range, seed: int, shape: tuple[int, int, int] = (32, 32, 20)) -> Path:
    """SegTHOR-layout cases with the four organs as bright/dark tubes and a blob (3 × 3 × 4 mm voxels)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    for i in ids:
        cx, cy = shape[0] / 2 + rng.uniform(-2, 2), shape[1] / 2 + rng.uniform(-2, 2)
        img = np.full(shape, -1000.0, np.float32)
        img[((x - cx) / 14) ** 2 + ((y - cy) / 12) ** 2 < 1] = -750
        lab = np.zeros(shape, np.uint8)
        r = rng.uniform(5, 6.5)
        organs = [
            (2, 40, ((x - cx - 3) / r) ** 2 + ((y - cy + 3) / (0.8 * r)) ** 2 + ((z - 6) / 5) ** 2 < 1),
            (4, 250, ((x - cx + 4) ** 2 + (y - cy - 4) ** 2 < 5) & (z > 2)),
            (3, -1000, ((x - cx) ** 2 + (y - cy + 1) ** 2 < 4) & (z > 10)),
            (1, 70, ((x - cx + 1) ** 2 + (y - cy - 2.5) ** 2 < 2) & (z > 1)),
        ]
        for code, hu, mask in organs:
            img[mask] = hu
            lab[mask] = code
        img += rng.normal(0, 10, shape)
        aff = np.diag([3.0, 3.0, 4.0, 1.0])
        aff[:3, 3] = rng.uniform(-30, 30, 3)
        d = root / "train" / f"Patient_{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        save_volume(Volume(img.astype(np.int16), aff), d / f"Patient_{i:02d}.nii.gz")
        save_volume(Volume(lab, aff), d / "GT.nii.gz")
    return root


def _nnunet_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("nnUNet")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("nnunet_e2e")
    data = toy_cohort(base / "cohort", range(1, 6), seed=0)
    held_out = toy_cohort(base / "held_out", range(6, 7), seed=1)
    run = base / "run"
    log = (base / "killed_run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, str(data), str(run), json.dumps(SETTINGS)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "THORAXSEG_NO_PROGRESS": "1", "OMP_NUM_THREADS": "2"})
    latest = run / FOLD / "checkpoint_latest.pth"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    killed = SimpleNamespace(returncode=proc.returncode, latest=latest.exists(),
                             final=(run / FOLD / "checkpoint_final.pth").exists(),
                             log_rows=read_log_csv(run / "log.csv"),
                             output=(base / "killed_run.log").read_text(errors="replace")[-3000:])
    env_before = _nnunet_env()
    api.train_nnunet(data, run, **SETTINGS)
    return SimpleNamespace(base=base, data=data, held_out=held_out, run=run, killed=killed,
                           env_before=env_before, env_after=_nnunet_env())


def test_training_resumes_after_kill(trained: SimpleNamespace) -> None:
    k = trained.killed
    assert k.returncode == -signal.SIGKILL, k.output
    assert k.latest and not k.final, "the kill must land after the first epoch checkpoint, before the end"
    sessions = json.loads((trained.run / "nnunet" / "sessions.json").read_text())
    assert len(sessions) == 2
    assert sessions[0]["folds"] == {} or sessions[0]["folds"]["0"] == 0
    resumed_from = sessions[1]["folds"]["0"]
    assert isinstance(resumed_from, int) and resumed_from >= 1, sessions  # continued, not restarted
    rows = read_log_csv(trained.run / "log.csv")
    assert list(rows[0]) == list(LOG_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    n = min(len(k.log_rows), resumed_from)
    assert rows[:n] == k.log_rows[:n]  # epochs logged before the kill are kept, not retrained
    assert all(float(r["train_loss"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    final = torch.load(trained.run / FOLD / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and final["trainer_name"] == "ThoraxsegTrainer"
    assert not (trained.run / FOLD / "checkpoint_latest.pth").exists()


def test_run_folder_contents_and_no_global_environment(trained: SimpleNamespace) -> None:
    run = trained.run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "nnunet3d" and cfg["plans"] == "cpu" and cfg["epochs"] == 3
    assert cfg["resolved"]["plans_identifier"] == "nnUNetPlans_cpu"
    assert (run / cfg["resolved"]["results_folder"] / "plans.json").is_file()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert (run / "nnunet" / sub).is_dir()
    val = json.loads((run / "validation.json").read_text())
    assert set(val["0"]["dice"]) == {*ORGAN_NAMES, "mean"} and val["0"]["cases"] == 1
    assert trained.env_after == trained.env_before
    assert not any(k in os.environ for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))


def test_rerun_of_a_finished_run_is_quick_and_settings_are_guarded(trained: SimpleNamespace) -> None:
    final = trained.run / FOLD / "checkpoint_final.pth"
    before = (final.stat().st_mtime_ns, final.read_bytes(), (trained.run / "log.csv").read_bytes())
    api.train_nnunet(trained.data, trained.run, **SETTINGS)
    sessions = json.loads((trained.run / "nnunet" / "sessions.json").read_text())
    assert sessions[-1]["folds"] == {"0": "complete"}
    # nothing was trained again: the final checkpoint and the epoch log are untouched
    assert (final.stat().st_mtime_ns, final.read_bytes(), (trained.run / "log.csv").read_bytes()) == before
    with pytest.raises(ConfigError, match="other plans"):
        api.train_nnunet(trained.data, trained.run, **{**SETTINGS, "plans": "default"})


def test_predict_then_evaluate(trained: SimpleNamespace) -> None:
    pred = trained.base / "pred"
    written = api.predict_nnunet(trained.run, trained.held_out, pred, tta=True)
    assert [p.name for p in written] == ["Patient_06.nii.gz"]
    image = load_image(trained.held_out / "train" / "Patient_06" / "Patient_06.nii.gz")
    out = load_label(written[0])
    assert same_geometry(out, image) is None and out.array.dtype == np.uint8
    assert set(np.unique(out.array)) <= {0, 1, 2, 3, 4}
    # post-processing keeps one piece per organ; pieces stacked along the slice axis across missed
    # slices count as one (data/postprocess.py), so the prediction is a fixed point of the clean-up
    # and every remaining component touches another in-plane: 26-connected once stacked, i.e. its
    # footprint grown by one pixel (3 x 3) meets another's (no stray piece beside the organ)
    assert (keep_largest_component(out.array, spacing=out.spacing) == out.array).all()
    for organ in range(1, 5):
        comps = cc3d.connected_components(out.array == organ)
        feet = [(comps == c).any(axis=2) for c in range(1, int(comps.max()) + 1)]
        for i, foot in enumerate(feet):
            near = ndimage.binary_dilation(foot, structure=np.ones((3, 3), bool))
            assert len(feet) == 1 or any((near & other).any() for j, other in enumerate(feet) if j != i), (
                f"organ {organ}: component {i + 1} of {len(feet)} lies apart from the rest in-plane")
    from thoraxseg.metrics.evaluate import CSV_COLUMNS, evaluate_folders

    df = evaluate_folders(trained.held_out, pred)
    assert tuple(df.columns) == CSV_COLUMNS
    assert sorted(df["organ"]) == sorted(ORGAN_NAMES) and set(df["patient"]) == {"Patient_06"}
    assert df["dice"].between(0, 1).all()


@pytest.mark.realct
def test_prediction_is_written_in_the_source_geometry_of_a_real_ct(trained: SimpleNamespace,
                                                                   realct_dir: Path) -> None:
    out = trained.base / "pred_real"
    (written,) = api.predict_nnunet(trained.run, realct_dir, out, tta=False, step=1.0, postprocess=False)
    src = nib.load(realct_dir / "Patient_R1.nii.gz")
    got = nib.load(written)
    assert got.shape == src.shape and got.get_data_dtype() == np.uint8
    assert np.array_equal(got.affine, src.affine)
    assert nib.aff2axcodes(got.affine) == ("L", "P", "S")
    assert set(np.unique(np.asanyarray(got.dataobj))) <= {0, 1, 2, 3, 4}


def test_same_seed_gives_the_same_weights(trained: SimpleNamespace) -> None:
    weights = []
    for name in ("a", "b"):
        run = trained.base / f"seed_{name}"
        (run / "nnunet").mkdir(parents=True)
        for sub in ("nnUNet_raw", "nnUNet_preprocessed"):  # reuse the prepared data, train afresh
            shutil.copytree(trained.run / "nnunet" / sub, run / "nnunet" / sub, symlinks=True)
        shutil.copy(trained.run / "nnunet" / "prepared.json", run / "nnunet")
        api.train_nnunet(trained.data, run, **{**SETTINGS, "epochs": 1, "iterations_per_epoch": 2,
                                               "final_validation": False})
        ckpt = torch.load(run / FOLD / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        weights.append(ckpt["network_weights"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bundle_then_segment_dicom_equals_nifti(trained: SimpleNamespace, tmp_path: Path) -> None:
    """The nnU-Net arm through a bundle: nnU-Net's model folder packed, DICOM input = NIfTI input."""
    import zipfile

    from thoraxseg.cli import main
    from thoraxseg.data.dicom import write_ct_series

    bundle = tmp_path / "nnunet.zip"
    assert main(["export-model", str(trained.run), "--out", str(bundle)]) == 0
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
    assert f"{FOLD.as_posix()}/checkpoint_final.pth" in names and f"{FOLD.parent.as_posix()}/plans.json" in names
    assert not any("nnUNet_raw" in n or "nnUNet_preprocessed" in n for n in names)  # no training data
    image = trained.held_out / "train" / "Patient_06" / "Patient_06.nii.gz"
    write_ct_series(load_image(image), tmp_path / "dicom")
    assert main(["segment", str(image), str(tmp_path / "dicom"), "--model", str(bundle), "--out",
                 str(tmp_path / "out"), "--no-tta"]) == 0
    a = load_label(tmp_path / "out" / "Patient_06" / "labels.nii.gz")
    b = load_label(tmp_path / "out" / "dicom" / "labels.nii.gz")
    assert np.array_equal(a.array, b.array)
    assert (tmp_path / "out" / "dicom" / "rtstruct.dcm").is_file() and (tmp_path / "out" / "dicom" / "seg.dcm").is_file()
    summary = json.loads((tmp_path / "out" / "dicom" / "summary.json").read_text())
    assert summary["manifest"]["model"]["arm"] == "nnunet3d"
    assert summary["manifest"]["versions"]["nnunetv2"]
