"""Speed, memory and agreement of the metrics engine vs MONAI, medpy and surface-distance.

A SegTHOR-size case — 512×512×200 voxels, spacing 0.98×0.98×2.5 mm (x, y, z),
four organs of realistic size (ellipsoid heart, tubes for the esophagus,
trachea and aorta) — and a prediction that differs by a few voxels (heart
shifted by one voxel, aorta dilated by one voxel, trachea eroded by one voxel,
seeded boundary noise on the esophagus). Every tool computes the same set of
metrics it offers, on in-memory arrays (file reading is not timed):

* ours: dice, iou, precision, recall, hd, hd95, assd, nsd(2 mm), volumes — all four organs;
* MONAI (CPU): compute_dice, compute_iou, compute_hausdorff_distance (max and
  percentile=95), compute_average_surface_distance(symmetric), compute_surface_dice
  (use_subvoxels) — one call each on one-hot tensors; the one-hot conversion is
  timed separately and *not* charged to MONAI;
* medpy: dc, jc, precision, recall, hd, hd95, assd per organ (full-volume EDTs;
  by default timed on the heart only and multiplied by 4 — its cost is set by
  the volume size, not the organ — use ``--medpy-full`` to time all four);
* surface-distance (DeepMind): compute_surface_distances + ASSD, robust HD95,
  HD and surface Dice per organ.

A second scenario adds 300 stray voxels per organ anywhere in the volume (a raw
prediction without connected-component clean-up), so every organ's crop is the
whole image: ours vs MONAI there, time and memory. It also times an alternative distance back-end (scipy ``distance_transform_edt``
with ``sampling`` on the same crops) to justify the KD-tree choice, and measures
the engine's peak extra memory (tracemalloc and the process RSS high-water mark).

Run: ``.venv/bin/python benchmarks/metrics_speed.py [--repeats 5] [--medpy-full] [--skip-medpy] [--skip-scattered]``
(about 5 minutes on 2 cores, most of it in MONAI and medpy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from thoraxseg.labels import ORGAN_NAMES, ORGANS
from thoraxseg.metrics.engine import _union_box, compute_metrics, label_boxes
from thoraxseg.metrics.surface import corner_codes, padded_mask, surfel_area_table, voxel_surface

SHAPE = (512, 512, 200)
SPACING = (0.98, 0.98, 2.5)
TOL = 2.0
CODES = [int(o) for o in ORGANS]


# --------------------------------------------------------------------------- phantom
Grid = tuple[tuple[int, int, int], tuple[float, float, float]]


def _ellipsoid(lab: np.ndarray, spacing: tuple[float, float, float], centre_mm: np.ndarray,
               radii_mm: tuple[float, float, float], code: int) -> None:
    sp = np.asarray(spacing)
    c = np.asarray(centre_mm) / sp
    r = np.asarray(radii_mm) / sp
    lo = np.maximum(np.floor(c - r).astype(int), 0)
    hi = np.minimum(np.ceil(c + r).astype(int) + 1, lab.shape)
    xx, yy, zz = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((zz - c[2]) / r[2]) ** 2 <= 1.0
    view = lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    view[inside] = code


def _tube(lab: np.ndarray, spacing: tuple[float, float, float], path_mm: Callable[[float], np.ndarray],
          t_range: tuple[float, float], radius_mm: float, code: int, steps: int = 300) -> None:
    """Union of balls of ``radius_mm`` along a parametric path (mm)."""
    for t in np.linspace(*t_range, steps):
        _ellipsoid(lab, spacing, path_mm(float(t)), (radius_mm,) * 3, code)


def make_case(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) uint8 label volumes of a synthetic thorax (field of view ~500 mm in each axis)."""
    rng = np.random.default_rng(seed)
    j = rng.normal(0.0, 4.0, 3)  # per-case jitter of the organ positions (mm)
    gt = np.zeros(shape, dtype=np.uint8)
    zl = shape[2] * spacing[2]
    # heart: ellipsoid, semi-axes 65/50/55 mm (~ 700 mL)
    _ellipsoid(gt, spacing, np.array([270.0, 220.0, 0.35 * zl]) + j, (65.0, 50.0, 55.0), 2)
    # aorta: ascending (r 15 mm), arch, descending (r 12 mm)
    _tube(gt, spacing, lambda t: np.array([255.0, 215.0, t]) + j, (0.35 * zl, 0.62 * zl), 15.0, 4)
    _tube(gt, spacing, lambda t: np.array([255.0 + 20 * (1 - np.cos(t)), 215.0 + 45 * (1 - np.cos(t)),
                                           0.62 * zl + 25 * np.sin(t)]) + j, (0.0, np.pi), 13.0, 4)
    _tube(gt, spacing, lambda t: np.array([295.0, 305.0, t]) + j, (0.08 * zl, 0.62 * zl), 12.0, 4)
    # trachea (r 9 mm) with a short bifurcation
    _tube(gt, spacing, lambda t: np.array([250.0, 285.0, t]) + j, (0.55 * zl, 0.98 * zl), 9.0, 3)
    _tube(gt, spacing, lambda t: np.array([250.0 - t, 285.0, 0.55 * zl - 0.8 * t]) + j, (0.0, 40.0), 6.0, 3)
    _tube(gt, spacing, lambda t: np.array([250.0 + t, 285.0, 0.55 * zl - 0.8 * t]) + j, (0.0, 40.0), 6.0, 3)
    # esophagus (r 6 mm), gently curved, behind the trachea
    _tube(gt, spacing, lambda t: np.array([262.0 + 8 * np.sin(t / 80.0), 310.0, t]) + j,
          (0.1 * zl, 0.97 * zl), 6.0, 1)
    # prediction: a few voxels off per organ
    pred = np.zeros_like(gt)
    pred[np.roll(gt == 2, (1, 1, 0), axis=(0, 1, 2))] = 2
    pred[ndimage.binary_dilation(gt == 4, iterations=1)] = 4
    pred[ndimage.binary_erosion(gt == 3, iterations=1)] = 3
    eso = gt == 1
    shell = ndimage.binary_dilation(eso) ^ ndimage.binary_erosion(eso)
    flip = shell & (rng.random(shape, dtype=np.float32) < 0.3)
    pred[eso ^ flip] = 1
    return gt, pred


