"""Data-parallel training with torch.distributed, one process per device, started by torchrun.

    torchrun --nproc_per_node 2 -m cvlab train --preset fast --device cuda    # 2 GPUs, global batch 512

Each process joins the group that torchrun describes in its environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), with the backend of its device: NCCL on CUDA, HCCL on Ascend NPUs, Gloo on the CPU.
`batch_size` stays the global batch: every step, each of the N processes takes its 1/N of the global batch
that a single process would have taken (the same permutation, drawn from the seed on every process), and
DistributedDataParallel averages the gradients, so the update is the single-process update up to the
BatchNorm statistics (per process, or over the global batch with `sync_bn`). Only rank 0 writes the run
directory and prints. Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, UsageError

BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}
TIMEOUT_ENV = "CVLAB_DIST_TIMEOUT"   # seconds a collective may wait for a process before the run fails
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Group:
    """Where this process stands: its rank among `world_size` processes, its device index on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        """What metrics.json records."""
        return {"world_size": self.world_size, "backend": self.backend}


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in rank 0 or outside torchrun; usable before the group is joined (reads RANK)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def current() -> Group:
    """The group this process has joined, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


def check_batch(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the processes."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} does not divide over {world_size} processes; "
                          f"choose a multiple of {world_size} (batch_size is the global batch)")


def join(device: torch.device, batch_size: int | None) -> tuple[Group, torch.device]:
    """Join torchrun's process group (once per process) with `device`'s backend; returns the group and the
    device this process trains on (cuda:LOCAL_RANK, npu:LOCAL_RANK, or the CPU). A single process gets
    Group() and `device` unchanged."""
    world = launched_world_size()
    if world <= 1:
        return Group(), device
    if batch_size is not None:
        check_batch(batch_size, world)
    if device.type not in BACKENDS:
        raise UsageError(f"data-parallel training needs cuda, npu or cpu devices, not {device.type}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type == "npu":
        device = torch.device("npu", local_rank)
        torch.npu.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(BACKENDS[device.type], timeout=timedelta(seconds=timeout_seconds()))
    return current(), device


def placement(device: torch.device) -> tuple[Group, torch.device]:
    """The group this process has joined (`join`, which engine.fit calls) and the device it trains on there:
    cuda:LOCAL_RANK or npu:LOCAL_RANK in a data-parallel run. Joins nothing: a process outside a group gets
    Group() and `device` unchanged."""
    group = current()
    if group.parallel and device.type in ("cuda", "npu"):
        device = torch.device(device.type, group.local_rank)
    return group, device


def leave() -> None:
    """Leave the process group, if this process joined one: all processes together (a barrier first), so that
    none tears its connections down while another still uses them (a follower that left early was seen to
    abort with "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # another process is gone: nothing to wait for
            pass
        dist.destroy_process_group()


def wrap(model: nn.Module, group: Group, device: torch.device, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
    """(module to train, module to keep): DistributedDataParallel around the model (with SyncBatchNorm layers
    when `sync_bn`), and the bare module whose state checkpoints hold. One process: (model, model)."""
    if not group.parallel:
        return model, model
    if sync_bn:  # torch's SyncBatchNorm runs on accelerators only; the CPU (Gloo) gets GlobalBatchNorm2d
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type != "cpu" else global_batchnorm(model)
    ids = [device.index] if device.type in ("cuda", "npu") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids), model


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all processes: what SyncBatchNorm
    computes, for CPU processes (Gloo), where torch's SyncBatchNorm refuses to run. Two differentiable
    all-reduces per layer (sum and count, then the centred sum of squares); in eval mode, or in one
    process, it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _SumOverProcesses.apply
        # Statistics in float64: the centred sums over a share of the batch lose float32 digits that the
        # fused BatchNorm kernel keeps, and the gradients of the whole network would inherit the error.
        xd = x.double()
        channels = x.shape[1]
        count = torch.full((1,), x.numel() // channels, dtype=xd.dtype, device=x.device)
        total = all_reduce(torch.cat([xd.sum(dim=(0, 2, 3)), count]))
        n = total[channels]
        mean = total[:channels] / n
        centred = xd - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n  # biased, as BatchNorm normalizes with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), m)  # unbiased
        y = (centred * torch.rsqrt(var + self.eps)[None, :, None, None]).to(x.dtype)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced by a GlobalBatchNorm2d holding the same parameters and buffers."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        like = next(iter(module.state_dict().values()))
        bn = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=like.device, dtype=module.running_mean.dtype
                               if module.running_mean is not None else like.dtype)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, global_batchnorm(child))
    return module


def sum_counts(loss_sum: torch.Tensor, correct: torch.Tensor, correct5: torch.Tensor, seen: int
               ) -> tuple[float, float, float, int]:
    """(loss sum, correct, top-5 correct, images) over all processes, read to the host once per epoch.
    One process: the values themselves (as .item() would read them). The loss is summed in float32 and the
    counts in int64: HCCL (Ascend) has little float64 support, and counts are exact as integers."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss_sum.item(), correct.item(), correct5.item(), seen
    loss = loss_sum.detach().float().reshape(1)
    counts = torch.stack([correct.long(), correct5.long(),
                          torch.tensor(seen, dtype=torch.int64, device=loss_sum.device)])  # sync-ok: once per epoch
    dist.all_reduce(loss)
    dist.all_reduce(counts)
    right, right5, n = counts.tolist()
    return loss.item(), right, right5, n


def broadcast_buffers(*modules: nn.Module | None) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process, so all evaluate the same
    model and rank 0's checkpoint holds what was evaluated. Without SyncBatchNorm each process updates its
    running statistics from its own share of the batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for module in modules:
        if module is not None:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)


def share(obj=None):
    """Rank 0's `obj` on every process (a picklable value); one process: `obj`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# How a collective fails on the surviving processes when another process of the run died or hung.
PEER_LOST = re.compile(r"connection (reset|closed) by peer|broken pipe|timed out|timeout", re.I)
BACKEND_NAMES = ("gloo", "nccl", "hccl")


def lost_peer(exc: BaseException) -> str | None:
    """One line for a collective that failed because another process of a data-parallel run died or hung;
    None for any other exception, or outside a data-parallel run."""
    if launched_world_size() <= 1 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    reason = PEER_LOST.search(text)
    distributed_error = getattr(dist, "DistError", ())  # torch 2.2+; isinstance(x, ()) is False
    if not (isinstance(exc, distributed_error) or (reason and any(b in text.lower() for b in BACKEND_NAMES))):
        return None
    return (f"process {os.environ.get('RANK', '?')}: another process of this data-parallel run stopped"
            f"{f' ({reason.group(0).lower()})' if reason else ''}; the run directory keeps the last finished "
            "epoch: see that process's own message, then continue with --resume")
