"""One 2D model trained on small phantoms, shared by every slow test that needs a competent model.

Training once per test session (about 1–2 min on 2 cores) instead of once per test keeps the slow
suite inside its budget. The cohort (``PHANTOM_SEED``, ``TRAIN_CASES`` patients) is independent of
the held-out patients the tests predict (``HELD_OUT``: other indices of the same seed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from thoraxseg.data.phantom import generate_cohort
from thoraxseg.training import train

PHANTOM_SEED = 7
TRAIN_CASES = 10
#: Patient indices (0-based, same seed) that the shared run never saw.
HELD_OUT = (20, 21)
#: CustomNet with the demo's quick settings (configs/demo.yaml), fewer epochs.
SETTINGS = {"image_size": 128, "batch_size": 8, "width": 8, "optim": {"lr": 0.01, "schedule": "poly"},
            "loss": {"ce_balanced": True}}
EPOCHS = 10


def train_shared_run(root: Path) -> Path:
    """Generate the training cohort under ``root`` and train the shared CustomNet run; returns the run folder."""
    data = generate_cohort(root / "cohort", TRAIN_CASES, size="small", seed=PHANTOM_SEED)
    threads = torch.get_num_threads()
    try:
        return train("customnet", data, root / "run", config=SETTINGS, epochs=EPOCHS, threads=2)
    finally:
        torch.set_num_threads(threads)
