"""Benchmark the 2D arms' preprocessing: a fixed pixel size in mm vs the old square resize, side by side.

Both arms are trained with the demo settings (``configs/demo.yaml``) on 12 small phantoms, once by
this tree (slices resampled to one pixel size, ``preprocessing: spacing``) and once by a baseline
tree (``--baseline``, e.g. a ``git worktree`` of the commit before the change, which pads each slice
to a square and resizes it). Each model then predicts the same held-out patients on four grids:

``small`` (the grid it was trained on), ``full`` (the same patients regenerated on the 512 × 512 grid),
``crop200`` (cropped to a 200 mm field of view around the mediastinum) and ``pad650`` (padded with air
to 650 mm) — :func:`thoraxseg.data.phantom.field_of_view_variants`.

Printed: mean Dice per organ on each grid and its difference to ``small`` (target: within 0.05 with
the new preprocessing), training images/s and prediction seconds per volume for both trees (target:
within 15 %), and the machine's load. Both sides run the same ``thoraxseg train`` / ``predict``
commands as subprocesses, alternately, so they see the same machine.

Short CPU runs differ by several hundredths per organ from one training seed to the next, so a
difference between grids or trees means something only next to that spread: ``--train-seed N [N ...]``
trains once per seed instead of with the demo's (run folders ``<arm>_<tree>_seedN`` in the same
``--work``; finished runs are reused) and, for several seeds, ends with a summary per arm, grid and
organ: the mean Δ over the seeds, its range, and on how many seeds ``|Δ| ≤ 0.05``.

Run: ``.venv/bin/python benchmarks/spacing2d.py [--baseline ../old-tree] [--work DIR] [--arms enet customnet]
[--train-seed N [N ...]] [--epochs N] [--set KEY=VALUE ...]``
(``--epochs``: every arm trains N epochs instead of the demo's; the run folders get ``_epochsN``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from thoraxseg.data.phantom import VARIANTS, field_of_view_variants, generate_cohort
from thoraxseg.data.volume import load_label, save_label, save_volume
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.training.trainer import dice_per_organ

ROOT = Path(__file__).resolve().parents[1]
GRIDS = VARIANTS
N_TRAIN = 12


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f}"


def make_test_grids(work: Path, indices: list[int], seed: int) -> None:
    """Write ``work/test/<grid>/Patient_XX.nii.gz`` and ``work/gt/<grid>/Patient_XX.nii.gz``."""
    for index in indices:
        name = f"Patient_{index + 1:02d}"
        for grid, (image, labels) in field_of_view_variants(seed, index).items():
            (work / "test" / grid).mkdir(parents=True, exist_ok=True)
            (work / "gt" / grid).mkdir(parents=True, exist_ok=True)
            save_volume(image, work / "test" / grid / f"{name}.nii.gz")
            save_label(labels.array, image, work / "gt" / grid / f"{name}.nii.gz")


def _thoraxseg(tree: Path, args: list[str]) -> float:
    """Run ``thoraxseg ARGS`` with ``tree/src`` first on the path; returns wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "THORAXSEG_NO_PROGRESS": "1"}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "thoraxseg", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"thoraxseg {' '.join(args)} failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def train_speed(run: Path) -> float:
    """Training slices per second over all epochs (``log.csv``: samples / seconds, validation included)."""
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["samples"]) for r in rows) / sum(float(r["seconds"]) for r in rows)


