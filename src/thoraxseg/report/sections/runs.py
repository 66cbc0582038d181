"""Sections on the runs: training curves, best and worst cases, 3D surfaces, run time, configuration.
"""



import numpy as np
import pandas as pd

from thoraxseg.errors import ThoraxsegError
from thoraxseg.report import figures
from thoraxseg.report.context import ReportContext
from thoraxseg.report.markup import (
    duration,
    esc,
    figure_html,
    network_input,
    not_run,
    per_patient_mean_dice,
    table_html,
)
from thoraxseg.report.render3d import render_surfaces_png


class RunSections(ReportContext):
    """Training, cases, surfaces, timings, configuration."""

    def sec_training(self) -> str:
        logs = self.s.logs
        if not logs:
            return not_run("No training logs (arms/<name>/run/log.csv) in this study.")
        missing = [a for a in self.s.arms if a not in logs]
        rows = []
        for arm, log in logs.items():
            vd = pd.to_numeric(log.get("val_dice_mean", pd.Series(dtype=float)), errors="coerce")
            secs = pd.to_numeric(log.get("seconds", pd.Series(dtype=float)), errors="coerce")
            tl = pd.to_numeric(log.get("train_loss", pd.Series(dtype=float)), errors="coerce").dropna()
            best = (f"{vd.max():.3f} (epoch {log['epoch'].iloc[int(vd.idxmax())]})"
                    if vd.notna().any() else "—")
            rows.append([arm, network_input(self.s.run_configs.get(arm)), str(len(log)), best,
                         f"{tl.iloc[-1]:.4f}" if len(tl) else "—",
                         duration(float(secs.sum())) if secs.notna().any() else "—"])
        note = not_run(f"No log.csv for: {', '.join(missing)}.") if missing else ""
        png = figures.training_curves_png(logs)
        return (table_html(["arm", "network input", "epochs", "best val. mean Dice", "final train loss",
                            "training time"], rows, left_cols=2)
                + '<p class="small muted">2D arms: every axial slice is resampled to one pixel size in mm, so an '
                "organ has the same size in pixels on every scan (training uses crops of the resampled slices, "
                "prediction the whole slice); “square-resized” runs (made before thoraxseg 0.2) pad each slice "
                "to a square and resize it, so their pixel size depends on each scan's field of view. nnU-Net "
                "resamples to its plan's 3D target spacing.</p>"
                + note + figure_html(png, "training curves", "Per arm: training (solid) and validation (dashed) loss; "
                                     "validation Dice per organ and their mean (black) by epoch."))

    def sec_cases(self) -> str:
        if not self.s.metrics:
            return not_run("No metrics: best and worst cases cannot be chosen.")
        if not self.test_cases:
            return not_run("No test images with GT (data/testset) in this study.")
        out = []
        for arm, df in self.s.metrics.items():
            if "dice" not in df.columns:
                continue
            per = per_patient_mean_dice(df)
            per = per[[p in self.test_cases and self.s.prediction_path(arm, p) is not None for p in per.index]]
            if per.empty:
                out.append(f"<h3>{esc(arm)}</h3>" + not_run(f"no prediction of {arm} matches a test case"))
                continue
            picks = [("best", per.idxmax())] + ([("worst", per.idxmin())] if len(per) > 1 else [])
            cases = []
            for kind, pid in picks:
                case = self.test_cases[pid]
                ct = self.volume("ct", case.image_path, False)
                gt = self.volume("gt", case.label_path, True)  # type: ignore[arg-type]
                pred = self.volume(f"pred:{arm}", self.s.prediction_path(arm, pid), True)  # type: ignore[arg-type]
                if pred.array.shape != gt.array.shape:
                    raise ThoraxsegError(f"{self.s.prediction_path(arm, pid)}: prediction shape {pred.array.shape} "
                                         f"differs from GT {gt.array.shape}")
                cases.append((f"{kind}: {pid} (mean Dice {per[pid]:.3f})", ct, gt.array, pred.array))
            png = figures.case_overlay_png(cases)
            out.append(f"<h3>{esc(arm)}</h3>" + figure_html(
                png, f"best and worst case of {arm}",
                "Axial and coronal slices (radiological view: patient right on the left), mediastinal window; "
                "ground truth solid, prediction dashed."))
        return "".join(out)

    def sec_surfaces(self) -> str:
        arms = [a for a in self.s.metrics if "dice" in self.s.metrics[a].columns]
        if not arms or not self.test_cases:
            return not_run("Needs test cases with predictions and metrics.")
        common = [p for p in self.test_cases if all(self.s.prediction_path(a, p) for a in arms)]
        if not common:
            return not_run("No test patient has a prediction from every arm.")
        scores = pd.DataFrame({a: per_patient_mean_dice(self.s.metrics[a]) for a in arms}).reindex(common)
        avg = scores.mean(axis=1, skipna=True).dropna()
        if avg.empty:
            pid = common[0]
        else:
            order = avg.sort_values()
            pid = str(order.index[(len(order) - 1) // 2])
        case = self.test_cases[pid]
        gt = self.volume("gt", case.label_path, True)  # type: ignore[arg-type]
        panels = [("ground truth", gt.array)]
        for a in arms:
            pred = self.volume(f"pred:{a}", self.s.prediction_path(a, pid), True)  # type: ignore[arg-type]
            d = scores.loc[pid, a]
            panels.append((f"{a} (Dice {d:.3f})" if np.isfinite(d) else a, pred.array))
        png = render_surfaces_png(panels, gt.spacing)
        return figure_html(png, f"3D surfaces of {pid}",
                           f"{esc(pid)} (the median case by mean Dice across arms), seen from the front and the "
                           "patient's left (anterior-left oblique): marching-cubes surfaces in true proportions (mm), "
                           "subsampled to ≤ 72 voxels per axis.")

    def sec_timings(self) -> str:
        t = self.s.timings
        if not t:
            return not_run("No stage timings (.stages/*.json) in this study folder.")
        total = sum(t.values())
        rows = [[esc(stage), duration(secs), f"{100 * secs / total:.1f} %" if total > 0 else "—"]
                for stage, secs in t.items()]
        rows.append(["<b>total</b>", f"<b>{duration(total)}</b>", "100 %" if total > 0 else "—"])
        note = "" if "report" in t else " Building this page (the report stage) is not included."
        return (f"<p>Wall time of each finished stage on the machine that ran it, in the order they finished; "
                f"a resumed study counts each stage's last complete run.{note}</p>"
                + table_html(["stage", "time", "share of total"], rows, raw=True))

    def sec_config(self) -> str:
        if not self.s.config_text:
            return not_run("study.yaml not found.")
        return f"<details open><summary>study.yaml</summary><pre>{esc(self.s.config_text)}</pre></details>"
