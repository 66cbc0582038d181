"""Data-parallel training across processes (``torchrun``) with DistributedDataParallel.

Launch ``thoraxseg train`` under ``torchrun`` (one process per GPU, or several CPU
processes) and the trainer picks the environment up::

    torchrun --nproc-per-node 4 -m thoraxseg.cli train --model customnet --data DIR --out RUN --device cuda

``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` come from torchrun; the backend is NCCL on
CUDA and gloo on CPU. Each process gets a disjoint shard of every epoch's slices
(:class:`~thoraxseg.training.data2d.EpochSampler`), gradients are averaged by DDP, and
only rank 0 validates and writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from thoraxseg.utils.settings import torch_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that validates and writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "cpu") -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``) and pick the device.

    Under torchrun with ``device="cuda"`` each process uses GPU ``LOCAL_RANK``.
    Raises :class:`ConfigError` when CUDA is requested but absent.
    """
    dev = torch_device(device)
    if dev.type == "cuda":
        # deterministic cuBLAS (seed_everything asks torch for deterministic kernels)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    world = env_world_size()
    if world <= 1:
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return DistInfo(device=dev)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few floats over processes (float64 on the training device)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Send a picklable object from rank 0 to every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
