"""Runs under torchrun: process group, ranks, data shards, sums across ranks, rank-0 output.

Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1) every function is the identity of one
process: world size 1, rank 0, nothing reduced, so single-process results are unchanged.
Under torchrun the first `setup` starts the process group from torchrun's environment
(NCCL on CUDA, gloo on CPU) and silences the console on every rank but 0.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from snptool.core import console
from snptool.errors import UsageError

TIMEOUT = timedelta(minutes=30)


class DistributedError(UsageError):
    """A distributed run that is misconfigured; every rank raises it, rank 0 prints it."""

    collective = True


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device.

    CUDA ranks take GPU LOCAL_RANK and NCCL; CPU ranks take gloo.
    """
    if env_world_size() <= 1:
        return device
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing and not dist.is_initialized():
        raise DistributedError(
            f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} is not set; "
            "start distributed runs with torchrun."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs; "
                "give torchrun --nproc-per-node at most the number of GPUs."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
        atexit.register(_teardown)
        console.set_rank(dist.get_rank())
    elif (dist.get_backend() == "nccl") != (device.type == "cuda"):
        raise DistributedError(
            f"this process group uses {dist.get_backend()} but the step runs on {device}; "
            "give every step of one run the same --device."
        )
    return device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_agreement(values: dict[str, Any]) -> None:
    """Every rank must pass the same values (flags, paths, data); name the first that differs."""
    if not is_distributed():
        return
    mine = {key: str(value) for key, value in values.items()}
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    for key in mine:
        seen = [ranks[key] for ranks in gathered]
        if len(set(seen)) > 1:
            shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
            raise DistributedError(
                f"{key} differs between ranks ({shown}); give every rank the same {key}."
            )


def shard_indices(samples: int, what: str, *, even: bool = False) -> np.ndarray:
    """This rank's indices of `samples`: rank, rank + W, rank + 2W, … (no padding).

    With `even`, the last samples % W are dropped so every rank has the same count
    (DistributedDataParallel needs equal steps).
    """
    world = world_size()
    if samples < world:
        raise DistributedError(
            f"{what} has {samples} samples, fewer than the {world} processes; "
            f"run torchrun with --nproc-per-node at most {samples}."
        )
    stop = samples - samples % world if even else samples
    return np.arange(rank(), stop, world)


def shard_split(data: Any) -> Any:
    """A DataSplit holding only this rank's exact shard (the split itself in one process)."""
    if not is_distributed():
        return data
    index = shard_indices(len(data), f"the {data.split} split of {data.spec}")
    return dataclasses.replace(data, images=data.images.subset(index))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place; returned for chaining)."""
    if is_distributed():
        moved = tensor.to(_collective_device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def sum_numbers(*numbers: float) -> list[float]:
    """Scalars summed over ranks (float64, so integer counts stay exact)."""
    if not is_distributed():
        return list(numbers)
    return all_reduce_sum(torch.tensor(numbers, dtype=torch.float64)).tolist()


def gather_shards(rows: torch.Tensor, samples: int) -> torch.Tensor:
    """Reassemble [n_r, …] rows of each rank's `shard_indices` into all [samples, …] rows."""
    if not is_distributed():
        return rows
    world = world_size()
    longest = -(-samples // world)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: len(rows)] = rows
    device = _collective_device()
    parts = [torch.empty_like(padded, device=device) for _ in range(world)]
    dist.all_gather(parts, padded.to(device))
    full = rows.new_empty((samples, *rows.shape[1:]))
    for r, part in enumerate(parts):
        count = len(range(r, samples, world))
        full[r::world] = part[:count].to(rows.device)
    return full


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = [
    "DistributedError",
    "all_reduce_sum",
    "check_agreement",
    "gather_shards",
    "is_distributed",
    "is_main",
    "rank",
    "setup",
    "shard_indices",
    "shard_split",
    "sum_numbers",
    "world_size",
]
