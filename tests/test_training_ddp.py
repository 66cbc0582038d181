"""Data-parallel training under torchrun: 2 CPU processes, gloo backend."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_training_toydata import make_toy_cohort

ARGS = ["--model", "customnet", "--epochs", "2", "--image-size", "32", "--width", "4", "--batch-size", "4",
        "--seed", "1"]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    data = make_toy_cohort(tmp_path / "data", cases=4)  # 3 training patients × 8 slices = 24 slices
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THORAXSEG_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "thoraxseg.cli", "train", "--data", str(data), "--out", str(run), *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout.replace("\n", "")
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # each process sees half of the 24 slices per epoch: 12 / batch 4 = 3 steps (one process: 6)
    assert [int(r["steps"]) for r in rows] == [3, 3]
    assert [int(r["samples"]) for r in rows] == [24, 24]
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-process streams
    assert all(not k.startswith("module.") for k in state["model"])  # saved unwrapped: loads without DDP
    assert (run / "best.pt").is_file() and (run / "curves.png").is_file()
