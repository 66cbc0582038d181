"""Model bundles: what is packed, the manifest, and every check before loading (hashes, versions, arm)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from thoraxseg.cli import main
from thoraxseg.errors import InputError
from thoraxseg.inference.bundle import (
    MANIFEST,
    describe_run,
    export_model,
    manifest_sha256,
    open_model,
    sha256_file,
)


def _rewrite(bundle: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """Copy a bundle, replacing (bytes) or dropping (None) members."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = change.get(name, src.read(name))
            if data is not None:
                dst.writestr(name, data)
        for name, data in change.items():
            if name not in src.namelist() and data is not None:
                dst.writestr(name, data)
    return out


def test_bundle_packs_weights_config_and_manifest(tiny_run: Path, tmp_path: Path) -> None:
    bundle = export_model(tiny_run, tmp_path / "model.zip")
    with zipfile.ZipFile(bundle) as zf:
        names = sorted(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST))
    assert names == sorted([MANIFEST, "config.yaml", "best.pt"])
    assert manifest["arm"] == "enet"
    assert manifest["labels"] == {"0": "background", "1": "esophagus", "2": "heart", "3": "trachea", "4": "aorta"}
    assert manifest["preprocessing"]["image_size"] == 32 and manifest["preprocessing"]["windows"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["files"] == {n: sha256_file(tiny_run / n) for n in ("config.yaml", "best.pt")}
    assert manifest["model_sha256"] == manifest_sha256(manifest["files"])
    # organ volumes seen in training: the toy cohort has every organ in every case
    assert set(manifest["training_volumes_ml"]) == {"esophagus", "heart", "trachea", "aorta"}
    assert all(lo <= hi for lo, hi in manifest["training_volumes_ml"].values())
    cache = json.loads((tiny_run / "training_volumes.json").read_text())  # computed once per run folder
    assert cache["volumes_ml"] == manifest["training_volumes_ml"] and len(cache["labels"]) == 4
    with open_model(bundle) as model:
        assert model.arm == "enet"
        assert model.sha256 == describe_run(tiny_run)[0]["model_sha256"]  # same identity as the run folder
        assert (model.run / "best.pt").read_bytes() == (tiny_run / "best.pt").read_bytes()
        extracted = model.run
    assert not extracted.exists()  # the temporary copy is removed


def test_tampered_damaged_and_foreign_bundles_fail_before_loading(tiny_run: Path, tmp_path: Path) -> None:
    bundle = export_model(tiny_run, tmp_path / "model.zip")
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read(MANIFEST))
        weights = bytearray(zf.read("best.pt"))
    weights[-100] ^= 0xFF
    bad = _rewrite(bundle, tmp_path / "tampered.zip", {"best.pt": bytes(weights)})
    with pytest.raises(InputError, match=r"tampered\.zip: best\.pt: sha256 .* does not match the manifest"):
        with open_model(bad):
            pass
    extra = _rewrite(bundle, tmp_path / "extra.zip", {"evil.py": b"print(1)"})
    with pytest.raises(InputError, match=r"extra: \['evil\.py'\]"):
        with open_model(extra):
            pass
    gone = _rewrite(bundle, tmp_path / "gone.zip", {"best.pt": None})
    with pytest.raises(InputError, match=r"missing: \['best\.pt'\]"):
        with open_model(gone):
            pass
    for key, value, message in [
        ("arm", "unet9000", r"bundle of unknown model arm 'unet9000'"),
        ("versions", {**manifest["versions"], "torch": "1.13.1"},
         r"made with torch 1\.13\.1, this installation has 2\.13"),
        ("versions", {**manifest["versions"], "thoraxseg": "7.0.0"}, r"made with thoraxseg 7\.0\.0"),
        ("format", "something-else", r"not a thoraxseg model bundle"),
        ("model_sha256", "0" * 64, r"model_sha256 does not match"),
    ]:
        changed = _rewrite(bundle, tmp_path / f"{key}.zip",
                           {MANIFEST: json.dumps({**manifest, key: value}).encode()})
        with pytest.raises(InputError, match=message):
            with open_model(changed):
                pass
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a model bundle"):
        with open_model(tmp_path / "junk.zip"):
            pass


def test_nnunet_bundle_packs_nnunets_model_folder(tmp_path: Path) -> None:
    """An nnunet3d run folder's nnU-Net results folder is packed at its relative path (one checkpoint per fold)."""
    run = tmp_path / "run"
    rel = Path("nnunet/nnUNet_results/Dataset055_SegTHOR/ThoraxsegTrainer__nnUNetPlans__3d_fullres")
    results = run / rel
    for fold in ("0", "1"):
        (results / f"fold_{fold}").mkdir(parents=True)
        torch.save({"network_weights": {}}, results / f"fold_{fold}" / "checkpoint_final.pth")
        torch.save({"network_weights": {}}, results / f"fold_{fold}" / "checkpoint_best.pth")
    (results / "fold_0" / "validation").mkdir()
    (results / "fold_0" / "validation" / "Patient_01.nii.gz").write_bytes(b"not needed")
    plans = {"configurations": {"3d_fullres": {"spacing": [2.5, 1.0, 1.0], "patch_size": [32, 32, 32],
                                               "normalization_schemes": ["CTNormalization"]}},
             "foreground_intensity_properties_per_channel": {"0": {"mean": 40.0}}}
    (results / "plans.json").write_text(json.dumps(plans))
    (results / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "nnunet3d", "resolved": {"results_folder": str(rel)}}))
    bundle = export_model(run, tmp_path / "nnunet.zip")
    with zipfile.ZipFile(bundle) as zf:
        names = sorted(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST))
    assert names == sorted([MANIFEST, "config.yaml", f"{rel.as_posix()}/plans.json", f"{rel.as_posix()}/dataset.json",
                            f"{rel.as_posix()}/fold_0/checkpoint_final.pth",
                            f"{rel.as_posix()}/fold_1/checkpoint_final.pth"])
    assert manifest["arm"] == "nnunet3d"
    assert manifest["preprocessing"]["spacing_mm"] == [2.5, 1.0, 1.0]
    assert "nnunetv2" in manifest["versions"]
    with open_model(bundle) as model:
        assert (model.run / rel / "fold_1" / "checkpoint_final.pth").is_file()


def test_export_model_cli(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-model", str(tiny_run), "--out", str(tmp_path / "m.zip")]) == 0
    assert "enet, 2 files" in capsys.readouterr().out
    assert main(["export-model", str(tiny_run), "--out", str(tmp_path / "m.zip")]) == 1
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "empty_run").mkdir()
    assert main(["export-model", str(tmp_path / "empty_run"), "--out", str(tmp_path / "e.zip")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("thoraxseg: error: ") and "config.yaml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.zip").exists()
