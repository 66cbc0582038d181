"""2D training: configuration, slice data, sampling, augmentation, a tiny run, delegation to nnU-Net."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_training_toydata import make_toy_cohort
from thoraxseg.cli import main
from thoraxseg.data.layout import Case, labelled_cases
from thoraxseg.data.volume import load_label
from thoraxseg.errors import ConfigError
from thoraxseg.inference import predict
from thoraxseg.inference.predict2d import load_run_model
from thoraxseg.training import train
from thoraxseg.training.config import TrainConfig, config_from_dict, dump_yaml, resolve_config
from thoraxseg.training.data2d import (
    PARAM_COLUMNS,
    AugmentCollate,
    BatchAugmenter,
    DeviceBatches,
    EpochSampler,
    SliceDataset,
    SliceGeometry,
    _field_of_view,
    from_network_grid,
    labels_to_slices,
    load_cases,
    split_cases,
    to_network_grid,
    window_ct,
)
from thoraxseg.training.trainer import LOG_COLUMNS, dice_per_organ, make_collate, make_loader

TINY = {"image_size": 32, "width": 4, "batch_size": 4, "val_batch_size": 8}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_cohort(tmp_path_factory.mktemp("toy"), cases=4)


# ----------------------------------------------------------------------------- configuration


def test_defaults_are_the_seed_settings() -> None:
    cfg = resolve_config({"model": "enet"})
    assert (cfg.epochs, cfg.image_size, cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay) == (
        100, 256, 1e-3, (0.9, 0.999), 1e-4)
    assert (cfg.loss.dice_weight, cfg.loss.ce_weight) == (0.7, 0.3)
    assert cfg.loss.class_weights == {"background": 0.1, "esophagus": 0.3, "heart": 0.2, "trachea": 0.2,
                                      "aorta": 0.2}
    assert cfg.width == 16 and resolve_config({"model": "customnet"}).width == 64
    assert cfg.optim.schedule == "none"


def test_yaml_merge_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: customnet\nepochs: 7\noptim: {lr: 0.01, schedule: cosine}\n"
                    "loss: {class_weights: {esophagus: 0.5}}\naugment: {rotation_deg: 5}\n")
    cfg = resolve_config(path, {"epochs": 3, "optim.weight_decay": 0.0, "batch_size": "2", "data": "d"})
    assert (cfg.model, cfg.epochs, cfg.batch_size) == ("customnet", 3, 2)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.weight_decay) == (0.01, "cosine", 0.0)
    assert cfg.loss.class_weights["esophagus"] == 0.5 and cfg.loss.class_weights["heart"] == 0.2
    assert cfg.augment.rotation_deg == 5.0 and cfg.augment.scale == (0.85, 1.15)
    assert Path(cfg.data).is_absolute()
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ({"model": "enet", "learning_rate": 1}, {}, "unknown setting"),
        ({"model": "enet"}, {"optim.momentum": 0.9}, "unknown setting in optim: momentum"),
        ({"model": "enet"}, {"epochs": "many"}, "setting epochs"),
        ({"model": "enet"}, {"epochs": 2.5}, "setting epochs"),
        ({"model": "enet"}, {"image_size": 100}, "multiple of 8"),
        ({"model": "customnet"}, {"image_size": 40}, "multiple of 16"),
        ({"model": "enet"}, {"schedule": "step"}, "schedule must be"),
        ({"model": "enet", "windows": [[100, -100]]}, {}, "windows"),
        ({"model": "enet", "loss": {"class_weights": {"lung": 1}}}, {}, "class_weights"),
        ({"model": "unet3d"}, {}, "not a 2D model"),
    ],
)
def test_bad_settings_raise_config_error(config: dict, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(config, overrides)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        resolve_config(path)


# ----------------------------------------------------------------------------- slice data


def test_window_maps_hu_to_unit_range() -> None:
    out = window_ct(np.array([-3000, -1000, -500, 0, 500, 1000, 4000]), (-1000, 1000))
    assert out.tolist() == pytest.approx([-1, -1, -0.5, 0, 0.5, 1, 1])
    assert window_ct(np.array([40]), (-160, 240)).tolist() == pytest.approx([0.0])


def test_square_geometry_round_trip_is_exact_without_resize() -> None:
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, (3, 20, 26)).astype(np.uint8)  # (Z, X, Y)
    geom = SliceGeometry.of((20, 26), 26)
    grid = to_network_grid(torch.from_numpy(lab), geom, "label")
    assert grid.shape == (3, 26, 26) and int(grid[:, :3].max()) == 0  # padded rows are background
    onehot = torch.nn.functional.one_hot(grid.long(), 5).permute(0, 3, 1, 2).float()
    back = from_network_grid(onehot, geom).argmax(1).numpy()
    assert np.array_equal(back, lab)


def test_resize_round_trip_keeps_shapes_and_labels() -> None:
    lab = np.zeros((30, 40, 2), np.uint8)  # (X, Y, Z)
    lab[5:25, 8:30] = 2
    lab[12:18, 15:22] = 4
    grid = labels_to_slices(lab, 64)
    assert grid.shape == (2, 64, 64)
    geom = SliceGeometry.of((30, 40), 64)
    onehot = torch.nn.functional.one_hot(grid.long(), 5).permute(0, 3, 1, 2).float()
    back = np.moveaxis(from_network_grid(onehot, geom).argmax(1).numpy(), 0, 2)
    assert back.shape == lab.shape
    assert (back == lab).mean() > 0.97


def test_patient_level_split_is_deterministic() -> None:
    cases = [Case(f"Patient_{i:02d}", Path(f"/d/{i}.nii.gz"), Path(f"/d/{i}_gt.nii.gz")) for i in range(1, 21)]
    tr1, va1 = split_cases(cases, 0.2, seed=3)
    _, va2 = split_cases(cases, 0.2, seed=3)
    _, va3 = split_cases(cases, 0.2, seed=4)
    assert [c.patient_id for c in va1] == [c.patient_id for c in va2]
    assert {c.patient_id for c in va1} != {c.patient_id for c in va3}
    assert len(va1) == 4 and len(tr1) == 16 and not {c.patient_id for c in tr1} & {c.patient_id for c in va1}
    _, explicit = split_cases(cases, 0.2, seed=0, val_cases=["Patient_02", "Patient_07"])
    assert [c.patient_id for c in explicit] == ["Patient_02", "Patient_07"]


def test_epoch_sampler_order_depends_on_seed_and_epoch_only() -> None:
    ds = list(range(10))
    s = EpochSampler(ds, seed=1)  # type: ignore[arg-type]
    s.set_epoch(2)
    first = list(s)
    s.set_epoch(3)
    other = list(s)
    s.set_epoch(2)
    assert list(s) == first and [i for i, _ in first] != [i for i, _ in other]
    assert sorted(i for i, _ in first) == ds and {e for _, e in first} == {2}
    # two processes: disjoint shards that cover the epoch
    shards = []
    for rank in (0, 1):
        r = EpochSampler(ds, seed=1, num_replicas=2, rank=rank)  # type: ignore[arg-type]
        r.set_epoch(2)
        shards.append([i for i, _ in r])
    assert sorted(shards[0] + shards[1]) == ds and len(shards[0]) == len(shards[1]) == 5
    capped = EpochSampler(ds, seed=1, samples_per_epoch=25)  # type: ignore[arg-type]
    assert len(list(capped)) == len(capped) == 25


def test_augmentation_is_per_slice_deterministic_and_keeps_labels_valid() -> None:
    cfg = resolve_config({"model": "enet"}).augment
    collate, augment = AugmentCollate(cfg, seed=0), BatchAugmenter(cfg, seed=0, size=32)
    img = torch.linspace(-1, 1, 32 * 32).view(1, 32, 32)
    lab = torch.zeros(32, 32, dtype=torch.long)
    lab[8:24, 10:20] = 2
    a = augment(*collate([(img, lab, 5, 1), (img, lab, 6, 1)]))
    b = augment(*collate([(img, lab, 6, 1), (img, lab, 5, 1)]))
    assert torch.allclose(a[0][0], b[0][1], atol=1e-6) and torch.equal(a[1][1], b[1][0])
    c = augment(*collate([(img, lab, 5, 2)]))
    assert not torch.allclose(a[0][0], c[0][0])  # another epoch, another draw
    assert set(torch.unique(a[1]).tolist()) <= {0, 2}
    area = (a[1] == 2).sum(dim=(1, 2)).float()
    assert ((area > 0.5 * 160) & (area < 1.6 * 160)).all()  # rotated/scaled, not destroyed
    assert not torch.equal(a[0][0], img)
    plain = AugmentCollate(None, seed=0)([(img, lab, 5, 1)])
    assert plain[2] is None
    same = BatchAugmenter(None, seed=0, size=32)(*plain)
    assert torch.allclose(same[0][0], img) and torch.equal(same[1][0], lab)


def test_augmentation_geometry_moves_image_and_label_together() -> None:
    cfg = resolve_config({"model": "enet", "augment": {"prob": 1.0, "noise_std": 0.0, "intensity_shift": 0.0,
                                                      "intensity_scale": [1, 1], "rotation_deg": 30}}).augment
    img = torch.full((1, 32, 32), -1.0)
    lab = torch.zeros(32, 32, dtype=torch.long)
    img[0, 6:14, 18:28] = 0.5
    lab[6:14, 18:28] = 4
    x, y = BatchAugmenter(cfg, 0, 32)(*AugmentCollate(cfg, seed=1)([(img, lab, i, 0) for i in range(8)]))
    for k in range(8):
        inside = x[k, 0][y[k] == 4]
        assert inside.numel() > 20 and inside.mean() > 0.3  # the label still covers the bright square


def test_field_of_view_sizes_are_log_uniform_and_nearly_square() -> None:
    """The simulated field of view: its side log-uniform in [fov_min, 1] of the crop, aspect within 0.8–1.25."""
    cfg = resolve_config({"model": "enet", "augment": {"fov_prob": 0.3}}).augment
    fov_min = 0.25
    collate = AugmentCollate(cfg, seed=3, fov_min=fov_min)
    rows = np.array([collate.params(i, 0) for i in range(4000)])
    on = rows[:, PARAM_COLUMNS.index("fov")] > 0
    w, h = rows[on, PARAM_COLUMNS.index("fov_w")], rows[on, PARAM_COLUMNS.index("fov_h")]
    # 4000 Bernoulli(0.3) draws: sd 0.0072, so 0.27..0.33 is > 4 sd on either side
    assert 0.27 < on.mean() < 0.33
    assert (w >= fov_min).all() and (w <= 1).all() and (h >= fov_min - 1e-12).all() and (h <= 1).all()
    ratio = h / w
    clipped = (h <= fov_min + 1e-12) | (h >= 1 - 1e-12)
    assert (ratio[~clipped] > 0.8 - 1e-9).all() and (ratio[~clipped] < 1.25 + 1e-9).all()
    # log-uniform side: median sqrt(fov_min) = 0.5 (uniform would give 0.625); ~1200 draws, the sample
    # median's sd is ~0.015 here, so 0.46..0.54 cannot fail by chance and separates the two laws
    assert 0.46 < float(np.median(w)) < 0.54
    # a small, cardiac-like field of view (both sides <= 0.42 of the crop) is common, not rare
    assert ((w <= 0.42) & (h <= 0.42)).mean() > 0.25
    again = AugmentCollate(cfg, seed=3, fov_min=fov_min)
    assert again.params(17, 0) == collate.params(17, 0)  # per-slice deterministic


def test_field_of_view_blanks_outside_the_rectangle_around_the_organs() -> None:
    img = torch.zeros(1, 1, 40, 40)
    lab = torch.zeros(1, 40, 40, dtype=torch.long)
    lab[0, 18:22, 28:32] = 2  # organ centre (20, 30)
    fov = torch.tensor([[1.0, 0.25, 0.5, 0.0, 0.0]])  # 10 x 20 pixels around it
    x, y = _field_of_view(img, lab, fov)
    keep = x[0, 0] > -1
    rows, cols = torch.nonzero(keep, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (15, 24, 20, 39)
    assert torch.equal(y[0][keep], lab[0][keep]) and (y[0][~keep] == 0).all()
    off = torch.tensor([[0.0, 0.25, 0.5, 0.0, 0.0]])
    x2, y2 = _field_of_view(img, lab, off)
    assert torch.equal(x2, img) and torch.equal(y2, lab)


def test_loader_is_identical_with_worker_processes(toy_root: Path) -> None:
    cfg = resolve_config({"model": "enet", **TINY, "num_workers": 0})
    data = load_cases(labelled_cases(toy_root)[:2], cfg.image_size, show=False)
    ds = SliceDataset(data)
    batches0 = list(make_loader(ds, EpochSampler(ds, cfg.seed), cfg, epoch=1))
    cfg.num_workers = 2
    batches2 = list(make_loader(ds, EpochSampler(ds, cfg.seed), cfg, epoch=1))
    assert len(batches0) == len(batches2) == 4
    for (x0, y0, p0), (x2, y2, p2) in zip(batches0, batches2, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(p0, p2)


def test_dice_per_organ_handles_absent_organs() -> None:
    gt = np.zeros((6, 6, 4), np.uint8)
    gt[1:4, 1:4, :2] = 1
    pred = gt.copy()
    pred[0, 0, 0] = 3  # trachea predicted but absent from GT
    d = dice_per_organ(pred, gt)
    assert d["esophagus"] == 1.0 and d["trachea"] == 0.0
    assert np.isnan(d["heart"]) and np.isnan(d["aorta"])


# ----------------------------------------------------------------------------- a tiny training run


@pytest.mark.slow
def test_tiny_training_improves_loss_and_writes_the_run_folder(toy_root: Path, tmp_path: Path) -> None:
    run = train("customnet", toy_root, tmp_path / "run", epochs=6, seed=0, lr=1e-2, **TINY)
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert list(rows[0]) == list(LOG_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.75 * losses[0]
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    assert all(0 <= float(r["val_dice_mean"]) <= 1 for r in rows)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "customnet" and cfg["width"] == 4 and cfg["optim"]["lr"] == 1e-2
    assert cfg["loss"]["class_weights"]["esophagus"] == 0.3 and cfg["data"] == str(toy_root.resolve())
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = torch.load(run / "last.pt", weights_only=False)
    best = torch.load(run / "best.pt", weights_only=False)
    assert last["epoch"] == 6 and {"torch", "numpy", "python"} <= set(last["rng"][0])
    assert {"model", "optimizer", "scheduler", "sampler", "history"} <= set(last)
    best_row = max(rows, key=lambda r: float(r["val_dice_mean"]))
    assert best["epoch"] == int(best_row["epoch"])
    assert best["val_dice_mean"] == pytest.approx(float(best_row["val_dice_mean"]), abs=1e-5)
    assert not list(run.glob(".*tmp*"))  # no temp files left behind

    # same settings, more epochs: continues; other settings: refused
    train("customnet", toy_root, run, epochs=7, seed=0, lr=1e-2, **TINY)
    assert len(list(csv.DictReader((run / "log.csv").open()))) == 7
    with pytest.raises(ConfigError, match="other settings"):
        train("customnet", toy_root, run, epochs=8, seed=0, lr=3e-2, **TINY)


def test_schedule_and_multi_window_input(toy_root: Path, tmp_path: Path) -> None:
    windows = [[-1000, 1000], [-1000, -700], [-150, 250]]
    run = train("enet", toy_root, tmp_path / "run", epochs=3, schedule="poly", samples_per_epoch=4,
                windows=windows, **TINY)
    lrs = [float(r["lr"]) for r in csv.DictReader((run / "log.csv").open())]
    assert lrs == pytest.approx([1e-3, 1e-3 * (2 / 3) ** 0.9, 1e-3 * (1 / 3) ** 0.9], rel=1e-4)
    model, cfg = load_run_model(run, "last")
    assert model.initial.conv.in_channels == 3 and cfg["windows"] == windows
    written = predict(run, toy_root / "train" / "Patient_01", tmp_path / "pred")
    assert load_label(written[0]).shape == (32, 32, 8)
    # resumed to more epochs: the longer schedule from the first resumed epoch on (the 3-epoch schedule
    # had stepped the lr to 0 after its last epoch; that 0 must not be used for epoch 4)
    train("enet", toy_root, run, epochs=5, schedule="poly", samples_per_epoch=4, windows=windows, **TINY)
    lrs = [float(r["lr"]) for r in csv.DictReader((run / "log.csv").open())]
    assert lrs[3:] == pytest.approx([1e-3 * (2 / 5) ** 0.9, 1e-3 * (1 / 5) ** 0.9], rel=1e-4)


# ----------------------------------------------------------------------------- CLI and nnU-Net delegation


@pytest.fixture()
def fake_nnunet(monkeypatch: pytest.MonkeyPatch) -> dict:
    calls: dict = {}
    api = types.ModuleType("thoraxseg.nnunet.api")

    def train_nnunet_arm(name: str, data: Path, out: Path, **kw: object) -> Path:
        calls["train"] = (data, out, kw)
        return out

    def predict_nnunet(run: Path, images: Path, out: Path, **kw: object) -> list[Path]:
        calls["predict"] = (run, images, out, kw)
        return []

    api.train_nnunet_arm = train_nnunet_arm  # type: ignore[attr-defined]
    api.predict_nnunet = predict_nnunet  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "thoraxseg.nnunet.api", api)
    return calls


def test_nnunet3d_training_is_delegated(fake_nnunet: dict, tmp_path: Path) -> None:
    code = main(["train", "--model", "nnunet3d", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"),
                 "--epochs", "5", "--folds", "all", "--iterations-per-epoch", "20", "--plans", "cpu",
                 "--seed", "3"])
    assert code == 0
    data, out, kw = fake_nnunet["train"]
    assert (data, out) == (tmp_path / "d", tmp_path / "r")
    assert kw == {"config": None, "epochs": 5, "device": "cpu", "folds": "all", "iterations_per_epoch": 20,
                  "plans": "cpu", "seed": 3}


def test_nnunet3d_prediction_is_delegated(fake_nnunet: dict, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: nnunet3d\n")
    code = main(["predict", "--run", str(tmp_path / "run"), "--images", str(tmp_path / "i"),
                 "--out", str(tmp_path / "p"), "--no-tta", "--step", "0.25", "--no-postprocess"])
    assert code == 0
    _, _, _, kw = fake_nnunet["predict"]
    assert kw == {"tta": False, "step": 0.25, "postprocess": False, "device": "cpu"}


def test_cli_rejects_options_of_the_other_arm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "enet", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--plans", "cpu"]) == 1
    assert "apply to nnunet3d only" in capsys.readouterr().err
    assert main(["train", "--model", "nnunet3d", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--lr", "0.1"]) == 1
    assert "option(s) lr apply to enet, customnet only, not nnunet3d" in capsys.readouterr().err


def test_cli_reports_missing_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--model", "enet", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                 "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("thoraxseg: error:") and "nope" in err and err.count("\n") == 1


@pytest.mark.parametrize("model", ["enet", "nnunet3d"])
def test_failed_training_leaves_no_run_folder(toy_root: Path, tmp_path: Path, model: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated CT fails in one line and leaves no run folder (not even one holding config.yaml)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_root, data)
    ct = sorted(data.rglob("Patient_02.nii.gz"))[0]
    ct.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])
    extra = ["--plans", "cpu"] if model == "nnunet3d" else ["--image-size", "32"]
    code = main(["train", "--model", model, "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1",
                 *extra])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("thoraxseg: error:") and str(ct) in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_train_config_dataclass_roundtrip() -> None:
    cfg = TrainConfig(model="customnet")
    assert config_from_dict(cfg.to_dict()).width == 64


def assert_device_batches_match_the_dataloader(ds: SliceDataset, cfg, epoch: int, batches: int) -> None:
    """The GPU-cache path (DeviceBatches) must give the same batches as the DataLoader path."""
    via_loader = list(make_loader(ds, EpochSampler(ds, cfg.seed), cfg, epoch=epoch))
    sampler = EpochSampler(ds, cfg.seed)
    sampler.set_epoch(epoch)
    direct = list(DeviceBatches(ds, sampler, cfg.batch_size, make_collate(cfg)))
    assert len(direct) == len(via_loader) == batches
    for (x0, y0, p0), (x1, y1, p1) in zip(via_loader, direct, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(p0, p1)


def test_device_batches_match_the_dataloader(toy_root: Path) -> None:
    cfg = resolve_config({"model": "enet", **TINY})
    ds = SliceDataset(load_cases(labelled_cases(toy_root)[:2], cfg.image_size, show=False))
    assert_device_batches_match_the_dataloader(ds, cfg, epoch=2, batches=4)


def test_one_device_check_for_every_arm() -> None:
    # utils.settings.torch_device is what 2D training, 2D prediction and nnU-Net all call
    import torch

    from thoraxseg.utils.settings import torch_device

    assert torch_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cuda1", ""):
        with pytest.raises(ConfigError, match=f"device must be cpu, cuda or cuda:N, got '{bad}'"):
            torch_device(bad)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line() -> None:
    from thoraxseg.utils.settings import torch_device

    with pytest.raises(ConfigError, match="device 'cuda:1' requested but torch sees no CUDA GPU"):
        torch_device("cuda:1")
