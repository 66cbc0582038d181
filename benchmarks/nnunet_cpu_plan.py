"""Which ``--plans cpu`` network learns all four organs cheapest on a 2-core CPU?

Each variant changes only the plan's network numbers (``cpu_plan``: patch cap, features, batch)
and the run length; nnU-Net's trainer, loss, augmentation, foreground sampling and sliding-window
predictor stay. Every variant trains fold 0 of the same small phantom cohort (the demo's size,
``--cases``) with the same seed and predicts the same held-out phantoms (``--test-cases``, another
seed, no mirroring), which thoraxseg then evaluates.

Printed per variant: patch, features, steps, training seconds (wall, this machine), seconds per
step, prediction seconds per case and the mean test Dice per organ; with ``--step-times``, also one
forward + backward of each variant's network alone (batch as planned, no augmentation), which is
cheap and says what a step costs before training it. Results accumulate in ``--results`` (JSON),
so variants can be run one at a time; each row records the load average at its start and end —
compare rows only from one machine and an otherwise idle CPU.

Run: ``.venv/bin/python benchmarks/nnunet_cpu_plan.py [--variants legacy whole16] [--step-times]
[--work DIR] [--results FILE] [--cases 12] [--test-cases 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd

from thoraxseg.data.phantom import generate_cohort
from thoraxseg.labels import ORGAN_NAMES
from thoraxseg.metrics.evaluate import evaluate_folders
from thoraxseg.nnunet import api
from thoraxseg.nnunet.plans import CPU_PLAN, LEGACY_CPU_PLAN, make_cpu_plans

#: name -> (cpu_plan, epochs, iterations per epoch)
VARIANTS: dict[str, tuple[dict[str, Any], int, int]] = {
    # the CPU plan before cpu_plan (LEGACY_CPU_PLAN) and its demo run: 32³, 16-128 features, Dice per patch
    "legacy": (LEGACY_CPU_PLAN.as_dict(), 36, 40),
    # CPU_PLAN: the same network, Dice pooled over the batch (nnU-Net's rule for a patch < 25 % of the image)
    "default_800": (CPU_PLAN.as_dict(), 20, 40),
    "default": (CPU_PLAN.as_dict(), 60, 40),
    # half the features
    "f8_1200": ({**CPU_PLAN.as_dict(), "base_features": 8, "max_features": 64}, 30, 40),
    "f8_2400": ({**CPU_PLAN.as_dict(), "base_features": 8, "max_features": 64}, 60, 40),
    # more in-plane context per patch
    "z16_xy64_f8": ({**CPU_PLAN.as_dict(), "max_patch": [16, 64, 64], "base_features": 8, "max_features": 64},
                    12, 40),
    "z16_whole_f4": ({**CPU_PLAN.as_dict(), "max_patch": [16, 128, 128], "base_features": 4, "max_features": 32},
                     10, 40),
}


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def step_time(plans_json: Path, cpu_plan: dict[str, Any], repeats: int = 4) -> float:
    """Median seconds of one forward + backward of the variant's network (batch as planned, deep supervision)."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from thoraxseg.nnunet.plans import CpuPlan

    plans = make_cpu_plans(json.loads(plans_json.read_text()), CpuPlan.from_settings(cpu_plan))
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 1, 5, allow_init=True, deep_supervision=True)
    x = torch.randn(cfg["batch_size"], 1, *cfg["patch_size"])
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        out = net(x)
        sum(o.float().mean() for o in out).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def run_variant(name: str, train: Path, test: Path, work: Path) -> dict[str, Any]:
    cpu_plan, epochs, iters = VARIANTS[name]
    run = work / "runs" / name
    load_start = _load()
    t0 = time.perf_counter()
    api.train_nnunet(train, run, plans="cpu", cpu_plan=cpu_plan, folds="0", epochs=epochs,
                     iterations_per_epoch=iters, val_iterations_per_epoch=2, final_validation=False, seed=0)
    train_s = time.perf_counter() - t0
    log = pd.read_csv(run / "log.csv")
    pred = work / "pred" / name
    t0 = time.perf_counter()
    api.predict_nnunet(run, test, pred, tta=False)
    predict_s = time.perf_counter() - t0
    df = evaluate_folders(test, pred)
    dice = df.groupby("organ")["dice"].mean().reindex(list(ORGAN_NAMES))
    plan = json.loads((run / "nnunet" / "nnUNet_preprocessed" / "Dataset055_SegTHOR" /
                       "nnUNetPlans_cpu.json").read_text())["thoraxseg_cpu_plan"]["cpu"]
    return {
        "variant": name, "patch": plan["patch_size"], "features": plan["features_per_stage"],
        "batch": plan["batch_size"], "batch_dice": plan["batch_dice"], "steps": epochs * iters, "train_s": round(train_s, 1),
        "s_per_step": round(float(log["seconds"].sum()) / (epochs * iters), 3),
        "predict_s_per_case": round(predict_s / int(df["patient"].nunique()), 2),
        "dice": {k: round(float(v), 3) for k, v in dice.items()}, "mean_dice": round(float(dice.mean()), 3),
        "load_start": load_start, "load_end": _load(), "cases_test": int(df["patient"].nunique()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    ap.add_argument("--step-times", action="store_true", help="time one forward + backward of every variant")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_nnunet_cpu_plan"))
    ap.add_argument("--results", type=Path, default=None, help="JSON file the rows accumulate in")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--test-cases", type=int, default=8)
    args = ap.parse_args()
    work = args.work.resolve()
    results_path = args.results or work / "results.json"
    train, test = work / "train", work / "test"
    if not train.is_dir():
        generate_cohort(train, args.cases, size="small", seed=0, progress=False)
    if not test.is_dir():
        generate_cohort(test, args.test_cases, size="small", seed=1000, progress=False)
    rows: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.step_times:
        probe = work / "runs" / "_probe"
        if not (probe / "config.yaml").is_file():  # nnU-Net's own default plan for this cohort
            api.prepare_nnunet(train, probe, plans="cpu")
        default = probe / "nnunet" / "nnUNet_preprocessed" / "Dataset055_SegTHOR" / "nnUNetPlans.json"
        print(f"one forward + backward per variant (load {_load()}):")
        for name, (cpu_plan, _, _) in VARIANTS.items():
            print(f"  {name:<20} {step_time(default, cpu_plan):.3f} s")
    for name in args.variants:
        row = run_variant(name, train, test, work)
        rows[name] = row
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(rows, indent=1))
        print(json.dumps(row))
    if rows:
        print("\n| variant | patch (z × y × x) | features | batch | batch Dice | steps | train s | s/step | predict s/case | "
              + " | ".join(ORGAN_NAMES) + " | mean |")
        print("|" + "---|" * (10 + len(ORGAN_NAMES)))
        for r in rows.values():
            print(f"| {r['variant']} | {' × '.join(map(str, r['patch']))} | {r['features'][0]}–{r['features'][-1]} | "
                  f"{r['batch']} | {'yes' if r['batch_dice'] else 'no'} | {r['steps']} | {r['train_s']:.0f} | {r['s_per_step']:.2f} | "
                  f"{r['predict_s_per_case']:.1f} | " + " | ".join(f"{r['dice'][o]:.3f}" for o in ORGAN_NAMES)
                  + f" | {r['mean_dice']:.3f} |")


if __name__ == "__main__":
    main()
