"""The 2D arms in millimetres: slices resampled to one pixel size, crops, exact inversion, old runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_predict2d import ThresholdNet, _threshold, make_run
from test_training import assert_device_batches_match_the_dataloader
from test_training_toydata import make_toy_cohort
from thoraxseg.data.layout import labelled_cases
from thoraxseg.data.phantom import VARIANTS, field_of_view_variants
from thoraxseg.data.volume import Volume, load_image, load_label, save_volume
from thoraxseg.errors import ConfigError
from thoraxseg.inference import predict
from thoraxseg.inference.predict2d import predict_array
from thoraxseg.training.config import resolve_config
from thoraxseg.training.data2d import (
    SliceDataset,
    SpacingGeometry,
    derive_spacing_mm,
    from_network_grid,
    load_cases,
    to_network_grid,
)
from thoraxseg.training.trainer import dice_per_organ
from trained_fixture import HELD_OUT, PHANTOM_SEED


def _onehot(grid: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(grid.long(), 5).permute(0, 3, 1, 2).float()


def test_spacing_geometry_round_trip_is_exact_at_the_source_pixel_size() -> None:
    rng = np.random.default_rng(0)
    lab = torch.from_numpy(rng.integers(0, 5, (3, 20, 26)).astype(np.uint8))  # (Z, X, Y)
    geom = SpacingGeometry.of((20, 26), (2.0, 2.0), 2.0, 32, 8)
    assert geom.resampled == (20, 26) and geom.grid == (32, 32) and geom.offset == (6, 3)
    grid = to_network_grid(lab, geom, "label")
    assert grid.shape == (3, 32, 32) and int(grid[:, :6].max()) == 0  # the padding is background
    assert torch.equal(from_network_grid(_onehot(grid), geom).argmax(1).to(torch.uint8), lab)


@pytest.mark.parametrize(("shape", "pixel", "target"), [((60, 44), (0.8, 0.8), 2.0), ((30, 36), (3.0, 2.5), 1.5),
                                                         ((300, 300), (0.7, 0.7), 3.3)])
def test_spacing_geometry_keeps_millimetres_and_inverts(shape, pixel, target) -> None:
    geom = SpacingGeometry.of(shape, pixel, target, 32, 16)
    for n, s, r, g in zip(shape, pixel, geom.resampled, geom.grid, strict=True):
        # a resampled pixel is target mm up to half a pixel over the whole field of view
        assert abs(n * s / r - target) <= target / (2 * r) + 1e-9
        assert g >= max(32, r) and g % 16 == 0  # never cropped, a network multiple
    x, y = np.mgrid[: shape[0], : shape[1]]
    disc = (((x - shape[0] / 2) * pixel[0]) ** 2 + ((y - shape[1] / 2) * pixel[1]) ** 2) < (0.3 * shape[0] * pixel[0]) ** 2
    lab = torch.from_numpy(np.stack([disc.astype(np.uint8) * 2] * 2))
    back = from_network_grid(_onehot(to_network_grid(lab, geom, "label")), geom).argmax(1)
    assert back.shape == lab.shape
    assert (back == lab).float().mean() > 0.97  # resampled twice: only the rim may change


def test_derived_spacing_fills_the_grid_with_the_median_field_of_view(tmp_path: Path) -> None:
    for i, (n, s) in enumerate([(40, 2.0), (50, 2.0), (64, 2.5)]):  # fields of view 80, 100, 160 mm
        ct = np.full((n, n, 4), -1000, np.int16)
        ct[n // 4 : 3 * n // 4, n // 4 : 3 * n // 4] = 40
        folder = tmp_path / "train" / f"Patient_{i + 1:02d}"
        folder.mkdir(parents=True)
        affine = np.diag([s, s, 5.0, 1.0])
        save_volume(Volume(ct, affine), folder / f"Patient_{i + 1:02d}.nii.gz")
        save_volume(Volume(np.zeros(ct.shape, np.uint8), affine), folder / "GT.nii.gz")
    assert derive_spacing_mm(labelled_cases(tmp_path), 64) == pytest.approx(100 / 64, abs=1e-3)


@pytest.mark.parametrize(("settings", "message"), [
    ({"spacing_mm": -1.0}, "spacing_mm must be a positive"),
    ({"spacing_mm": "nan"}, "spacing_mm must be a positive"),
    ({"preprocessing": "square", "spacing_mm": 2.0}, "spacing_mm applies to preprocessing: spacing"),
    ({"preprocessing": "stretch"}, "preprocessing must be one of spacing, square"),
])
def test_bad_spacing_settings_are_refused_up_front(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config({"model": "enet", **settings})


def test_prediction_is_the_same_on_another_grid_of_the_same_scan() -> None:
    """A pixel is spacing_mm on every scan: the same anatomy on a 2× finer grid, or padded, gives the same labels."""
    x, y = np.mgrid[:48, :40]
    ct = np.full((48, 40, 4), -1000, np.int16)  # piecewise constant: only organ rims see resampling
    ct[(x - 24) ** 2 + (y - 20) ** 2 < 18 ** 2] = 40
    ct[(x - 18) ** 2 + (y - 24) ** 2 < 6 ** 2] = 300
    ct[(x - 30) ** 2 + (y - 14) ** 2 < 4 ** 2] = -990
    direct = predict_array(ThresholdNet(), ct, 32, pixel_mm=(2.0, 2.0), spacing_mm=2.0, multiple=8)
    assert np.array_equal(direct, _threshold(ct))  # no resampling at all: exact
    fine = np.repeat(np.repeat(ct, 2, axis=0), 2, axis=1)  # 1 mm pixels
    on_fine = predict_array(ThresholdNet(), fine, 32, pixel_mm=(1.0, 1.0), spacing_mm=2.0, multiple=8)
    assert on_fine.shape == fine.shape
    # resampled down and back up (bilinear, antialiased): labels may change only on the organ rims
    changed = on_fine[::2, ::2] != direct
    rim = np.zeros_like(changed)
    for axis in (0, 1):
        edge = np.diff(direct.astype(np.int16), axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        rim[tuple(lo)] |= edge
        rim[tuple(hi)] |= edge
    assert not (changed & ~rim).any()
    assert changed.mean() < 0.06
    padded = np.pad(ct, ((40, 40), (30, 30), (0, 0)), constant_values=-1000)  # a much larger field of view
    on_padded = predict_array(ThresholdNet(), padded, 32, pixel_mm=(2.0, 2.0), spacing_mm=2.0, multiple=8)
    assert np.array_equal(on_padded[40:-40, 30:-30], direct)  # whole slice predicted: nothing cut away
    assert int(on_padded[:40].max(initial=0)) == int(_threshold(padded)[:40].max(initial=0))


@pytest.fixture()
def toy_cases(tmp_path: Path) -> list:
    root = make_toy_cohort(tmp_path / "toy", cases=2, shape=(40, 36, 6))
    return labelled_cases(root)


def test_training_crops_are_seeded_inside_the_canvas_and_contain_the_body(toy_cases) -> None:
    data = load_cases(toy_cases, 32, show=False, spacing_mm=2.0, multiple=8)
    assert [tuple(c.images.shape[1:]) for c in data] == [(40, 40), (40, 40)]
    ds = SliceDataset(data, crop=32, seed=3)
    again = SliceDataset(data, crop=32, seed=3)
    origins = {ds.crop_origin(i, e) for i in range(len(ds)) for e in range(4)}
    assert len(origins) > 1  # the crop moves
    for i in range(len(ds)):
        for e in range(3):
            ox, oy = ds.crop_origin(i, e)
            assert (ox, oy) == again.crop_origin(i, e)
            assert 0 <= ox <= 8 and 0 <= oy <= 8
            image, label, _, _ = ds[(i, e)]
            assert image.shape == (1, 32, 32) and label.shape == (32, 32)
            x0, x1, y0, y1 = ds.boxes[i]
            centre = (ox + 16, oy + 16)
            # the crop centre lies in the body box, up to the clipping to the canvas
            assert min(x0, 8 + 16) - 0.5 <= centre[0] <= max(x1, 16) + 0.5
            assert min(y0, 8 + 16) - 0.5 <= centre[1] <= max(y1, 16) + 0.5


def test_cropped_device_batches_match_the_dataloader(toy_cases) -> None:
    cfg = resolve_config({"model": "enet", "image_size": 32, "batch_size": 4, "width": 4, "spacing_mm": 2.0})
    ds = SliceDataset(load_cases(toy_cases, 32, show=False, spacing_mm=2.0, multiple=8), crop=32, seed=cfg.seed)
    assert_device_batches_match_the_dataloader(ds, cfg, epoch=1, batches=3)


def test_a_run_made_before_the_change_predicts_as_before_and_says_so_once(tmp_path: Path, capsys) -> None:
    data = make_toy_cohort(tmp_path / "data", cases=2, shape=(40, 30, 5))
    square = make_run(tmp_path / "square", "enet", width=4, image_size=32, seed=4, spacing_mm=None)
    old = make_run(tmp_path / "old", "enet", width=4, image_size=32, seed=4, spacing_mm=None)
    # a pre-0.2 run: neither key in config.yaml nor in the checkpoint
    state = torch.load(old / "best.pt", weights_only=False)
    for key in ("preprocessing", "spacing_mm"):
        state["config"].pop(key)
    torch.save(state, old / "best.pt")
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    (old / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items()
                                                     if k not in ("preprocessing", "spacing_mm")}))
    capsys.readouterr()
    written_old = predict(old, data, tmp_path / "p_old")
    note = capsys.readouterr()
    assert (note.out + note.err).count("trained before thoraxseg 0.2") == 1  # once per call, not per case
    written_square = predict(square, data, tmp_path / "p_square")
    assert "trained before" not in capsys.readouterr().out
    for a, b in zip(written_old, written_square, strict=True):
        assert np.array_equal(load_label(a).array, load_label(b).array)


# ----------------------------------------------------------------------------- invariance (slow)


def _predict_dice(run: Path, image: Volume, labels: Volume, folder: Path) -> dict[str, float]:
    (folder / "in").mkdir(parents=True)
    save_volume(image, folder / "in" / "Patient_01.nii.gz")
    written = predict(run, folder / "in", folder / "out")
    pred = load_label(written[0])
    source = load_image(folder / "in" / "Patient_01.nii.gz")  # the affine as stored (float32 in the header)
    assert pred.shape == source.shape and np.array_equal(pred.affine, source.affine)  # the source geometry
    return dice_per_organ(pred.array, labels.array)


@pytest.mark.slow
def test_a_model_predicts_the_same_on_another_grid_and_field_of_view(phantom_2d_run: Path, tmp_path: Path) -> None:
    """Trained on the small grid, the model finds the organs as well on a 4× finer grid, a 200 mm crop and
    a 650 mm field of view (the pre-0.2 square resize lost every organ on the crop)."""
    config = yaml.safe_load((phantom_2d_run / "config.yaml").read_text())
    assert config["preprocessing"] == "spacing" and 2.5 < config["spacing_mm"] < 6.0  # derived: median FOV / 128
    dice: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for index in HELD_OUT:
        for variant, (image, labels) in field_of_view_variants(PHANTOM_SEED, index).items():
            dice[variant].append(_predict_dice(phantom_2d_run, image, labels, tmp_path / f"{index}_{variant}"))
    mean = {v: {o: float(np.mean([d[o] for d in rows])) for o in ("heart", "aorta")} for v, rows in dice.items()}
    # the shared run is competent on its own grid, so agreement on the others is not vacuous
    assert mean["small"]["heart"] > 0.75 and mean["small"]["aorta"] > 0.5, mean
    # Bounds, from what this 10-epoch run (augment.fov_prob 0.6, the default) measured on these 2 patients:
    # heart Δ ≤ 0.016 on every grid; aorta Δ −0.012 on the 4× finer grid with its thinner slices, −0.029 on
    # the 200 mm crop (which keeps the whole aorta; the model adds false positives around it), −0.001 padded
    # (at fov_prob 0.3 the crop's aorta was −0.087). Another CPU trains another trajectory: over four training
    # seeds (benchmarks/spacing2d.py, README) CustomNet's crop aorta Δ spanned −0.053…+0.033 and its finer-grid
    # aorta −0.014…+0.041, hence the room; with ONEDNN_MAX_CPU_ISA=AVX2 (other kernels, another trajectory)
    # this run measured heart Δ ≤ 0.007, aorta −0.009 / −0.028 / −0.001. Before the fixed pixel size the
    # heart's Dice on the crop was 0.00 (square resize), and 0.24 without the field-of-view augmentation.
    bounds = {"heart": {"full": 0.05, "crop200": 0.05, "pad650": 0.05},
              "aorta": {"full": 0.08, "crop200": 0.10, "pad650": 0.05}}
    for organ, per_variant in bounds.items():
        for variant, bound in per_variant.items():
            assert abs(mean[variant][organ] - mean["small"][organ]) <= bound, (variant, organ, mean)