def mean_dice(pred_dir: Path, gt_dir: Path) -> dict[str, float]:
    per: dict[str, list[float]] = {name: [] for name in ORGAN_NAMES}
    for gt_path in sorted(gt_dir.glob("*.nii.gz")):
        d = dice_per_organ(load_label(pred_dir / gt_path.name).array, load_label(gt_path).array)
        for name, v in d.items():
            if np.isfinite(v):
                per[name].append(v)
    return {name: float(np.mean(v)) if v else float("nan") for name, v in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None,
                        help="tree of the commit to compare with (without: this tree alone, no ratios)")
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: temporary)")
    parser.add_argument("--arms", nargs="+", default=["customnet", "enet"], choices=["enet", "customnet"])
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="phantom cohort seed")
    parser.add_argument("--train-seed", type=int, nargs="+", default=None,
                        help="training seed(s) of both trees, one training per seed (default: the demo config's)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="passed to thoraxseg train --set (dotted keys, YAML values, e.g. augment.fov_prob=0.6); "
                             "the run folders get a matching suffix")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train every arm this many epochs instead of the demo's (run folders get _epochsN)")
    parser.add_argument("--speed-epochs", type=int, default=0,
                        help="instead: time N-epoch trainings and the small-grid prediction, baseline and new "
                             "alternately (--speed-repeats times), and print the ratios")
    parser.add_argument("--speed-repeats", type=int, default=2)
    args = parser.parse_args()
    if args.speed_epochs and args.baseline is None:
        parser.error("--speed-epochs compares two trees: give --baseline")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, not {args.epochs}")
    if args.epochs is not None and args.speed_epochs:
        parser.error("--epochs applies to the Dice runs; --speed-epochs sets its own")
    work = args.work or Path(tempfile.mkdtemp(prefix="spacing2d_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; {os.cpu_count()} CPUs; {_load()} at the start", flush=True)
    if not (work / "train").exists():
        generate_cohort(work / "train", N_TRAIN, size="small", seed=args.seed)
    if not (work / "test").exists():
        make_test_grids(work, list(range(N_TRAIN, N_TRAIN + args.test_cases)), args.seed)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["arms"]
    trees = {"baseline": args.baseline.resolve(), "new": ROOT} if args.baseline else {"new": ROOT}
    if args.speed_epochs:
        speed(args, work, demo, trees)
        return
    seeds = [None] if args.train_seed is None else list(dict.fromkeys(args.train_seed))
    per_seed = {seed: measure(args, work, demo, trees, seed) for seed in seeds}
    if len(seeds) > 1:
        print_seed_summary(per_seed)


def measure(args: argparse.Namespace, work: Path, demo: dict, trees: dict[str, Path],
            train_seed: int | None) -> dict[str, dict]:
    """Train (unless done) and predict every arm with ``train_seed`` on both trees; print and return the Dice."""
    results: dict[str, dict] = {}
    suffix = ("" if train_seed is None else f"_seed{train_seed}") + "".join(
        f"_{o.replace('=', '-')}" for o in args.overrides) + ("" if args.epochs is None else f"_epochs{args.epochs}")
    for arm in args.arms:
        spec = demo[arm]
        cfg_path = work / f"{arm}{suffix}.yaml"
        settings = dict(spec["config"]) if train_seed is None else {**spec["config"], "seed": train_seed}
        cfg_path.write_text(yaml.safe_dump(settings))
        for side, tree in trees.items():
            run = work / "runs" / f"{arm}_{side}{suffix}"
            if not (run / "last.pt").exists():
                print(f"training {arm} ({side}{suffix}) ... {_load()}", flush=True)
                _thoraxseg(tree, ["train", "--model", arm, "--data", str(work / "train"), "--out", str(run),
                                  "--config", str(cfg_path), "--epochs", str(spec["epochs"] if args.epochs is None else args.epochs),
                                  "--threads", str(args.threads), *(f"--set={o}" for o in args.overrides)])
            entry = results.setdefault(f"{arm}_{side}", {"train_images_per_s": train_speed(run)})
            config = yaml.safe_load((run / "config.yaml").read_text())
            entry["pixel"] = (f"{config['spacing_mm']} mm" if config.get("preprocessing") == "spacing"
                              else "square resize")
            for grid in GRIDS:
                out = work / "pred" / f"{arm}_{side}{suffix}" / grid
                seconds = _thoraxseg(tree, ["predict", "--run", str(run), "--images", str(work / "test" / grid),
                                            "--out", str(out)])
                entry[grid] = mean_dice(out, work / "gt" / grid)
                entry[f"predict_s_per_volume_{grid}"] = seconds / args.test_cases
            print(f"{arm} ({side}{suffix}) done; {_load()}", flush=True)
            (work / f"results{suffix}.json").write_text(json.dumps(results, indent=1))

    organs = list(ORGAN_NAMES)
    seed_note = "" if train_seed is None else f", training seed {train_seed}"
    print(f"\nmean Dice over {args.test_cases} held-out phantoms (Δ = grid − small{seed_note}); {_load()} at the end")
    print("| arm | tree | pixel | grid | " + " | ".join(organs) + " | mean | max |Δ| |")
    print("|---|---|---|---|" + "---:|" * (len(organs) + 2))
    for key, entry in results.items():
        arm, side = key.rsplit("_", 1)
        base = entry["small"]
        for grid in GRIDS:
            d = entry[grid]
            cells = [f"{d[o]:.3f}" if grid == "small" else f"{d[o]:.3f} ({d[o] - base[o]:+.3f})" for o in organs]
            worst = "" if grid == "small" else f"{max(abs(d[o] - base[o]) for o in organs):.3f}"
            print(f"| {arm} | {side} | {entry['pixel']} | {grid} | " + " | ".join(cells)
                  + f" | {np.mean([d[o] for o in organs]):.3f} | {worst} |")
    if args.baseline:
        print("\n| arm | train images/s baseline | new | ratio | predict s/volume (small grid, import included) "
              "baseline | new | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for arm in args.arms:
            b, n = results[f"{arm}_baseline"], results[f"{arm}_new"]
            tb, tn = b["train_images_per_s"], n["train_images_per_s"]
            pb, pn = b["predict_s_per_volume_small"], n["predict_s_per_volume_small"]
            print(f"| {arm} | {tb:.1f} | {tn:.1f} | {tn / tb:.2f} | {pb:.2f} | {pn:.2f} | {pn / pb:.2f} |")
    return results


#: The issue's invariance target: mean Dice per organ within this much of the training grid's.
TARGET_DELTA = 0.05


def print_seed_summary(per_seed: dict[int | None, dict[str, dict]]) -> None:
    """Per arm, tree, grid and organ over the training seeds: mean Δ to ``small``, its range, seeds within target."""
    organs = list(ORGAN_NAMES)
    seeds = list(per_seed)
    print(f"\nover training seeds {', '.join(str(s) for s in seeds)}: mean Δ to small [min, max], "
          f"and on how many seeds |Δ| ≤ {TARGET_DELTA}")
    print("| arm | tree | grid | " + " | ".join(organs) + " | seeds within on every organ |")
    print("|---|---|---|" + "---|" * len(organs) + "---:|")
    for key in per_seed[seeds[0]]:
        arm, side = key.rsplit("_", 1)
        for grid in GRIDS[1:]:
            deltas = {o: np.array([per_seed[s][key][grid][o] - per_seed[s][key]["small"][o] for s in seeds])
                      for o in organs}
            cells = [f"{d.mean():+.3f} [{d.min():+.3f}, {d.max():+.3f}] {int((np.abs(d) <= TARGET_DELTA).sum())}/"
                     f"{len(seeds)}" for d in deltas.values()]
            every = int(np.all([np.abs(d) <= TARGET_DELTA for d in deltas.values()], axis=0).sum())
            print(f"| {arm} | {side} | {grid} | " + " | ".join(cells) + f" | {every}/{len(seeds)} |")


def speed(args: argparse.Namespace, work: Path, demo: dict, trees: dict[str, Path]) -> None:
    """Training images/s and prediction s/volume of both trees, measured alternately (same machine state)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for rep in range(args.speed_repeats):
        for arm in args.arms:
            cfg_path = work / f"{arm}.yaml"
            cfg_path.write_text(yaml.safe_dump(demo[arm]["config"]))
            for side, tree in (trees.items() if rep % 2 == 0 else reversed(trees.items())):
                run = work / "speed" / f"{arm}_{side}_{rep}"
                print(f"speed: {arm} ({side}) repeat {rep + 1}; {_load()}", flush=True)
                _thoraxseg(tree, ["train", "--model", arm, "--data", str(work / "train"), "--out", str(run),
                                  "--config", str(cfg_path), "--epochs", str(args.speed_epochs),
                                  "--threads", str(args.threads)])
                seconds = _thoraxseg(tree, ["predict", "--run", str(run), "--images", str(work / "test" / "small"),
                                            "--out", str(work / "speed" / f"pred_{arm}_{side}_{rep}")])
                entry = rows.setdefault(f"{arm}_{side}", {"train": [], "predict": []})
                entry["train"].append(train_speed(run))
                entry["predict"].append(seconds / args.test_cases)
    print(f"\nspeed ({args.speed_epochs} epochs x {args.speed_repeats} repeats, alternating; medians; {_load()})")
    print("| arm | train images/s baseline | new | new / baseline | predict s/volume baseline | new | new / baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm in args.arms:
        b, n = rows[f"{arm}_baseline"], rows[f"{arm}_new"]
        tb, tn = float(np.median(b["train"])), float(np.median(n["train"]))
        pb, pn = float(np.median(b["predict"])), float(np.median(n["predict"]))
        print(f"| {arm} | {tb:.1f} | {tn:.1f} | {tn / tb:.2f} | {pb:.2f} | {pn:.2f} | {pn / pb:.2f} |")


if __name__ == "__main__":
    main()
