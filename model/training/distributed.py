"""Data-parallel training on several processes with ``torch.distributed`` (gloo on CPU).

Every rank sees the same shuffled global batch and trains on its slice of it; gradients are
summed weighted by slice size and divided by the global batch size, which is exactly the
gradient of one process on the whole batch (up to float summation order). Weights therefore
stay identical across ranks; pruning decisions are still made once, on rank 0, and broadcast
(:meth:`model.training.Trainer._share_decisions`), and only rank 0 writes events and
checkpoints. No DDP wrapper: module names stay as they are, so pruning hooks address layers
by their usual paths.

:func:`launch` starts ranks 1..N-1 as spawned processes next to the caller, which becomes
rank 0 — the way ``torchrun`` does on one host.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = timedelta(seconds=300)  # a rank that died makes the others fail, not hang forever


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=TIMEOUT,
    )  # fmt: skip


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(model: nn.Module, local_n: int, global_n: int) -> None:
    """grad ← Σ_ranks(grad_r · n_r) / N: the whole-batch mean gradient on every rank."""
    grads = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) * float(local_n)
    dist.all_reduce(flat)
    flat /= float(global_n)
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank if it is true on any (e.g. a cancel seen by rank 0)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(model: nn.Module) -> None:
    """Parameters and buffers of rank 0, in place on every rank."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            dist.broadcast(tensor.data, src=0)


def launch(world: int, child: Callable[..., None], args: tuple) -> tuple[Any, int]:
    """Spawn ranks 1..world-1 running ``child(index, world, port, *args)``; returns the process
    context and the rendezvous port. The caller then calls ``init(0, world, port)``."""
    import torch.multiprocessing as mp

    port = free_port()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    context = mp.start_processes(child, args=(world, port, *args), nprocs=world - 1,
                                 join=False, start_method="spawn")  # fmt: skip
    return context, port
