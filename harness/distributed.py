"""Data-parallel runs under torchrun: process group set-up and the few collectives the loop needs.

Every function is a no-op in a plain single-process run, so callers need no branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.errors import ConfigError

__all__ = ["World", "world", "setup", "teardown", "is_distributed", "all_reduce_sum", "sum_over_ranks", "any_rank",
           "broadcast_object"]


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes TensorBoard, checkpoints, the progress bar and results."""
        return self.rank == 0


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer >= {minimum} (torchrun sets it; "
                          f"unset it to train in one process)")
    return value


def world() -> World:
    """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Raises:
        ConfigError: one of them is not a number, or they don't fit together (``RANK`` beyond ``WORLD_SIZE``,
            or a multi-process world without torchrun's rendezvous address).
    """
    w = World(rank=_env_int("RANK", 0, 0), size=_env_int("WORLD_SIZE", 1, 1), local_rank=_env_int("LOCAL_RANK", 0, 0))
    if w.rank >= w.size or w.local_rank >= w.size:
        raise ConfigError(f"environment: RANK={w.rank} and LOCAL_RANK={w.local_rank} must be < WORLD_SIZE={w.size}; "
                          "launch with torchrun, or unset them to train in one process")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if w.size > 1 and not os.environ.get(name)]
    if missing:
        raise ConfigError(f"environment: WORLD_SIZE={w.size} but {' and '.join(missing)} not set; launch with "
                          "torchrun (it sets them), or unset WORLD_SIZE to train in one process")
    return w


def setup() -> World:
    """Joins the process group when launched by torchrun (once; later calls only return the world).

    One group serves CPU and CUDA tensors (``gloo`` and ``nccl``), so it can be joined before the config
    has picked the device: ``train.py`` joins it first thing, to agree on one run directory.
    """
    w = world()
    if w.size > 1 and not dist.is_initialized():
        try:
            if torch.cuda.is_available():
                torch.cuda.set_device(w.local_rank)
            dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        except (RuntimeError, ValueError) as e:  # an unreachable or malformed rendezvous address, say
            reason = " ".join(str(e).split())[:200]
            raise ConfigError(f"could not join the torchrun process group ({reason}); check MASTER_ADDR and "
                              "MASTER_PORT, or unset WORLD_SIZE to train in one process") from e
    return w


def teardown() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several in a process group (launched by torchrun)."""
    return dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums ``tensor`` over all processes, in place, and returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over all processes (in float64 on ``device``); in a single process, ``values``
    as they are, without a tensor or a device in sight."""
    if not dist.is_initialized():
        return values
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process: a stop asked of one rank stops all of them together."""
    if not dist.is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor(float(flag), device=device)).item())


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every process."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
