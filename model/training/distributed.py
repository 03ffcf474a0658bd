"""Data-parallel training on several processes and hosts with ``torch.distributed``: gloo when
the job trains on CPUs, NCCL when it trains on CUDA GPUs (one GPU per process).

Every rank sees the same shuffled global batch and trains on its slice of it; gradients are
summed weighted by slice size and divided by the global batch size, which is exactly the
gradient of one process on the whole batch (up to float summation order). Weights therefore
stay identical across ranks; pruning decisions are still made once, on rank 0, and broadcast
(:meth:`model.training.Trainer._share_decisions`), and only rank 0 writes events and
checkpoints. No DDP wrapper: module names stay as they are, so pruning hooks address layers
by their usual paths.

A job runs on ``nodes`` hosts with ``procs`` processes each, the way ``torchrun
--nnodes --nproc-per-node`` lays them out: node ``k``'s first process (the caller of
:func:`launch`) is global rank ``k·procs`` and spawns ranks ``k·procs+1 … k·procs+procs−1``
next to itself. Node 0's first process is rank 0: it hosts the rendezvous (a TCP store on
``master_addr:master_port``) that every other rank connects to. :class:`Cluster` says where a
process sits; the service's workers agree on it through the job store (``service.jobs``), the
command line through ``sweetspot prune --nodes/--node-rank/--master``.

The training device is agreed on at the rendezvous (:func:`check_in`): every rank resolves
the config's ``device`` on its host (:func:`resolve_device`; local rank ``i`` on GPU ``i``,
as ``torchrun``'s ``LOCAL_RANK``), and the job trains on CUDA GPUs only when every rank got
one, else on CPUs; a rank whose host lacks GPUs the config names fails the job at once with
its reason. So a job never mixes gloo and NCCL.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = timedelta(seconds=300)  # a rank that died makes the others fail, not hang forever

# What a rank reports at each step (the maximum over ranks wins, see :func:`stop_code`).
RUNNING, CANCEL_REQUESTED, RANK_LEAVING = 0, 1, 2


@dataclass
class Cluster:
    """Where this process's node sits in a job of ``nodes`` hosts × ``procs`` processes."""

    nodes: int = 1
    node_rank: int = 0
    procs: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: node 0 picks a free port (one host only)
    timeout_s: float = TIMEOUT.total_seconds()  # rendezvous and collectives

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 64:
            raise ValueError(f"nodes must be between 1 and 64, got {self.nodes}")
        if not 0 <= self.node_rank < self.nodes:
            raise ValueError(f"node_rank must be in [0, {self.nodes - 1}], got {self.node_rank}")
        if not 1 <= self.procs <= 64:
            raise ValueError(f"procs must be between 1 and 64, got {self.procs}")
        if self.nodes > 1 and not self.master_port:
            raise ValueError("a job on several nodes needs the master's port (--master ADDR:PORT)")
        if not 0 <= self.master_port < 65536:
            raise ValueError(f"master port must be in [0, 65535], got {self.master_port}")

    @property
    def world(self) -> int:
        return self.nodes * self.procs

    @property
    def first_rank(self) -> int:
        return self.node_rank * self.procs

    @property
    def distributed(self) -> bool:
        return self.world > 1


