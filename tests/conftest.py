"""Shared fixtures: the real CT from ../shared and small synthetic volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from thoraxseg.data.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
REALCT_DIR = Path(os.environ.get("THORAXSEG_REALCT_DIR", ROOT.parent / "shared" / "data" / "realct" / "Patient_R1"))


def _require_realct() -> bool:
    return os.environ.get("THORAXSEG_REQUIRE_REALCT", "0") not in ("0", "", "false", "no")


@pytest.fixture(scope="session")
def realct_dir() -> Path:
    """``../shared/data/realct/Patient_R1``; skips where absent, fails under THORAXSEG_REQUIRE_REALCT=1."""
    ok = (REALCT_DIR / "Patient_R1.nii.gz").is_file() and (REALCT_DIR / "GT.nii.gz").is_file()
    if not ok:
        if _require_realct():
            pytest.fail(f"real CT required (THORAXSEG_REQUIRE_REALCT=1) but missing: {REALCT_DIR}")
        pytest.skip(f"real CT not available at {REALCT_DIR}")
    return REALCT_DIR


@pytest.fixture()
def tiny_volume() -> Volume:
    """A 24×20×12 int16 'CT' with an anisotropic, oblique-free affine (0.9×0.9×2.5 mm)."""
    rng = np.random.default_rng(0)
    arr = (rng.normal(0, 20, (24, 20, 12)) - 800).astype(np.int16)
    arr[6:18, 5:15, 2:10] = 40
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 20.0, -100.0]
    return Volume(arr, affine)


@pytest.fixture(scope="session")
def phantom_case():
    """One small synthetic case (CT ``Volume`` and GT labels, 128×128×52 at 4.3×4.3×8.5 mm), made once per session."""
    from thoraxseg.data.phantom.generator import generate_case

    return generate_case(seed=0, index=0, size="small")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2D ENet run trained for one epoch on a 4-case toy cohort (1 thread, < 2 s): plumbing, not accuracy."""
    import torch

    from test_training_toydata import make_toy_cohort
    from thoraxseg.training import train

    base = tmp_path_factory.mktemp("tiny_run")
    data = make_toy_cohort(base / "data", cases=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train("enet", data, base / "run", epochs=1, seed=0, image_size=32, width=4, batch_size=4,
                     val_batch_size=8)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phantom_2d_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CustomNet run trained once per session on small phantoms (see ``tests/trained_fixture.py``)."""
    from trained_fixture import train_shared_run

    return train_shared_run(tmp_path_factory.mktemp("phantom_2d_run"))
