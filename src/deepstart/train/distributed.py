"""Training on several processes: PyTorch's DistributedDataParallel, started by ``torchrun``.

``torchrun --nproc_per_node N -m deepstart train ...`` starts N copies of the same command,
one per device, and tells each its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` through the
environment; ``deepstart train --devices N`` runs that command for you. Each process:

- joins the process group (NCCL on CUDA, gloo on CPU) with a timeout, so a rank that stops
  answering ends the others with an error instead of a hang;
- trains the same model on its shard of every global batch: batch ``i`` of an epoch is items
  ``i*B*N .. (i+1)*B*N`` of the epoch's seeded permutation (the same on every rank), and rank
  ``r`` takes the ``r``-th of its N equal parts. ``--batch-size`` is per process, so the
  global batch is ``B * N``; gradients are averaged over it by DDP, so one step equals one
  single-process step on the whole global batch at the same LR;
- reports losses and validation scores reduced over all ranks, so every rank sees the same
  numbers and callbacks (divergence guard, early stopping) decide the same thing; a stop that
  depends on the rank (a time budget, Ctrl-C) is agreed on at the end of the batch;
- leaves printing, logging, checkpoints, the bundle and the report to rank 0.

Example:
    >>> dist = Distributed.from_env(device="auto", timeout=300)  # None outside torchrun
    >>> learn = Learner(data, model, dist=dist)
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from deepstart.errors import ConfigError

# Set by torchrun (and by any launcher following its contract) in every process it starts.
ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world_from_env() -> int:
    """``WORLD_SIZE`` from the environment (1 outside a distributed launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Distributed:
    """This process's place in a distributed run, and the collectives the Learner needs.

    Attributes:
        rank: this process's index, 0..world-1; rank 0 prints and writes.
        world: the number of processes.
        local_rank: index on this machine (which GPU to use).
        device: the device this process trains on.
        sync_bn: BatchNorm statistics are synchronised over ranks (CUDA only).
    """

    rank: int
    world: int
    local_rank: int
    device: torch.device
    sync_bn: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(
        cls, device: str | None = "auto", timeout: float = 300.0, sync_bn: bool = False
    ) -> Distributed | None:
        """Join the process group torchrun set up; None when this is a single process.

        CUDA, when present and ``device`` allows it, means one GPU per process
        (``cuda:LOCAL_RANK``) and NCCL; otherwise the CPU and gloo.
        """
        world = world_from_env()
        if world <= 1:
            return None
        missing = [k for k in ENV_KEYS if k not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed "
                f"runs with torchrun (or deepstart train --devices N)"
            )
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        use_cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
        if use_cuda:
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        elif device not in (None, "auto", "cpu"):
            raise ConfigError(f"distributed training runs on cuda or cpu, not {device!r}")
        else:
            dev = torch.device("cpu")
        if not td.is_initialized():
            # Before the group exists (see shutdown): DDP imports torch.distributed.nn, whose
            # functions take `group=group.WORLD` as a default, evaluated at import.
            import torch.distributed.nn as _  # noqa: F401

            td.init_process_group(
                "nccl" if use_cuda else "gloo",
                timeout=datetime.timedelta(seconds=timeout),
            )
        return cls(rank, world, local_rank, dev, sync_bn=sync_bn and use_cuda)

    # -- collectives -----------------------------------------------------------------------
    def global_mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss with the value of the whole global batch (the mean over ranks) and the
        gradient of this rank's part, which DDP then averages over ranks."""
        total = loss.detach().clone()
        td.all_reduce(total)
        return loss + (total / self.world - loss.detach())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        td.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on at least one."""
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device)
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a small picklable value, e.g. a path string)."""
        box = [obj]
        td.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def barrier(self) -> None:
        td.barrier()

    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def wrap_for_fit(self, learn: Any) -> nn.Module:
        """``learn.model`` wrapped for a fit (:meth:`wrap`), once the train split is known to
        hold at least one global batch (else some rank would get no batch at all)."""
        n, bs = len(learn.data.train), learn.batch_size
        if n < bs * self.world:
            raise ConfigError(
                f"the train split ({n} images) is smaller than one global batch "
                f"({bs} per process x {self.world} processes)"
            )
        return self.wrap(learn.model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel; built at the start of every fit, after
        freezing, because DDP fixes the set of trainable parameters when it is made. Making
        it broadcasts rank 0's weights and buffers, so every rank starts the same."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def prepare_model(model: nn.Module, dist: Distributed | None) -> nn.Module:
    """Swap BatchNorm for SyncBatchNorm when asked (CUDA only: PyTorch's SyncBatchNorm has no
    CPU kernel, so on CPU every process normalises by its own part of the batch)."""
    if dist is None:
        return model
    if dist.sync_bn:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def shutdown() -> None:
    """Leave the process group (safe to call when there is none).

    This must really end the group: it joins gloo's worker threads. A worker lets go of a
    finished collective's tensors a moment after the caller has its result, and letting go
    of a tensor Python made takes the GIL; if the interpreter is already shutting down by
    then, Python ends that thread and C++ aborts the process ("terminate called without an
    active exception", exit -6). So nothing may keep the group alive past this call: were
    torch.distributed.nn imported after the group was made, its functions' default
    argument `group=group.WORLD` would (from_env imports it first).
    """
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``deepstart ARGV`` in ``nproc`` processes on this machine through torchrun and
    return its exit status (what ``deepstart train --devices N`` does).

    Example:
        >>> launch(2, ["train", "--data", "mnist", "--model", "mnist_cnn"])
    """
    if nproc < 2:
        raise ConfigError(f"--devices must be at least 2 to launch torchrun, got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one machine: a local rendezvous on a free port
        f"--nproc_per_node={nproc}",
        "-m",
        "deepstart",
        *argv,
    ]
    print("launching: torchrun " + " ".join(cmd[4:]), flush=True)
    return subprocess.call(cmd)