def parse_master(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``, with a message that says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--master must be HOST:PORT with a port in 1..65535, got {text!r}")
    return host.strip("[]"), int(port)


class RankLostError(RuntimeError):
    """Another rank of the job stopped answering (its process or host died, or the network
    between them failed): the job cannot go on with this process group."""


class RendezvousTimeoutError(RuntimeError):
    """Not every rank of the job arrived in time (too few workers, or a wrong address)."""


JOINED_KEY = "sweetspot/joined"
DEVICE_KEY = "sweetspot/device"  # the job's device kind, set by rank 0: "cpu" or "cuda"
GPU_RANKS_KEY = "sweetspot/gpu-ranks"  # ranks that got a GPU
FAILED_KEY = "sweetspot/failed"  # ranks that cannot train on the job's device
FAILED_REASON_KEY = "sweetspot/failed-reason"  # why (the last one to fail)

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def check_device_spec(spec: str) -> None:
    """Refuse a ``device`` value that is not one of :data:`DEVICE_CHOICES` (no hardware
    looked at: the host that checks a job may not be the one that trains it)."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.fullmatch(spec):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {spec!r}")


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(spec: str, procs: int = 1, local_index: int = 0) -> torch.device:
    """The device a job's process trains on, from the config's ``device``:

    ``cpu``     the CPU.
    ``cuda``    CUDA GPU ``local_index`` (one GPU per process of a host: ``procs`` GPUs).
    ``cuda:N``  GPU ``N``; one process per host only.
    ``auto``    ``cuda`` when torch sees at least ``procs`` GPUs, else the CPU.

    Raises ValueError, saying what this host has, when the GPUs asked for are not there.
    """
    check_device_spec(spec)
    count = _gpu_count()
    if spec == "cpu" or (spec == "auto" and count < procs):
        return torch.device("cpu")
    if count == 0:
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ValueError(f"device={spec!r} but torch ({torch.__version__}, built {built}) sees "
                         "no CUDA GPU on this host; use device='cpu' or 'auto'")  # fmt: skip
    if spec.startswith("cuda:"):
        index = int(spec.partition(":")[2])
        if procs > 1:
            raise ValueError(f"device={spec!r} pins one GPU, but procs={procs}: NCCL needs a GPU "
                             "per process; use device='cuda' (process i on GPU i)")  # fmt: skip
        if index >= count:
            raise ValueError(f"device={spec!r} but this host has {count} CUDA GPU(s) "
                             f"(cuda:0 … cuda:{count - 1})")  # fmt: skip
        return torch.device("cuda", index)
    if procs > count:
        raise ValueError(f"procs={procs} processes need a CUDA GPU each (NCCL cannot share one), "
                         f"but this host has {count}; lower procs or use device='cpu'")  # fmt: skip
    return torch.device("cuda", local_index)


def default_procs(wanted: int, spec: object, nodes: object = 1) -> int:
    """The processes a worker gives a job that does not set ``procs`` (its ``--procs``), for
    the job's ``device``: one for a pinned GPU (``cuda:N``), at most one per GPU when the job
    trains on GPUs (``cuda``, or ``auto`` on one host with a GPU: NCCL needs a GPU per
    process), else ``wanted``. ``auto`` over several hosts is left at ``wanted``: whether it
    trains on GPUs depends on the other hosts too (:func:`check_in`)."""
    count = _gpu_count()
    if isinstance(spec, str) and spec.startswith("cuda:"):
        return 1
    if count and (spec == "cuda" or (spec == "auto" and nodes in (None, 1))):
        return min(wanted, count)
    return wanted


def describe_device(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda:0 (NVIDIA H200)"``: what a run's log and manifest record."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


_device = torch.device("cpu")  # the device of the process group this process is in


def group_device() -> torch.device:
    """The device this rank trains on (and its collectives run on): set by :func:`init`."""
    return _device


def is_rank_lost(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because a peer went away (gloo's and NCCL's
    transport errors and timeouts are plain RuntimeErrors naming their backend). NCCL's
    "invalid usage" (two ranks on one GPU: two nodes of a job on one host) is a setup error,
    not a lost rank: running the job again would fail the same way."""
    dist_error = getattr(dist, "DistError", ())
    text = str(error).lower()
    if "invalid usage" in text:
        return False
    return isinstance(error, RankLostError) or (
        isinstance(error, RuntimeError)
        and (isinstance(error, dist_error) or "gloo" in text or "nccl" in text)
    )


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RendezvousCancelledError(RuntimeError):
    """The job was cancelled (or its worker stopped) while it waited for its other ranks."""


def init(cluster: Cluster, local_index: int = 0, cancel: threading.Event | None = None,
         device: str = "cpu") -> torch.device:  # fmt: skip
    """Join the job's process group as rank ``cluster.first_rank + local_index``; blocks until
    every rank has joined: at most ``cluster.timeout_s`` (then :class:`RendezvousTimeoutError`),
    and on rank 0 only until ``cancel`` is set (then :class:`RendezvousCancelledError`).
    Returns the device this rank trains on (``device`` is the job's config value, agreed on
    as :func:`check_in` says): the group uses NCCL on CUDA GPUs, gloo on CPUs.

    The rendezvous is a TCP store that rank 0 hosts; every rank checks in there and rank 0
    waits, in short rounds, until all have, *before* the process group is made. A rendezvous
    that times out or is cancelled therefore leaves nothing behind, and a process group that
    fails to form is undone, so the same process (a worker) can run its next data-parallel job.
    """
    rank = cluster.first_rank + local_index
    timeout = timedelta(seconds=cluster.timeout_s)
    store = dist.TCPStore(cluster.master_addr, cluster.master_port, world_size=cluster.world,
                          is_master=rank == 0, timeout=timeout,
                          wait_for_workers=False)  # fmt: skip
    resolved = check_in(store, rank, cluster, device, local_index, cancel)
    global _device
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, store=store, rank=rank, world_size=cluster.world,
                                timeout=timeout)  # fmt: skip
    except Exception:
        _forget_failed_group()
        raise
    _device = resolved
    return resolved


class RankDeviceError(ValueError):
    """A rank's host lacks the GPUs the job asks for (``device='cuda'`` or ``'cuda:N'``)."""


# What makes rank 0 give up a rendezvous; sent on to the ranks already there by name.
_GIVE_UP = (RankDeviceError, RendezvousCancelledError, RendezvousTimeoutError)


