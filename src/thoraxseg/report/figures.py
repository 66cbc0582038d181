"""Matplotlib figures of the report, returned as PNG bytes (Agg canvas, no pyplot state).

Volumes passed in are RAS+ canonical (see :func:`thoraxseg.report.study.to_canonical`):
array axes ``(x, y, z)`` run towards the patient's Right, Anterior and Superior.
Slices are drawn in radiological convention — patient right on the viewer's
left, anterior (axial) or superior (coronal) at the top — with the true pixel
aspect from the spacing (mm). CT is shown in a mediastinal window
(level 40 HU, width 400 HU).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from thoraxseg.data.overlap import iou
from thoraxseg.labels import LABEL_COLORS, ORGAN_NAMES, ORGANS, Organ
from thoraxseg.report.study import Canonical
from thoraxseg.stats.constants import HIGHER_IS_BETTER, METRIC_LABELS

#: Colours of the arms, in display order (colour-blind friendly).
ARM_COLORS: tuple[str, ...] = ("#3b6ea8", "#e08a3c", "#3f9a5b", "#b8484d", "#7d5ba6", "#8c6d4f", "#d17fb3")
#: CT display window (HU): mediastinal level 40, width 400.
CT_WINDOW: tuple[float, float] = (-160.0, 240.0)
#: Resolution of the embedded PNGs.
DPI: int = 100


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on its own Agg canvas (safe without a display, no global pyplot state)."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    return fig


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor(), bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


def arm_color(index: int) -> str:
    """Colour of the ``index``-th arm."""
    return ARM_COLORS[index % len(ARM_COLORS)]


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e4e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8.5)


def _per_patient_mean(df: pd.DataFrame, metric: str) -> np.ndarray:
    wide = df.pivot(index="patient", columns="organ", values=metric)
    vals = wide.mean(axis=1, skipna=True).to_numpy(dtype=np.float64)
    return vals[np.isfinite(vals)]


def metric_distribution_png(metrics: Mapping[str, pd.DataFrame], metric: str) -> bytes:
    """Violin + box + patients per organ (and the organ mean) for one metric, arms side by side."""
    arms = list(metrics)
    organs = [o for o in ORGAN_NAMES if any(o in set(df["organ"]) for df in metrics.values())]
    panels = [*organs, "mean"]
    fig = new_figure(2.35 * len(panels), 2.7)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, organ in zip(axes, panels, strict=True):
        for k, arm in enumerate(arms):
            df = metrics[arm]
            if metric not in df.columns:
                continue
            if organ == "mean":
                vals = _per_patient_mean(df, metric)
            else:
                vals = df.loc[df["organ"] == organ, metric].to_numpy(dtype=np.float64)
                vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                continue
            color = arm_color(k)
            if vals.size >= 4 and np.ptp(vals) > 0:
                parts = ax.violinplot(vals, positions=[k], widths=0.8, showextrema=False)
                for body in parts["bodies"]:  # type: ignore[attr-defined]
                    body.set_facecolor(color)
                    body.set_alpha(0.18)
                    body.set_edgecolor("none")
            ax.boxplot(vals, positions=[k], widths=0.38, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": "white", "edgecolor": color, "linewidth": 1.3},
                       medianprops={"color": color, "linewidth": 2.0},
                       whiskerprops={"color": color}, capprops={"color": color})
            jitter = rng.uniform(-0.12, 0.12, vals.size)
            ax.scatter(k + jitter, vals, s=14, color=color, edgecolor="white", linewidth=0.5, zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=20 if len(arms) > 2 else 0, ha="right" if len(arms) > 2
                      else "center")
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_title("mean of organs" if organ == "mean" else organ, fontsize=10)
        _style(ax)
    label = METRIC_LABELS.get(metric, metric)
    axes[0].set_ylabel(label + ("  ↑" if HIGHER_IS_BETTER.get(metric, True) else "  ↓"), fontsize=9.5)
    if metric in ("dice", "iou", "precision", "recall", "nsd"):
        lo = axes[0].get_ylim()[0]
        axes[0].set_ylim(max(-0.02, min(lo, 0.98)), 1.02)
    fig.tight_layout(w_pad=0.6)
    return to_png(fig)


def training_curves_png(logs: Mapping[str, pd.DataFrame]) -> bytes:
    """Per arm: loss (train solid, validation dashed) and validation Dice per organ and mean vs epoch."""
    arms = list(logs)
    fig = new_figure(11.0, 2.55 * len(arms))
    axes = fig.subplots(len(arms), 2, squeeze=False)
    for row, arm in enumerate(arms):
        log = logs[arm]
        color = arm_color(row)
        epoch = pd.to_numeric(log["epoch"], errors="coerce").to_numpy(dtype=np.float64)
        ax_l, ax_d = axes[row]
        for col, style, name in (("train_loss", "-", "train"), ("val_loss", "--", "validation")):
            if col in log.columns:
                y = pd.to_numeric(log[col], errors="coerce").to_numpy(dtype=np.float64)
                if np.isfinite(y).any():
                    ax_l.plot(epoch, y, style, color=color, linewidth=1.6, label=f"{name} loss")
        ax_l.set_ylabel(f"{arm}\nloss", fontsize=9.5)
        if ax_l.lines:
            ax_l.legend(fontsize=8, frameon=False)
        else:
            ax_l.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_l.transAxes, color="#888")
        for organ in ORGANS:
            col = f"val_dice_{organ.name.lower()}"
            if col in log.columns:
                y = pd.to_numeric(log[col], errors="coerce").to_numpy(dtype=np.float64)
                if np.isfinite(y).any():
                    ax_d.plot(epoch, y, color=LABEL_COLORS[int(organ)], linewidth=1.1, alpha=0.9,
                              label=organ.name.lower())
        if "val_dice_mean" in log.columns:
            y = pd.to_numeric(log["val_dice_mean"], errors="coerce").to_numpy(dtype=np.float64)
            if np.isfinite(y).any():
                ax_d.plot(epoch, y, color="#1f2933", linewidth=2.2, label="mean")
                best = int(np.nanargmax(y))
                ax_d.scatter([epoch[best]], [y[best]], s=36, color="#1f2933", zorder=4)
                ax_d.annotate(f"best {y[best]:.3f} @ {epoch[best]:g}", (epoch[best], y[best]),
                              textcoords="offset points", xytext=(-4, -14), ha="right", fontsize=8)
        ax_d.set_ylim(0, 1.0)
        ax_d.set_ylabel("validation Dice", fontsize=9.5)
        if ax_d.lines:
            ax_d.legend(fontsize=7.5, frameon=False, ncol=5, loc="lower right")
        else:
            ax_d.text(0.5, 0.5, "no validation Dice logged", ha="center", va="center", transform=ax_d.transAxes,
                      color="#888")
        for ax in (ax_l, ax_d):
            _style(ax)
            ax.grid(axis="x", color="#f0f0f0")
        if row == len(arms) - 1:
            ax_l.set_xlabel("epoch", fontsize=9.5)
            ax_d.set_xlabel("epoch", fontsize=9.5)
    fig.tight_layout()
    return to_png(fig)


# ----------------------------------------------------------------------------- slices


#: Weight of each organ when choosing the slice to show: the heart (largest organ, and the one whose
#: over-segmentation matters) counts double, so the chosen axial slice passes through it.
SLICE_WEIGHTS: dict[int, float] = {int(Organ.HEART): 2.0}


def best_slice(labels: np.ndarray, axis: int, weights: Mapping[int, float] = SLICE_WEIGHTS) -> int:
    """Index along ``axis`` that best shows the organs together.

    Each organ's area per slice is divided by its largest area, weighted
    (:data:`SLICE_WEIGHTS`, default 1) and summed; the slice with the highest
    sum wins, so a slice crossing several organs near their widest part beats
    one dominated by a single organ.

    >>> lab = np.zeros((4, 4, 5), np.uint8); lab[1:3, 1:3, 3] = 2; lab[0, 0, 3] = 1; lab[1:3, 1:3, 1] = 2
    >>> best_slice(lab, 2)
    3
    """
    other = tuple(a for a in range(3) if a != axis)
    score = np.zeros(labels.shape[axis], dtype=np.float64)
    for organ in ORGANS:
        area = np.count_nonzero(labels == int(organ), axis=other).astype(np.float64)
        if area.max() > 0:
            score += weights.get(int(organ), 1.0) * area / area.max()
    if score.max() == 0:
        return labels.shape[axis] // 2
    return int(np.argmax(score))


def _crop_box(masks: Sequence[np.ndarray], shape: tuple[int, int], spacing: tuple[float, float],
              margin_mm: float = 25.0) -> tuple[slice, slice]:
    """Bounding box (rows, cols) of the union of 2D masks, with a margin in mm, square-ish in mm."""
    union = np.zeros(shape, dtype=bool)
    for m in masks:
        union |= m
    if not union.any():
        return slice(0, shape[0]), slice(0, shape[1])
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    r0, r1 = rows[0], rows[-1] + 1
    c0, c1 = cols[0], cols[-1] + 1
    mr, mc = int(np.ceil(margin_mm / spacing[0])), int(np.ceil(margin_mm / spacing[1]))
    return slice(max(0, r0 - mr), min(shape[0], r1 + mr)), slice(max(0, c0 - mc), min(shape[1], c1 + mc))


def _plane(vol: np.ndarray, view: str, index: int) -> np.ndarray:
    """2D display array (rows = anterior/superior direction, cols = x) of a RAS+ volume."""
    if view == "axial":
        return vol[:, :, index].T
    return vol[:, index, :].T


def _view_spacing(spacing: tuple[float, float, float], view: str) -> tuple[float, float]:
    """(row, col) pixel size in mm of :func:`_plane`."""
    return (spacing[1], spacing[0]) if view == "axial" else (spacing[2], spacing[0])


def draw_slice(ax: Axes, ct: Canonical, view: str, index: int, contours: Sequence[tuple[np.ndarray, str, float]],
               crop_masks: Sequence[np.ndarray] = (), title: str = "") -> None:
    """Draw one CT slice with label contours.

    Parameters
    ----------
    ax
        Target axes.
    ct
        Canonical CT (HU).
    view
        ``"axial"`` (slice ``z = index``) or ``"coronal"`` (slice ``y = index``).
    contours
        ``(label_volume, linestyle, linewidth)``: each organ of each volume is outlined in its colour.
    crop_masks
        Label volumes whose extent (plus 25 mm) defines the zoom; empty = whole slice.
    """
    img = _plane(ct.array, view, index).astype(np.float32)
    rs, cs = _view_spacing(ct.spacing, view)
    proj_axis = 2 if view == "axial" else 1  # zoom on the labels' extent over the whole volume
    box = _crop_box([np.any(m > 0, axis=proj_axis).T for m in crop_masks], img.shape, (rs, cs))
    ax.imshow(img, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], origin="lower", aspect=rs / cs,
              interpolation="bilinear")
    for lab, linestyle, width in contours:
        plane = _plane(lab, view, index)
        for organ in ORGANS:
            m = plane == int(organ)
            if m.any():
                ax.contour(m.astype(np.float32), levels=[0.5], colors=[LABEL_COLORS[int(organ)]],
                           linestyles=linestyle, linewidths=width)
    ax.set_ylim(box[0].start - 0.5, box[0].stop - 0.5)
    ax.set_xlim(box[1].stop - 0.5, box[1].start - 0.5)  # inverted: patient right on the viewer's left
    ax.text(0.015, 0.5, "R", transform=ax.transAxes, color="#ffd966", fontsize=9, fontweight="bold", va="center")
    ax.text(0.985, 0.5, "L", transform=ax.transAxes, color="#ffd966", fontsize=9, fontweight="bold", va="center",
            ha="right")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9.5)


def organ_legend(fig: Figure, styles: Sequence[tuple[str, str]] = (("-", "ground truth"), ("--", "prediction")),
                 organs: Sequence[int] = tuple(int(o) for o in ORGANS)) -> None:
    """Legend under the figure: organ colours and the line styles."""
    handles: list[Patch | Line2D] = [Patch(color=LABEL_COLORS[int(o)], label=ORGANS[int(o) - 1].name.lower())
                                     for o in organs]
    handles += [Line2D([0], [0], color="#333", linestyle=ls, label=name) for ls, name in styles]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8.5,
               bbox_to_anchor=(0.5, -0.01))


def case_overlay_png(cases: Sequence[tuple[str, Canonical, np.ndarray, np.ndarray]]) -> bytes:
    """One row: for each (title, CT, GT, prediction), an axial and a coronal slice.

    GT is drawn solid, the prediction dashed, each organ in its colour.
    """
    fig = new_figure(3.0 * 2 * len(cases), 3.5)
    axes = fig.subplots(1, 2 * len(cases), squeeze=False)[0]
    for k, (title, ct, gt, pred) in enumerate(cases):
        z = best_slice(gt, 2)
        y = best_slice(gt, 1)
        contours = [(gt, "-", 1.5), (pred, "--", 1.2)]
        draw_slice(axes[2 * k], ct, "axial", z, contours, crop_masks=[gt, pred], title=f"{title}\naxial z={z}")
        draw_slice(axes[2 * k + 1], ct, "coronal", y, contours, crop_masks=[gt, pred], title=f"\ncoronal y={y}")
    organ_legend(fig)
    fig.tight_layout(rect=(0, 0.07, 1, 1), w_pad=0.4)
    return to_png(fig)


def realign_overlay_png(ct: Canonical, moved: np.ndarray, fixed: np.ndarray, clean: np.ndarray, label: int,
                        patient: str) -> bytes:
    """Before/after figure of the label fix on the reference patient (axial and coronal).

    The clean reference label is drawn solid, the moved (before) or fixed (after) label dashed,
    all in the organ's colour; the titles give the 3D IoU against the clean label.
    """
    m, f, c = (moved == label), (fixed == label), (clean == label)
    ref = np.where(c, np.uint8(label), np.uint8(0))
    before = np.where(m, np.uint8(label), np.uint8(0))
    after = np.where(f, np.uint8(label), np.uint8(0))
    z = best_slice(ref, 2)
    y = best_slice(ref, 1)
    fig = new_figure(8.6, 8.2)
    axes = fig.subplots(2, 2)
    for col, (lab, name, score) in enumerate(((before, "before (moved label)", iou(m, c)),
                                              (after, "after (fixed label)", iou(f, c)))):
        draw_slice(axes[0, col], ct, "axial", z, [(ref, "-", 1.6), (lab, "--", 1.6)], crop_masks=[ref, lab],
                   title=f"{patient} {name}: IoU {score:.3f}")
        draw_slice(axes[1, col], ct, "coronal", y, [(ref, "-", 1.6), (lab, "--", 1.6)], crop_masks=[ref, lab],
                   title="coronal")
    organ_legend(fig, styles=(("-", "clean reference"), ("--", "moved / fixed label")), organs=(label,))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return to_png(fig)
