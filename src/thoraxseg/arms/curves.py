"""Training curves of every arm (``RUN/curves.png``): loss and validation Dice per epoch, one figure style."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thoraxseg.labels import LABEL_COLORS, ORGAN_NAMES, ORGANS
from thoraxseg.utils.atomic import atomic_path


def _column(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in ("", None) else math.nan for r in rows]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                loss_label: str = "Dice + CE loss", dice_label: str = "validation Dice (3D)") -> None:
    """Loss (train, validation) and validation Dice per organ and mean, per fold, as a PNG (atomic).

    ``rows``: epoch-log rows (numbers or CSV strings) with ``epoch``, ``train_loss``, ``val_loss``,
    ``val_dice_<organ>``, ``val_dice_mean`` and, for several folds, ``fold``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folds: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        folds.setdefault(str(r.get("fold", "0")), []).append(r)
    prefix = f"{title}: " if title else ""
    with plt.style.context("default"):  # nnU-Net's logger calls seaborn.set(); do not inherit it
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
        for fold, fr in folds.items():
            epochs = [int(float(r["epoch"])) for r in fr]
            sfx = f" (fold {fold})" if len(folds) > 1 else ""
            ax1.plot(epochs, _column(fr, "train_loss"), "-o", ms=3, label=f"train{sfx}")
            ax1.plot(epochs, _column(fr, "val_loss"), "--o", ms=3, label=f"validation{sfx}")
            for organ, name in zip(ORGANS, ORGAN_NAMES, strict=True):
                ax2.plot(epochs, _column(fr, f"val_dice_{name}"), lw=1, color=LABEL_COLORS[int(organ)],
                         label=f"{name}{sfx}")
            ax2.plot(epochs, _column(fr, "val_dice_mean"), "k--", lw=2, label=f"mean{sfx}")
        ax1.set(xlabel="epoch", ylabel=loss_label, title=f"{prefix}loss")
        ax2.set(xlabel="epoch", ylabel=dice_label, ylim=(0, 1), title=f"{prefix}validation Dice")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=7, ncol=2, loc="lower right")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
