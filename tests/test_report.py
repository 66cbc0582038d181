"""Tests of the HTML study report (thoraxseg.report) and `thoraxseg report`."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study_fixture import ARMS, build_fake_study, case_metrics, fake_prediction, synthetic_case
from thoraxseg.cli import main
from thoraxseg.data.layout import stage_marker
from thoraxseg.errors import InputError
from thoraxseg.report import build_report
from thoraxseg.report.browser import find_chromium, inspect_page, screenshot
from thoraxseg.report.figures import best_slice
from thoraxseg.report.render3d import organ_mesh
from thoraxseg.report.study import to_canonical

SECTION_IDS = ("overview", "data", "realign", "metrics", "distributions", "statistics", "training", "cases",
               "surfaces", "timings", "config")

# Skips only outside CI: under CI (`.ci/run`, CI=true) `make test` installs Chromium and a missing one fails.
needs_chromium = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                    reason="chromium not installed (make chromium)")


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)]


def _section(html: str, key: str) -> str:
    m = re.search(rf'<section id="{key}">(.*?)</section>', html, flags=re.DOTALL)
    assert m, f"section {key} missing"
    return m.group(1)


def _assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith(("data:image/png;base64,", "#")), f"external reference {attr[:60]!r}"
    assert not re.search(r"url\(\s*['\"]?(?!data:)", html), "CSS url() to an external resource"
    assert "@import" not in html


# ----------------------------------------------------------------------------- fast tests


def _metrics_only_study(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, arm in enumerate(("enet", "customnet")):
        rows = []
        for i in range(5):
            for organ, base in (("esophagus", 0.6), ("heart", 0.9), ("trachea", 0.85), ("aorta", 0.88)):
                d = float(np.clip(base + 0.03 * k + rng.normal(0, 0.02), 0, 1))
                rows.append({"patient": f"Patient_{i + 1:02d}", "organ": organ, "dice": d, "iou": d / (2 - d),
                             "precision": d, "recall": d, "hd": 10.0, "hd95": 6 - 2 * d, "assd": 2 - d, "nsd": d,
                             "vol_gt_ml": 100.0, "vol_pred_ml": 95.0})
        (root / "arms" / arm).mkdir(parents=True)
        pd.DataFrame(rows).to_csv(root / "arms" / arm / "metrics.csv", index=False)
    return root


def test_missing_stats_are_computed_with_the_studys_own_settings(tmp_path: Path) -> None:
    """Without compare/stats.csv the report runs compare with study.yaml's seed, n_boot and unpaired."""
    from thoraxseg.report.study import load_study
    from thoraxseg.stats.compare import run_comparison

    study = _metrics_only_study(tmp_path / "study")
    (study / "study.yaml").write_text("name: s\nseed: 5\nn_boot: 300\nunpaired: false\n")
    assert load_study(study).compare_settings() == {"seed": 5, "n_boot": 300, "unpaired": False}
    stats = _section(build_report(study).read_text(encoding="utf-8"), "statistics")
    assert "seed 5, n_boot 300, unpaired False" in stats
    expected = run_comparison([study / "arms" / a / "metrics.csv" for a in ("enet", "customnet")],
                              ["enet", "customnet"], seed=5, n_boot=300).stats
    other = run_comparison([study / "arms" / a / "metrics.csv" for a in ("enet", "customnet")],
                           ["enet", "customnet"], seed=0, n_boot=2000).stats
    row = expected[(expected.metric == "dice") & (expected.organ == "heart")].iloc[0]
    old = other[(other.metric == "dice") & (other.organ == "heart")].iloc[0]
    assert row["ci_low"] != old["ci_low"]  # the settings matter for the interval, so the check below can fail
    assert f"{row['ci_low']:+.3f}" in stats or f"{row['ci_low']:.3f}" in stats


def test_partial_study_marks_missing_stages_not_run(tmp_path: Path) -> None:
    study = _metrics_only_study(tmp_path / "study")
    (study / "realign").mkdir()
    (study / "realign" / "fix.json").write_text("{not json")
    out = build_report(study)
    assert out == study / "report.html"
    html = out.read_text(encoding="utf-8")
    _assert_self_contained(html)
    for key in SECTION_IDS:
        _section(html, key)
    assert "was not run" in _section(html, "data")
    assert "not run" in _section(html, "realign")
    assert "No training logs" in _section(html, "training")
    assert "No test images" in _section(html, "cases")
    assert "fix.json: unreadable JSON" in _section(html, "overview")  # a corrupt file is reported, not fatal
    stats = _section(html, "statistics")
    assert "computed for this report" in stats and "customnet − enet" in stats
    assert len(_images(html)) == 6  # one distribution plot per compared metric
    assert "No stage timings" in _section(html, "timings")
    assert not list(study.glob(".report.html*"))