# --------------------------------------------------------------------------- timing helpers
def _best(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def _rss_peak_extra(fn: Callable[[], object]) -> float | None:
    """Extra RSS high-water (MiB) during ``fn`` (Linux: resets VmHWM via clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024.0
    except OSError:
        return None


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)


# --------------------------------------------------------------------------- alternatives
def edt_backend(gt: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Same metrics with scipy's EDT (``sampling``) on each crop instead of a KD-tree."""
    out: dict[str, dict[str, float]] = {}
    bg, bp = label_boxes(gt, CODES), label_boxes(pred, CODES)
    for code, name in zip(CODES, ORGAN_NAMES, strict=True):
        box = _union_box(bg[code], bp[code], gt.shape)
        g, p = padded_mask(gt[box] == code), padded_mask(pred[box] == code)
        eg, ep = voxel_surface(g), voxel_surface(p)
        dtg = ndimage.distance_transform_edt(~eg, sampling=SPACING)
        dtp = ndimage.distance_transform_edt(~ep, sampling=SPACING)
        d_pg, d_gp = dtg[ep], dtp[eg]
        cg, cp = corner_codes(g), corner_codes(p)
        table = surfel_area_table(SPACING)
        bgm, bpm = (cg != 0) & (cg != 255), (cp != 0) & (cp != 255)
        ctg = ndimage.distance_transform_edt(~bgm, sampling=SPACING)
        ctp = ndimage.distance_transform_edt(~bpm, sampling=SPACING)
        ag, ap = table[cg[bgm]], table[cp[bpm]]
        nsd = (ag[ctp[bgm] <= TOL].sum() + ap[ctg[bpm] <= TOL].sum()) / (ag.sum() + ap.sum())
        out[name] = {
            "hd": max(d_pg.max(), d_gp.max()),
            "hd95": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
            "assd": np.concatenate([d_pg, d_gp]).mean(),
            "nsd": float(nsd),
        }
    return out


def monai_metrics(gt: np.ndarray, pred: np.ndarray) -> tuple[float, dict[str, float], dict[str, dict[str, float]]]:
    """MONAI values per organ; returns (one-hot seconds, seconds per call, values)."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    t0 = time.perf_counter()
    n = max(CODES) + 1
    y = torch.nn.functional.one_hot(torch.from_numpy(gt).long(), n).permute(3, 0, 1, 2)[None].float()
    yp = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), n).permute(3, 0, 1, 2)[None].float()
    t_onehot = time.perf_counter() - t0
    sp = list(SPACING)
    calls: dict[str, Callable[[], torch.Tensor]] = {
        "dice": lambda: compute_dice(yp, y, include_background=False),
        "iou": lambda: compute_iou(yp, y, include_background=False),
        "hd": lambda: compute_hausdorff_distance(yp, y, spacing=sp),
        "hd95": lambda: compute_hausdorff_distance(yp, y, percentile=95, spacing=sp),
        "assd": lambda: compute_average_surface_distance(yp, y, symmetric=True, spacing=sp),
        "nsd": lambda: compute_surface_dice(yp, y, class_thresholds=[TOL] * len(CODES), spacing=sp,
                                            use_subvoxels=True),
    }
    res, seconds = {}, {}
    for k, fn in calls.items():
        t0 = time.perf_counter()
        res[k] = fn()
        seconds[k] = time.perf_counter() - t0
    out = {name: {k: float(v[0, i]) for k, v in res.items()} for i, name in enumerate(ORGAN_NAMES)}
    return t_onehot, seconds, out


def medpy_metrics(gt: np.ndarray, pred: np.ndarray, codes: list[int]) -> dict[str, dict[str, float]]:
    from medpy.metric import binary as mb

    out = {}
    for code in codes:
        g, p = gt == code, pred == code
        out[ORGAN_NAMES[code - 1]] = {
            "dice": mb.dc(p, g), "iou": mb.jc(p, g), "precision": mb.precision(p, g), "recall": mb.recall(p, g),
            "hd": mb.hd(p, g, voxelspacing=SPACING), "hd95": mb.hd95(p, g, voxelspacing=SPACING),
            "assd": mb.assd(p, g, voxelspacing=SPACING),
        }
    return out


def deepmind_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    import surface_distance as sd

    out = {}
    for code, name in zip(CODES, ORGAN_NAMES, strict=True):
        r = sd.compute_surface_distances(gt == code, pred == code, SPACING)
        a, b = sd.compute_average_surface_distance(r)
        out[name] = {
            "nsd": sd.compute_surface_dice_at_tolerance(r, TOL),
            "hd95_surfel": sd.compute_robust_hausdorff(r, 95),
            "hd_surfel": sd.compute_robust_hausdorff(r, 100),
            "asd_surfel": (a + b) / 2,
        }
    return out


def cohort_timing(n: int = 20, workers: tuple[int, ...] = (1, 2)) -> list[tuple[int, float]]:
    """Seconds for ``evaluate_folders`` on ``n`` small cases (128×128×60, 3.9×3.9×8.3 mm), files included."""
    import tempfile

    from thoraxseg.data.volume import Volume, save_label
    from thoraxseg.metrics.evaluate import evaluate_folders

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        affine = np.diag([3.9, 3.9, 8.3, 1.0])
        for i in range(n):
            gt, pred = make_case((128, 128, 60), (3.9, 3.9, 8.3), seed=i)
            ref = Volume(gt, affine)
            save_label(gt, ref, root / "gt" / f"Patient_{i + 1:02d}.nii.gz")
            save_label(pred, ref, root / "pred" / f"Patient_{i + 1:02d}.nii.gz")
        out = []
        for w in workers:
            t0 = time.perf_counter()
            df = evaluate_folders(root / "gt", root / "pred", workers=w)
            out.append((w, time.perf_counter() - t0))
            assert len(df) == 4 * n and df["dice"].notna().all()
    return out


# --------------------------------------------------------------------------- main
def _max_diff(ours: dict[str, dict[str, float]], other: dict[str, dict[str, float]], keys: list[str]) -> str:
    parts = []
    for k in keys:
        d = max(abs(float(ours[o][k]) - float(other[o][k])) for o in other if k in other[o])
        parts.append(f"{k} {d:.1e}")
    return ", ".join(parts)


def scattered(pred: np.ndarray, seed: int = 1, per_organ: int = 300) -> np.ndarray:
    """The prediction plus ``per_organ`` stray single voxels of each organ anywhere in the volume."""
    rng = np.random.default_rng(seed)
    out = pred.copy()
    for code in CODES:
        out[tuple(rng.integers(0, s, per_organ) for s in out.shape)] = code
    return out


def _ours(gt: np.ndarray, pred: np.ndarray, repeats: int) -> tuple[float, float, float, float | None, dict]:
    def fn() -> list[dict[str, float | str]]:
        return compute_metrics(gt, pred, SPACING, TOL)

    best, median, rows = _best(fn, repeats)
    values = {str(r["organ"]): {k: float(v) for k, v in r.items() if k != "organ"} for r in rows}  # type: ignore[union-attr]
    tracemalloc.start()
    fn()
    _, peak_tm = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, median, peak_tm / 2**20, _rss_peak_extra(fn), values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--medpy-full", action="store_true", help="time medpy on all four organs (minutes)")
    ap.add_argument("--skip-medpy", action="store_true")
    ap.add_argument("--skip-scattered", action="store_true", help="skip the scattered-false-positive scenario")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    t0 = time.perf_counter()
    gt, pred = make_case()
    print(f"case: {SHAPE} voxels, spacing {SPACING} mm, built in {time.perf_counter() - t0:.1f} s; "
          f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; cpus: {os.cpu_count()}")
    for code, name in zip(CODES, ORGAN_NAMES, strict=True):
        print(f"  {name:9s} GT {np.count_nonzero(gt == code) * np.prod(SPACING) / 1000:7.1f} mL, "
              f"pred {np.count_nonzero(pred == code) * np.prod(SPACING) / 1000:7.1f} mL")
    label_mib = (gt.nbytes + pred.nbytes) / 2**20

    t_ours, t_ours_med, tm_ours, rss_ours, ours = _ours(gt, pred, args.repeats)
    t_edt, _, edt = _best(lambda: edt_backend(gt, pred), max(1, args.repeats // 2))
    t_onehot, monai_calls, monai = monai_metrics(gt, pred)
    t_monai = sum(monai_calls.values())
    t0 = time.perf_counter()
    deepmind = deepmind_metrics(gt, pred)
    t_dm = time.perf_counter() - t0

    rows_out = [
        ("ours (KD-tree on surface points, crops)", t_ours, "all 10 metrics", "1"),
        ("ours with an EDT back-end on the crops", t_edt, "hd, hd95, assd, nsd", f"{t_edt / t_ours:.1f}"),
        ("MONAI 1.6 CPU", t_monai, "dice, iou, hd, hd95, assd, nsd", f"{t_monai / t_ours:.0f}"),
        ("surface-distance 0.1", t_dm, "nsd (+ its own hd, hd95, asd)", f"{t_dm / t_ours:.0f}"),
    ]
    medpy = None
    if not args.skip_medpy:
        codes = CODES if args.medpy_full else [2]
        t0 = time.perf_counter()
        medpy = medpy_metrics(gt, pred, codes)
        t_medpy = (time.perf_counter() - t0) * (len(CODES) / len(codes))
        note = "" if args.medpy_full else " (heart timed, ×4)"
        rows_out.append((f"medpy 0.5{note}", t_medpy, "dice, iou, prec, rec, hd, hd95, assd",
                         f"{t_medpy / t_ours:.0f}"))

    print()
    print("Typical case (prediction off by a few voxels):")
    print()
    print("| tool | seconds per case | metrics | × slower than ours |")
    print("|---|---:|---|---:|")
    for name, t, what, ratio in rows_out:
        print(f"| {name} | {t:.3f} | {what} | {ratio} |")
    print()
    print(f"ours: best {t_ours:.3f} s, median {t_ours_med:.3f} s of {args.repeats}; MONAI per call: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in monai_calls.items())
          + f"; MONAI one-hot conversion {t_onehot:.2f} s (not charged)")
    peak = max(tm_ours, rss_ours or 0.0)
    rss = f"{rss_ours:.1f} MiB" if rss_ours is not None else "n/a"
    print(f"peak extra memory of ours: tracemalloc {tm_ours:.1f} MiB, RSS high-water {rss}; "
          f"two label volumes {label_mib:.1f} MiB -> {peak / label_mib:.2f}× (target < 4×)")

    if not args.skip_scattered:
        bad = scattered(pred)
        s_best, _, s_tm, s_rss, s_ours = _ours(gt, bad, max(1, args.repeats // 2))
        _, s_calls, s_monai = monai_metrics(gt, bad)
        s_monai_t = sum(s_calls.values())
        s_peak = max(s_tm, s_rss or 0.0)
        print()
        print("Scattered false positives (same prediction + 300 stray voxels per organ anywhere in the volume,"
              " so every organ's crop is the whole image):")
        print(f"  ours {s_best:.3f} s, MONAI {s_monai_t:.2f} s ({s_monai_t / s_best:.0f}× slower); "
              f"peak extra memory {s_peak:.1f} MiB = {s_peak / label_mib:.2f}× the label volumes; "
              f"agreement vs MONAI: {_max_diff(s_ours, s_monai, ['dice', 'hd', 'hd95', 'assd', 'nsd'])}")

    print()
    os.environ.setdefault("THORAXSEG_NO_PROGRESS", "1")
    for w, t in cohort_timing():
        print(f"evaluate_folders, 20 small cases (128×128×60, 3.9×3.9×8.3 mm, files read): {t:.2f} s with workers={w}")
    print()
    print("agreement on the typical case (max |difference| over organs):")
    print(f"  vs MONAI           : {_max_diff(ours, monai, ['dice', 'iou', 'hd', 'hd95', 'assd', 'nsd'])}")
    print(f"  vs surface-distance: {_max_diff(ours, deepmind, ['nsd'])}")
    print(f"  vs EDT back-end    : {_max_diff(ours, edt, ['hd', 'hd95', 'assd', 'nsd'])}")
    if medpy is not None:
        scope = "all organs" if args.medpy_full else "heart only"
        print(f"  vs medpy ({scope}): {_max_diff(ours, medpy, ['dice', 'iou', 'precision', 'recall', 'hd', 'assd'])}"
              f"; hd95 {_max_diff(ours, medpy, ['hd95']).split()[-1]} (medpy pools both directions before the"
              " percentile, so its hd95 can differ by definition)")
    print()
    print("| organ | dice | hd | hd95 | assd | nsd | MONAI hd95 | MONAI nsd | DeepMind nsd |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ORGAN_NAMES:
        o = ours[name]
        print(f"| {name} | {o['dice']:.4f} | {o['hd']:.3f} | {o['hd95']:.3f} | {o['assd']:.3f} | {o['nsd']:.4f} | "
              f"{monai[name]['hd95']:.3f} | {monai[name]['nsd']:.4f} | {deepmind[name]['nsd']:.4f} |")


if __name__ == "__main__":
    main()
