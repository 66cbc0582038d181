"""The generated SLURM script: content, shell syntax, submission."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from thoraxseg.cli import main
from thoraxseg.errors import ConfigError
from thoraxseg.training.slurm import SlurmSpec, sbatch_script


def _script(tmp_path: Path, *extra: str, path: Path | None = None) -> str:
    args = ["slurm", "train", "--model", "customnet", "--data", str(tmp_path / "my data"),
            "--out", str(tmp_path / "run"), "--partition", "gpu-a100", "--gpus", "4", "--nodes", "2",
            "--time", "1-12:00:00", "--epochs", "100", "--image-size", "256", "--spacing-mm", "1.8", "--mem", "200G",
            "--setup", "module load cuda/12.4", "--set", "loss.class_weights.esophagus=0.4", *extra]
    if path is not None:
        args += ["--script", str(path)]
    assert main(args) == 0
    return (path or tmp_path / "run" / "slurm_train.sbatch").read_text()


def test_script_requests_the_resources_and_runs_torchrun(tmp_path: Path) -> None:
    text = _script(tmp_path)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--partition=gpu-a100", "--nodes=2", "--gpus-per-node=4", "--time=1-12:00:00",
                      "--ntasks-per-node=1", "--cpus-per-task=32", "--mem=200G", "--requeue",
                      f"--output={tmp_path / 'run'}/slurm-%j.out"):
        assert f"#SBATCH {directive}" in lines
    assert "module load cuda/12.4" in lines
    assert "--nproc-per-node=4" in text and '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"' in text
    assert '--nnodes="$SLURM_JOB_NUM_NODES"' in text and "srun --ntasks-per-node=1" in text
    train_line = next(line for line in lines if "thoraxseg.cli train" in line)
    assert f"--data '{tmp_path / 'my data'}'" in train_line  # quoted path with a space
    assert "--device cuda" in train_line and "--epochs 100" in train_line and "--loader-workers 7" in train_line
    assert "--set loss.class_weights.esophagus=0.4" in train_line
    assert "--image-size 256 --spacing-mm 1.8" in train_line
    assert os.stat(tmp_path / "run" / "slurm_train.sbatch").st_mode & stat.S_IXUSR


def test_script_is_valid_bash(tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    assert "#SBATCH --nodes=2" in _script(tmp_path, path=path)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_nnunet_script_runs_one_process_without_torchrun(tmp_path: Path) -> None:
    text = sbatch_script(["--model", "nnunet3d", "--data", "/d", "--out", "/r", "--folds", "0"],
                         SlurmSpec(partition="gpu", gpus=1), model="nnunet3d", out="/r")
    assert "torch.distributed.run" not in text and "srun --ntasks=1" in text and "--folds 0" in text


def test_bad_resources_are_rejected() -> None:
    with pytest.raises(ConfigError, match="time"):
        sbatch_script([], SlurmSpec(partition="gpu", time="soon"), model="enet", out="/r")
    with pytest.raises(ConfigError, match="partition"):
        sbatch_script([], SlurmSpec(partition="gpu; rm -rf /"), model="enet", out="/r")


def test_submit_calls_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "sbatch"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch_args\necho "4242;cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    _script(tmp_path, "--submit")
    assert "submitted job 4242" in capsys.readouterr().out
    assert (tmp_path / "sbatch_args").read_text().split() == ["--parsable",
                                                              str(tmp_path / "run" / "slurm_train.sbatch")]


def test_submit_without_sbatch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert shutil.which("sbatch") is None
    args = ["slurm", "train", "--model", "enet", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
            "--partition", "gpu", "--submit"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "sbatch was not found" in err and err.count("\n") == 1
    assert (tmp_path / "run" / "slurm_train.sbatch").is_file()  # the script is still there to submit by hand


def test_old_workers_flag_is_read_as_loader_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # train's --workers (before --loader-workers) still sets the DataLoader processes, with one note
    text = _script(tmp_path, "--workers", "3")
    train_line = next(line for line in text.splitlines() if "thoraxseg.cli train" in line)
    assert "--loader-workers 3" in train_line and "--workers" not in train_line.replace("--loader-workers", "")
    assert "note: --workers is now --loader-workers" in capsys.readouterr().err
