"""Data-parallel training across processes with ``torch.distributed``.

Launch with torchrun, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous::

    torchrun --nproc_per_node=4 -m pyro_vae train --out runs/ddp          # one machine
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 \\
             --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m pyro_vae train --out runs/ddp

Every process builds the same VAE; :class:`~torch.nn.parallel.DistributedDataParallel`
broadcasts rank 0's parameters and averages gradients. ``train.batch_size`` is the *global*
batch: every rank draws the same shuffled order and takes its own rows of each batch, and its
summed loss is divided by the global batch size and multiplied by the world size, so the
averaged gradient is exactly that of the global batch's mean negative ELBO. Every rank draws its
own z (seed ``train.seed + rank``). Rank 0 alone writes the run folder; losses and the stop
decision (a signal, a non-finite loss) are reduced across ranks every step so that all ranks act
alike. Backends: ``nccl`` on GPU, ``gloo`` on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this context initialised the process group (and shuts it down)
    cuda: bool = False  # the group is NCCL's: its collectives take tensors on this rank's GPU

    @property
    def main(self) -> bool:
        """Rank 0, the process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def check_gpus_per_node(processes_per_node: int, gpus: int) -> None:
    """``ValueError`` when more processes than GPUs would share one machine under ``nccl``
    (NCCL allows one process per GPU; it would fail later with "Duplicate GPU detected")."""
    if processes_per_node > gpus:
        raise ValueError(
            f"{processes_per_node} processes per node were started on CUDA, but this machine has {gpus} GPU"
            f"{'s' if gpus != 1 else ''}: NCCL needs one GPU per process. Start at most {gpus} (torchrun "
            f"--nproc_per_node={gpus}), or train on the CPU with gloo (--set train.device=cpu)"
        )


def from_environment(use_cuda: bool) -> Context:
    """The context torchrun describes in the environment (a single process when it does not),
    with the process group initialised (``nccl`` with CUDA, else ``gloo``). With CUDA, more
    processes on this machine than GPUs is a ``ValueError`` before any process group starts."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        check_gpus_per_node(int(os.environ.get("LOCAL_WORLD_SIZE", world)), torch.cuda.device_count())
        torch.cuda.set_device(local_rank)  # barrier and the object collectives run on the current device
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, owns, use_cuda)


def device(ctx: Context) -> torch.device:
    """The device of this rank's collective tensors: its GPU under NCCL, else the CPU."""
    return torch.device("cuda", ctx.local_rank) if ctx.cuda else torch.device("cpu")


def shard(indices: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This rank's rows of a global batch (every ``world_size``-th, starting at ``rank``)."""
    return indices[ctx.rank :: ctx.world_size] if ctx.active else indices


def all_sum(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op for one process). The tensor must live on the group's
    device (:func:`device`): NCCL reduces CUDA tensors of this rank's GPU only, and a tensor on
    another device fails there at the first reduction, so it is refused here on every backend."""
    if ctx.active:
        if values.device != device(ctx):
            raise ValueError(
                f"a collective on a {values.device} tensor, but this rank's process group works on "
                f"{device(ctx)}: create it there (pyro_vae.training.distributed.device(ctx))"
            )
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather(obj, ctx: Context) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: nn.Module, ctx: Context) -> None:
    """Rank 0's parameters and buffers into every rank's ``module``, in place (a no-op for one
    process): what only rank 0 read from the run folder, which other machines may not see."""
    if ctx.active:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def shutdown(ctx: Context) -> None:
    """Wait for every rank, then destroy the process group if ``ctx`` created it."""
    barrier(ctx)
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _Loss(nn.Module):
    """The training loss as a module, so DistributedDataParallel sees the forward pass."""

    def __init__(self, vae: nn.Module, loss_fn) -> None:
        super().__init__()
        self.vae = vae
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, beta: float | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        kw = {} if labels is None else {"labels": labels}
        return self.loss_fn(x, **kw) if beta is None else self.loss_fn(x, beta, **kw)


def wrap_loss(vae: nn.Module, loss_fn, ctx: Context):
    """``loss_fn`` unchanged for one process; else a DDP module computing it (whose backward
    averages the gradients over ranks)."""
    if not ctx.active:
        return loss_fn
    device_ids = [ctx.local_rank] if next(vae.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(_Loss(vae, loss_fn), device_ids=device_ids)