def test_stage_timings_are_shown_with_their_share(tmp_path: Path) -> None:
    study = _metrics_only_study(tmp_path / "study")
    for k, (stage, secs) in enumerate([("data", 30.0), ("train:enet", 150.0), ("compare", 20.0)]):
        path = stage_marker(study, stage)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"stage": stage, "seconds": secs}))
        os.utime(path, ns=(10**18 + k, 10**18 + k))  # finishing order
    (study / ".stages" / "bad.json").write_text(json.dumps({"stage": "x"}))
    html = build_report(study).read_text(encoding="utf-8")
    sec = _section(html, "timings")
    assert sec.index("data") < sec.index("train:enet") < sec.index("compare")
    assert "75.0 %" in sec and "15.0 %" in sec and "10.0 %" in sec and "3.3 min" in sec
    assert "bad.json: no stage name or seconds" in _section(html, "overview")


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="study folder not found"):
        build_report(tmp_path / "missing")
    assert main(["report", "--study", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("thoraxseg: error:") and len(err.strip().splitlines()) == 1


def test_canonical_reorientation_and_slices() -> None:
    # LPS-stored volume: x towards Left, y towards Posterior → flipped to RAS
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[0, 0, 5] = 2  # most Left, most Posterior, most Superior voxel
    affine = np.diag([-1.5, -1.5, 2.5, 1.0])
    can = to_canonical(arr, affine)
    assert can.spacing == (1.5, 1.5, 2.5)
    assert can.array[3, 4, 5] == 2 and can.array.sum() == 2
    lab = np.zeros((6, 6, 8), np.uint8)
    lab[1:5, 1:5, 2] = 2
    lab[0, 0, 5:7] = 1
    lab[1:5, 1:5, 5] = 2
    assert best_slice(lab, 2) == 5  # the slice that shows both organs


def test_marching_cubes_mesh_has_true_size_in_mm() -> None:
    mask = np.zeros((40, 40, 20), bool)
    mask[10:30, 5:15, 4:12] = True  # 20 × 10 × 8 voxels
    spacing = (0.8, 1.2, 3.0)
    verts, faces = organ_mesh(mask, spacing, sigma=0)
    extent = verts.max(axis=0) - verts.min(axis=0)
    expected = np.array([20, 10, 8]) * np.array(spacing)
    assert np.all(np.abs(extent - expected) <= np.array(spacing) * 1.01)
    assert faces.shape[1] == 3 and faces.max() < len(verts)
    assert organ_mesh(np.zeros((5, 5, 5), bool), spacing) is None


@needs_chromium
def test_browser_probe_detects_broken_images_and_errors(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><img alt="broken" '
                    'src="data:image/png;base64,AAAA"><img alt="relative" src="missing.png">'
                    '<script>throw new Error("kaboom")</script></body></html>')
    res = inspect_page(page)
    assert res.n_images == 2
    assert res.broken == ["broken", "relative"]
    assert any("kaboom" in e for e in res.errors)
    assert not res.ok


# ----------------------------------------------------------------------------- the full fake study (slow)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    study = build_fake_study(tmp_path_factory.mktemp("study") / "demo")
    out = build_report(study, study / "out" / "report.html")
    return study, out.read_text(encoding="utf-8")


@pytest.mark.slow
def test_full_report_content(full_report: tuple[Path, str]) -> None:
    study, html = full_report
    _assert_self_contained(html)
    for key in SECTION_IDS:
        assert "notrun" not in _section(html, key), f"section {key} says 'not run' although the stage ran"
    overview = _section(html, "overview")
    assert "synthetic phantom data" in html
    for arm in ARMS:
        assert f"<b>{arm}</b>" in overview
    assert "has the highest mean Dice" in overview
    assert "passed with 6 warning(s)" in overview and "after fix:" in overview
    assert "heart label looks misplaced" in _section(html, "data")
    assert "rotation 20.03°" in overview
    realign = _section(html, "realign")
    assert "Patient_01" in realign and "air_after" in realign and "in-plane rotation" in realign
    stats = _section(html, "statistics")
    assert "Over- vs under-segmentation" in stats and "Source: compare/stats.csv" in stats
    assert "Wilcoxon" in stats or "t-test" in stats
    training = _section(html, "training")
    # what a pixel is, per arm (from each run's config.yaml)
    assert training.count("128×128 crops at 3.125 mm/pixel") == 2 and "nnU-Net cpu plan" in training
    timings = _section(html, "timings")
    assert "train:nnunet3d" in timings and "<b>total</b>" in timings  # from the fixture's .stages markers
    cases = _section(html, "cases")
    assert cases.count("best: Patient_") == 0 and cases.count("<img") == len(ARMS)  # titles are in the images
    images = _images(html)
    # label fix 1 + distributions 6 + training 1 + cases 3 + 3D 1
    assert len(images) == 12
    for png in images:
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.width > 200 and im.height > 150
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    assert not list((study / "out").glob(".*"))


@pytest.mark.slow
@needs_chromium
def test_full_report_renders_in_chromium(full_report: tuple[Path, str], tmp_path: Path) -> None:
    study, html = full_report
    page = study / "out" / "report.html"
    res = inspect_page(page)
    assert res.n_images == len(_images(html)) == 12
    assert res.broken == []
    assert res.errors == [] and res.console == []
    assert all(w > 0 and h > 0 for w, h in res.sizes)
    shot = screenshot(page, tmp_path / "first_screen.png", width=1280, height=900)
    im = Image.open(shot)
    assert im.size == (1280, 900)
    pixels = np.asarray(im.convert("RGB")).astype(np.int16)
    assert pixels.std() > 20  # title bar, text and table, not a blank page
    header = pixels[:100].reshape(-1, 3).mean(axis=0)
    assert header[2] > header[0] + 20  # the blue title bar is on the first screen


@pytest.mark.slow
def test_report_embeds_existing_overlay_and_computes_missing_stats(tmp_path: Path) -> None:
    study = build_fake_study(tmp_path / "s", n_patients=4, n_test=3, arms=("enet", "nnunet3d"), shape=(48, 48, 24),
                             with_logs=False, with_compare=False, with_overlay_png=True)
    html = build_report(study, tmp_path / "r.html").read_text(encoding="utf-8")
    overlay = (study / "realign" / "overlay.png").read_bytes()
    assert base64.b64encode(overlay).decode() in html
    assert "No training logs" in _section(html, "training")
    assert "computed for this report" in _section(html, "statistics")
    assert "nnunet3d − enet" in _section(html, "statistics")
    _assert_self_contained(html)


def test_fixture_metrics_are_consistent() -> None:
    ct, lab, _affine = synthetic_case((80, 80, 36), (4.0, 4.0, 7.0), seed=1)
    assert ct.dtype == np.int16 and lab.dtype == np.uint8
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 3, 4}
    assert -1000 <= float(np.median(ct[lab == 0])) <= 100
    perfect = case_metrics(lab, lab, (4.0, 4.0, 7.0))
    assert all(r["dice"] == 1.0 and r["hd95"] == 0.0 for r in perfect)
    worse = case_metrics(lab, fake_prediction(lab, "enet", 0), (4.0, 4.0, 7.0))
    assert all(0 < r["dice"] < 1 for r in worse)


def test_headline_marks_distance_means_of_an_arm_that_missed_an_organ(tmp_path: Path) -> None:
    from thoraxseg.report.html import _Report
    from thoraxseg.report.study import Study

    rows = []
    for pid in ("Patient_01", "Patient_02", "Patient_03"):
        for organ, good, missed_hd in (("esophagus", 8.0, None), ("heart", 6.0, 2.0), ("trachea", 5.0, None),
                                       ("aorta", 7.0, 2.0)):
            rows.append({"arm": "full", "patient": pid, "organ": organ, "dice": 0.8, "hd95": good, "assd": 1.5,
                         "vol_gt_ml": 50.0})
            rows.append({"arm": "partial", "patient": pid, "organ": organ, "dice": 0.9 if missed_hd else 0.0,
                         "hd95": missed_hd if missed_hd else np.nan, "assd": 0.5 if missed_hd else np.nan,
                         "vol_gt_ml": 50.0})
    df = pd.DataFrame(rows)
    metrics = {a: df[df["arm"] == a].drop(columns="arm").reset_index(drop=True) for a in ("full", "partial")}
    report = _Report(Study(root=tmp_path, arms=list(metrics), metrics=metrics))
    report.stats = pd.DataFrame()  # no statistics needed for the table
    html = report.headline_table()
    rows_html = {m.group(1): m.group(0) for m in re.finditer(r"<tr><td class=\"l\"><b>(\w+)</b>.*?</tr>", html)}
    # the partial arm's HD95 mean (2.00) is lower, but it is marked and the full arm's 6.50 is the column's best
    assert "2.00 ± 0.00 †" in rows_html["partial"] and '<td class="best">6.50' in rows_html["full"]
    assert "partial: esophagus, trachea missed" in html
    assert "†" not in rows_html["full"]


def test_statistics_without_a_test_show_a_dash_and_the_reason_never_nan(tmp_path: Path) -> None:
    """An arm that found no esophagus has no HD95 and no precision there: no test, no shift pattern.

    The statistics are written to compare/stats.csv and read back (pandas reads "n/a" as NaN).
    """
    from thoraxseg.stats.compare import compare_arms

    root = _metrics_only_study(tmp_path / "s")
    path = root / "arms" / "customnet" / "metrics.csv"
    df = pd.read_csv(path)
    missed = df["organ"] == "esophagus"
    df.loc[missed, ["dice", "iou", "recall", "nsd"]] = 0.0
    df.loc[missed, ["precision", "hd", "hd95", "assd"]] = np.nan
    df.loc[missed, "vol_pred_ml"] = 0.0
    df.to_csv(path, index=False)
    compare_arms([root / "arms" / a / "metrics.csv" for a in ("enet", "customnet")], ["enet", "customnet"],
                 root / "compare", seed=0, n_boot=200)
    html = build_report(root, tmp_path / "r.html").read_text(encoding="utf-8")
    stats = _section(html, "statistics")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", stats)
    assert cells and not [c for c in cells if c.strip().lower() in ("nan", "n/a")]
    assert "none: " in stats  # the reason no test ran, where it ran none
    assert "— (precision or recall undefined for an arm)" in stats
