"""Kill-and-resume: SIGKILL a training process after its first checkpoint, rerun the same command,
and get bit-identical final weights to an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_training_toydata import make_toy_cohort

EPOCHS = 4


def _command(data: Path, out: Path) -> list[str]:
    # ENet: spatial dropout makes the result depend on the restored torch RNG state too.
    return [sys.executable, "-m", "thoraxseg.cli", "train", "--model", "enet", "--data", str(data),
            "--out", str(out), "--epochs", str(EPOCHS), "--seed", "3", "--image-size", "32", "--width", "4",
            "--batch-size", "4", "--lr", "0.005", "--schedule", "cosine"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "THORAXSEG_NO_PROGRESS": "1"}


def _log_without_time(run: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((run / "log.csv").open()))
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_identical_weights(tmp_path: Path) -> None:
    data = make_toy_cohort(tmp_path / "data", cases=4)
    ref, run = tmp_path / "reference", tmp_path / "killed"

    subprocess.run(_command(data, ref), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_command(data, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / "last.pt").exists():
        assert proc.poll() is None, "training ended before writing its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done = torch.load(run / "last.pt", weights_only=False)["epoch"]
    assert 1 <= done < EPOCHS, "the kill must interrupt training"

    resumed = subprocess.run(_command(data, run), env=_env(), check=True, capture_output=True, text=True,
                             timeout=300)
    assert f"resuming {run}" in resumed.stdout.replace("\n", "")

    a = torch.load(ref / "last.pt", weights_only=False)
    b = torch.load(run / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert _log_without_time(ref) == _log_without_time(run)
    best_a = torch.load(ref / "best.pt", weights_only=False)
    best_b = torch.load(run / "best.pt", weights_only=False)
    assert best_a["epoch"] == best_b["epoch"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    assert not list(run.glob(".*.tmp*")), "a temporary checkpoint was left behind"