def check_in(store: Any, rank: int, cluster: Cluster, spec: str, local_index: int = 0,
             cancel: threading.Event | None = None) -> torch.device:  # fmt: skip
    """The rendezvous before the process group, and one device kind for the whole job.

    Every rank resolves ``spec`` on its host (:func:`resolve_device`) and checks in with what
    it got: a GPU or the CPU, or, when ``spec`` names GPUs this host lacks, the reason (then it
    raises :class:`RankDeviceError`). Rank 0 waits until all have checked in (see
    :func:`init`), fails at once with a reason given, and publishes the job's kind:
    CUDA when every rank got a GPU, else the CPU (``auto`` on a job whose hosts are not all
    GPU hosts trains on CPUs everywhere, with gloo). Every rank then trains on that kind.
    """
    try:
        resolved = resolve_device(spec, cluster.procs, local_index)
    except ValueError as error:
        reason = f"rank {rank} cannot train on this job's device: {error}"
        store.set(FAILED_REASON_KEY, reason)
        store.add(FAILED_KEY, 1)
        raise RankDeviceError(reason) from None
    if resolved.type == "cuda":
        store.add(GPU_RANKS_KEY, 1)
    joined = store.add(JOINED_KEY, 1)
    if rank == 0:
        try:
            _wait_for_ranks(store, cluster, joined, cancel or threading.Event())
        except _GIVE_UP as error:  # the ranks already here wait for the job's kind: say why
            store.set(DEVICE_KEY, f"{type(error).__name__}:{error}")
            raise
        kind = "cuda" if store.add(GPU_RANKS_KEY, 0) == cluster.world else "cpu"
        store.set(DEVICE_KEY, kind)
    else:
        kind = store.get(DEVICE_KEY).decode()
        name, sep, reason = kind.partition(":")
        if sep:  # rank 0 gave up: the same error here
            raise next(e for e in _GIVE_UP if e.__name__ == name)(reason)
    return resolved if resolved.type == kind else torch.device("cpu")


def _wait_for_ranks(store: Any, cluster: Cluster, joined: int, stop: threading.Event) -> None:
    deadline = time.monotonic() + cluster.timeout_s
    while joined < cluster.world:
        if store.add(FAILED_KEY, 0):  # its reason was set before it counted itself
            raise RankDeviceError(store.get(FAILED_REASON_KEY).decode())
        if stop.wait(0.2):
            raise RendezvousCancelledError("cancelled while waiting for the job's other ranks")
        if time.monotonic() > deadline:
            raise RendezvousTimeoutError(
                f"{joined} of {cluster.world} ranks joined within {cluster.timeout_s:g} s"
            )
        joined = store.add(JOINED_KEY, 0)


def _forget_failed_group() -> None:
    """torch numbers process groups as they are made and counts one up even when making the
    default group fails; reset the count so the next job's ranks agree on the group's name."""
    if dist.is_initialized():
        dist.destroy_process_group()
        return
    world = getattr(dist.distributed_c10d, "_world", None)
    if world is not None and hasattr(world, "group_count"):
        world.group_count = 0


def shutdown() -> None:
    global _device
    if dist.is_initialized():
        dist.destroy_process_group()
    _device = torch.device("cpu")


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


def stop_code(cancel_set: bool, rank: int, world: int) -> int:
    """Whether to stop, agreed by all ranks at each step: :data:`CANCEL_REQUESTED` when rank 0
    (the job's owner) was asked to cancel, :data:`RANK_LEAVING` when another rank is shutting
    down (its host's worker stops: the job should be requeued, not cancelled), else RUNNING."""
    mine = RUNNING
    if cancel_set:
        mine = CANCEL_REQUESTED if rank == 0 else RANK_LEAVING
    if world == 1:
        return mine
    value = torch.tensor([float(mine)], device=_device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled: pass CPU tensors, :func:`to_device`)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def broadcast_module(model: nn.Module) -> None:
    """Parameters and buffers of rank 0, in place on every rank."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            dist.broadcast(tensor.data, src=0)


def launch(cluster: Cluster, child: Callable[..., None], args: tuple) -> tuple[Any, Cluster]:
    """Spawn this node's other ``procs − 1`` ranks running ``child(i, cluster, *args)`` with
    ``i`` = 0 … procs−2 (local index ``i + 1``). On a one-node job without a port, one is
    picked here. Returns the process context (None when there are no children) and the
    cluster; the caller then calls ``init(cluster)`` as the node's first rank."""
    if not cluster.master_port:
        cluster = Cluster(**{**cluster.__dict__, "master_port": free_port()})
    if cluster.procs == 1:
        return None, cluster
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    context = mp.start_processes(child, args=(cluster, *args), nprocs=cluster.procs - 1,
                                 join=False, start_method="spawn")  # fmt: skip
    return context, cluster
