"""Tests of the paired statistics (thoraxseg.stats) and `thoraxseg compare`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from thoraxseg.cli import main
from thoraxseg.errors import ConfigError, InputError
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.stats.compare import SHIFT_COLUMNS, STATS_COLUMNS, compare_arms, run_comparison, shift_pattern
from thoraxseg.stats.paired import (
    TEST_NONE,
    TEST_T,
    TEST_WILCOXON,
    bootstrap_ci,
    cohens_dz,
    holm,
    mann_whitney,
    paired_test,
    rank_biserial_paired,
)

# ----------------------------------------------------------------------------- Holm


def test_holm_hand_worked_example() -> None:
    # m = 4, sorted p: 0.005, 0.01, 0.03, 0.04
    # ×(4, 3, 2, 1): 0.02, 0.03, 0.06, 0.04 → running max: 0.02, 0.03, 0.06, 0.06
    adj = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adj, [0.03, 0.06, 0.06, 0.02])


def test_holm_known_textbook_values() -> None:
    # Holm (1979)-style example with a cap at 1 and a tie
    adj = holm([0.001, 0.2, 0.2, 0.6, 0.012])
    # sorted: 0.001×5=0.005, 0.012×4=0.048, 0.2×3=0.6, 0.2×2=0.4→0.6, 0.6×1=0.6
    np.testing.assert_allclose(adj, [0.005, 0.6, 0.6, 0.6, 0.048])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_holm_ignores_nan_in_family_size() -> None:
    adj = holm([0.01, np.nan, 0.04])
    assert math.isnan(adj[1])
    np.testing.assert_allclose(adj[[0, 2]], [0.02, 0.04])
    assert np.isnan(holm([np.nan, np.nan])).all()


@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=1, max_size=30))
@settings(max_examples=150, deadline=None)
def test_holm_properties(ps: list[float]) -> None:
    p = np.array(ps)
    adj = holm(p)
    m = len(p)
    assert np.all(adj >= p - 1e-15)  # never smaller than the raw p
    assert np.all(adj <= 1.0)
    assert np.all(adj <= np.minimum(1.0, p * m) + 1e-12)  # never more conservative than Bonferroni
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in p
    assert adj[order[0]] == pytest.approx(min(1.0, p[order[0]] * m))


# ----------------------------------------------------------------------------- test choice and scipy agreement


def _normal_pair(n: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.7, 0.9, n)
    return a, a + rng.normal(0.03, 0.02, n)


def _skewed_pair(n: int = 24, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.7, 0.9, n)
    d = rng.exponential(0.01, n)
    d[:3] = [0.35, 0.4, 0.5]  # a few catastrophic failures of one arm: heavy right tail
    return a, a + d


def test_normal_differences_choose_t_test_and_match_scipy() -> None:
    a, b = _normal_pair()
    res = paired_test(a, b)
    sw = stats.shapiro(b - a)
    assert sw.pvalue >= 0.05  # the construction is normal
    assert res.test == TEST_T
    ref = stats.ttest_rel(b, a)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.df == len(a) - 1
    assert res.shapiro_p == pytest.approx(sw.pvalue)
    assert "≥ 0.05" in res.reason and "t-test" in res.reason


def test_skewed_differences_choose_wilcoxon_and_match_scipy() -> None:
    a, b = _skewed_pair()
    res = paired_test(a, b)
    assert stats.shapiro(b - a).pvalue < 0.05
    assert res.test == TEST_WILCOXON
    ref = stats.wilcoxon(b - a)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert math.isnan(res.df)
    assert "< 0.05" in res.reason and "Wilcoxon" in res.reason


def test_alpha_changes_the_choice() -> None:
    a, b = _normal_pair(n=12, seed=5)
    sw_p = stats.shapiro(b - a).pvalue
    assert paired_test(a, b, alpha=min(0.99, sw_p * 0.5)).test == TEST_T
    assert paired_test(a, b, alpha=min(0.999, sw_p * 1.5 + 1e-9)).test == TEST_WILCOXON


def test_mann_whitney_matches_scipy() -> None:
    a, b = _skewed_pair(n=15)
    u, p, r = mann_whitney(a, b)
    ref = stats.mannwhitneyu(a, b, alternative="two-sided")
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)
    assert r == pytest.approx(1 - 2 * ref.statistic / (len(a) * len(b)))


def test_edge_cases_give_notes_not_crashes() -> None:
    few = paired_test([0.8, 0.9], [0.85, 0.95])
    assert few.test == TEST_NONE and math.isnan(few.p) and "2 pair" in few.reason
    same = paired_test([0.8, 0.9, 0.7, 0.6], [0.8, 0.9, 0.7, 0.6])
    assert same.test == TEST_NONE and math.isnan(same.p) and "zero" in same.reason
    const = paired_test([0.5, 0.6, 0.7, 0.8, 0.9, 0.4], [0.6, 0.7, 0.8, 0.9, 1.0, 0.5])
    assert const.test == TEST_WILCOXON and "constant" in const.reason
    assert const.p == pytest.approx(2 / 2**6)  # exact two-sided p with all six differences positive
    some_zero = paired_test([0.5, 0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.75, 0.9, 1.2])
    assert some_zero.n == 5 and np.isfinite(some_zero.p)


# ----------------------------------------------------------------------------- effect sizes and bootstrap


def test_cohens_dz_hand_computed() -> None:
    # d = 1, 2, 3, 4: mean 2.5, sd (n-1) = sqrt(5/3) = 1.290994…
    assert cohens_dz([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2.5 / math.sqrt(5 / 3))
    assert cohens_dz([-1.0, 1.0]) == pytest.approx(0.0)
    assert math.isnan(cohens_dz([0.2, 0.2, 0.2]))
    assert math.isnan(cohens_dz([1.0]))


def test_rank_biserial_hand_computed() -> None:
    # |d| ranks 1..5; W+ = 1 + 3 + 4 = 8, W− = 2 + 5 = 7 → r = 1/15
    assert rank_biserial_paired([1.0, -2.0, 3.0, 4.0, -5.0]) == pytest.approx(1 / 15)
    # ties: |d| = 1, 1, 2 → ranks 1.5, 1.5, 3; W+ = 4.5, W− = 1.5 → r = 0.5
    assert rank_biserial_paired([1.0, -1.0, 2.0]) == pytest.approx(0.5)
    assert rank_biserial_paired([0.0, 2.0, 3.0]) == 1.0  # zeros dropped
    assert math.isnan(rank_biserial_paired([0.0, 0.0]))
    # agrees with the Wilcoxon statistics: r = (W+ − W−) / (W+ + W−)
    d = np.array([0.3, -0.1, 0.25, 0.05, -0.02, 0.4, 0.15])
    ranks = stats.rankdata(np.abs(d))
    w_pos, w_neg = ranks[d > 0].sum(), ranks[d < 0].sum()
    assert rank_biserial_paired(d) == pytest.approx((w_pos - w_neg) / (w_pos + w_neg))


def test_bootstrap_is_seeded_and_sensible() -> None:
    d = np.random.default_rng(3).normal(0.05, 0.03, 20)
    ci1 = bootstrap_ci(d, n_boot=1000, seed=7)
    ci2 = bootstrap_ci(d, n_boot=1000, seed=7)
    ci3 = bootstrap_ci(d, n_boot=1000, seed=8)
    assert ci1 == ci2
    assert ci1 != ci3
    assert ci1[0] < d.mean() < ci1[1]
    # close to the t interval for normal data
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert ci1[1] - ci1[0] == pytest.approx(2 * half, rel=0.25)
    assert bootstrap_ci([0.1, 0.1, 0.1], seed=0) == (0.1, 0.1)
    assert all(math.isnan(v) for v in bootstrap_ci([0.1], seed=0))


# ----------------------------------------------------------------------------- compare_arms


def _arm_frame(values: dict[str, np.ndarray], patients: list[str], extra: dict[str, float] | None = None
               ) -> pd.DataFrame:
    rows = []
    for i, pid in enumerate(patients):
        for organ in ORGAN_NAMES:
            base = values[organ][i]
            rows.append({"patient": pid, "organ": organ, "dice": base, "iou": base / (2 - base),
                         "precision": min(1.0, base + (extra or {}).get("precision", 0.02)),
                         "recall": min(1.0, base + (extra or {}).get("recall", 0.0)),
                         "hd": 30 * (1 - base), "hd95": 20 * (1 - base), "assd": 5 * (1 - base), "nsd": base,
                         "vol_gt_ml": 100.0, "vol_pred_ml": 100.0 * (1 + (extra or {}).get("vol", 0.0))})
    return pd.DataFrame(rows)


@pytest.fixture()
def three_arms(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    patients = [f"Patient_{i:02d}" for i in range(1, 13)]
    base = {o: rng.uniform(0.6, 0.85, len(patients)) for o in ORGAN_NAMES}
    arms = {
        "enet": {o: base[o] for o in ORGAN_NAMES},
        "customnet": {o: base[o] + rng.normal(0.03, 0.02, len(patients)) for o in ORGAN_NAMES},
        "nnunet3d": {o: base[o] + rng.normal(0.08, 0.02, len(patients)) for o in ORGAN_NAMES},
    }
    paths = []
    for name, vals in arms.items():
        extra = {"precision": -0.10, "recall": 0.10, "vol": 0.25} if name == "nnunet3d" else None
        df = _arm_frame({o: np.clip(v, 0, 0.97) for o, v in vals.items()}, patients, extra)
        if name == "customnet":  # one patient missing, one NaN (not applicable) organ
            df = df[df["patient"] != "Patient_12"].copy()
            df.loc[(df["patient"] == "Patient_03") & (df["organ"] == "trachea"), ["dice", "hd95"]] = np.nan
        path = tmp_path / name / "metrics.csv"
        path.parent.mkdir()
        df.to_csv(path, index=False)
        paths.append(path)
    return paths


def test_compare_arms_outputs_and_pairing(three_arms: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    st_ = compare_arms(three_arms, None, out, seed=3, n_boot=500)
    assert list(st_.columns) == list(STATS_COLUMNS)
    assert sorted(set(st_["arm_a"]) | set(st_["arm_b"])) == ["customnet", "enet", "nnunet3d"]  # names from folders
    # 6 metrics × (4 organs + mean) × 3 pairs
    assert len(st_) == 6 * 5 * 3
    for name in ("stats.csv", "shift.csv", "summary.txt"):
        assert (out / name).is_file()
    assert not list(out.glob(".*tmp*"))
    back = pd.read_csv(out / "stats.csv")
    assert len(back) == len(st_)
    # shift.csv is what run_comparison computes, column for column (numbers within CSV rounding)
    shift = pd.read_csv(out / "shift.csv", keep_default_na=False)
    expected = run_comparison(three_arms, None, seed=3, n_boot=500).shift
    assert list(shift.columns) == list(SHIFT_COLUMNS) and len(shift) == len(expected) == 5 * 3  # (4 organs + mean) × 3 pairs
    assert list(shift["pattern"]) == list(expected["pattern"])
    for col in ("d_dice", "d_precision", "d_recall"):
        np.testing.assert_allclose(shift[col].astype(float), expected[col].astype(float), atol=1e-6)
    row = st_[(st_.metric == "dice") & (st_.organ == "trachea") & (st_.arm_a == "enet") & (st_.arm_b == "customnet")]
    r = row.iloc[0]
    assert r["n"] == 10 and r["n_dropped"] == 2
    assert "Patient_12 (not in customnet)" in r["dropped"] and "Patient_03 (no value in customnet)" in r["dropped"]
    # a patient dropped for the trachea still counts for the heart
    heart = st_[(st_.metric == "dice") & (st_.organ == "heart") & (st_.arm_a == "enet") & (st_.arm_b == "customnet")]
    assert heart.iloc[0]["n"] == 11
    # organ mean of Patient_03 uses the 3 organs both arms have
    mean = st_[(st_.metric == "dice") & (st_.organ == "mean") & (st_.arm_a == "enet") & (st_.arm_b == "customnet")]
    assert mean.iloc[0]["n"] == 11
    # the strong nnunet3d effect is detected and it is the better arm; HD95 direction is reversed
    strong = st_[(st_.metric == "dice") & (st_.organ == "mean") & (st_.arm_b == "nnunet3d") & (st_.arm_a == "enet")]
    assert bool(strong.iloc[0]["significant"]) and strong.iloc[0]["better"] == "nnunet3d"
    hd = st_[(st_.metric == "hd95") & (st_.organ == "mean") & (st_.arm_b == "nnunet3d") & (st_.arm_a == "enet")]
    assert hd.iloc[0]["mean_diff"] < 0 and hd.iloc[0]["better"] == "nnunet3d"
    summary = (out / "summary.txt").read_text(encoding="utf-8")
    assert "Dice — higher is better" in summary and "HD95 (mm) — lower is better" in summary


def test_compare_holm_within_each_metric_family(three_arms: list[Path]) -> None:
    st_ = compare_arms(three_arms, ["a", "b", "c"], None, n_boot=200)
    for metric, fam in st_.groupby("metric"):
        np.testing.assert_allclose(fam["p_holm"].to_numpy(), holm(fam["p"].to_numpy()), equal_nan=True)
        assert metric in ("dice", "hd95", "assd", "nsd", "precision", "recall")
    assert ((st_["p_holm"] >= st_["p"]) | st_["p"].isna()).all()
    assert (st_["significant"] == (st_["p_holm"] < 0.05)).all()


def test_compare_reproduces_scipy_on_each_row(three_arms: list[Path]) -> None:
    st_ = compare_arms(three_arms, ["enet", "customnet", "nnunet3d"], None, unpaired=True, n_boot=200)
    frames = {n: pd.read_csv(p) for n, p in zip(["enet", "customnet", "nnunet3d"], three_arms, strict=True)}
    checked = {TEST_T: 0, TEST_WILCOXON: 0}
    for _, r in st_[st_.organ != "mean"].iterrows():
        wa = frames[r["arm_a"]].pivot(index="patient", columns="organ", values=r["metric"])[r["organ"]]
        wb = frames[r["arm_b"]].pivot(index="patient", columns="organ", values=r["metric"])[r["organ"]]
        j = pd.concat([wa, wb], axis=1, join="inner").dropna()
        a, b = j.iloc[:, 0].to_numpy(), j.iloc[:, 1].to_numpy()
        assert r["n"] == len(a)
        if r["test"] == TEST_T:
            ref = stats.ttest_rel(b, a)
            assert r["statistic"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
        elif r["test"] == TEST_WILCOXON:
            ref = stats.wilcoxon(b - a)
            assert r["statistic"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
        else:
            continue
        checked[r["test"]] += 1
        mw = stats.mannwhitneyu(a, b, alternative="two-sided")
        assert r["mwu_u"] == pytest.approx(mw.statistic) and r["mwu_p"] == pytest.approx(mw.pvalue)
        assert "ignores the pairing" in r["note"]
    assert checked[TEST_T] > 0  # both branches exercised on this data
    assert checked[TEST_WILCOXON] > 0
    assert st_["mwu_p_holm"].notna().any()


def test_compare_is_deterministic_with_seed(three_arms: list[Path]) -> None:
    s1 = compare_arms(three_arms, None, None, seed=11, n_boot=300)
    s2 = compare_arms(three_arms, None, None, seed=11, n_boot=300)
    s3 = compare_arms(three_arms, None, None, seed=12, n_boot=300)
    pd.testing.assert_frame_equal(s1, s2)
    assert not np.allclose(s1["ci_low"].to_numpy(), s3["ci_low"].to_numpy(), equal_nan=True)
    # the interval of one comparison does not depend on which other arms are compared
    s4 = compare_arms(three_arms[:2], None, None, seed=11, n_boot=300)
    key = ["metric", "organ", "arm_a", "arm_b"]
    merged = s4.merge(s1, on=key, suffixes=("_two", "_three"))
    np.testing.assert_allclose(merged["ci_low_two"], merged["ci_low_three"], equal_nan=True)


def test_shift_table_flags_over_segmentation(three_arms: list[Path]) -> None:
    res = run_comparison(three_arms, None, n_boot=200)
    heart = res.shift[(res.shift.organ == "heart") & (res.shift.arm_a == "enet") & (res.shift.arm_b == "nnunet3d")]
    r = heart.iloc[0]
    assert r["d_dice"] > 0 and r["d_precision"] < 0 and r["d_recall"] > 0  # the seed's heart finding
    assert "over-segmentation" in r["pattern"]
    assert r["vol_err_pct_b"] == pytest.approx(25.0) and r["vol_err_pct_a"] == pytest.approx(0.0)
    assert "under-segmentation" in shift_pattern(0.05, -0.04)
    assert shift_pattern(0.0, 0.001) == "no clear shift"


def test_small_and_degenerate_inputs(tmp_path: Path) -> None:
    two = pd.DataFrame({"patient": ["P1", "P2"] * 1, "organ": ["heart", "heart"], "dice": [0.8, 0.9]})
    same = two.copy()
    st_ = compare_arms([two, same], ["x", "y"], tmp_path / "o", metric_names=["dice"], n_boot=100)
    assert (st_["test"] == "none").all()
    assert st_["note"].str.contains("pair").all()
    assert (tmp_path / "o" / "summary.txt").is_file()
    assert "without a test" in (tmp_path / "o" / "summary.txt").read_text(encoding="utf-8")


def test_bad_inputs_raise_one_line_errors(tmp_path: Path, three_arms: list[Path]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,dice\nP1,0.5\n")
    with pytest.raises(InputError, match="missing column"):
        compare_arms([bad, three_arms[0]], None, None)
    weird = tmp_path / "weird.csv"
    weird.write_text("patient,organ,dice\nP1,spleen,0.5\n")
    with pytest.raises(InputError, match="unknown organ"):
        compare_arms([weird, three_arms[0]], None, None)
    dup = tmp_path / "dup.csv"
    dup.write_text("patient,organ,dice\nP1,heart,0.5\nP1,heart,0.6\n")
    with pytest.raises(InputError, match="duplicate"):
        compare_arms([dup, three_arms[0]], None, None)
    text = tmp_path / "text.csv"
    text.write_text("patient,organ,dice\nP1,heart,abc\n")
    with pytest.raises(InputError, match="non-numeric"):
        compare_arms([text, three_arms[0]], None, None)
    with pytest.raises(ConfigError):
        compare_arms([three_arms[0]], None, None)
    with pytest.raises(ConfigError):
        compare_arms(three_arms, ["a", "b"], None)
    with pytest.raises(ConfigError):
        compare_arms(three_arms, ["a", "a", "b"], None)


def test_cli_compare(three_arms: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["compare", "--metrics", *map(str, three_arms), "--names", "enet", "customnet", "nnunet3d",
                 "--out", str(out), "--unpaired", "--seed", "1", "--n-boot", "300"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Mann–Whitney U ignores the pairing" in printed and "Wilcoxon" in printed
    assert (out / "stats.csv").is_file()
    assert pd.read_csv(out / "stats.csv")["mwu_p"].notna().any()
    # bad input: one line, exit 1, nothing written
    out2 = tmp_path / "cli2"
    code = main(["compare", "--metrics", str(three_arms[0]), str(tmp_path / "nope.csv"), "--out", str(out2)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("thoraxseg: error:") and "nope.csv: file not found" in err
    assert len(err.strip().splitlines()) == 1
    assert not out2.exists()


def test_compact_terminal_summary_fits_100_columns(three_arms: list[Path]) -> None:
    import io

    from rich.console import Console

    from thoraxseg.stats.compare import summary_renderables

    res = run_comparison(three_arms, None, n_boot=200, metric_names=["dice"])
    buf = io.StringIO()
    console = Console(file=buf, width=100, color_system=None)
    for item in summary_renderables(res, compact=True)[:2]:  # heading and the Dice table
        console.print(item)
    text = buf.getvalue()
    assert "mean A" not in text and "p Holm" in text and "…" not in text  # nothing truncated at 100 columns
