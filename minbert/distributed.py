"""Data parallelism with `torch.distributed`, for runs launched by `torchrun`.

    torchrun --nproc_per_node 2 -m minbert train --config configs/quick.toml

Every rank builds the same plan of batches (it is seeded) and takes its contiguous shard of
each batch. A task's loss on a rank is scaled by shard_size · world / batch_size, so the
mean of the ranks' gradients is exactly the gradient of the whole batch's mean loss:
gradients are averaged across ranks (all-reduce) before the optimizer step, and methods
that look at per-task gradients (PCGrad, CAGrad) average those across ranks before their
surgery. Dev predictions are split by batch and summed back; train metrics are gathered.
Only rank 0 writes the run folder. gloo on CPU, NCCL on CUDA. With one process every
function here is a no-op.
"""
from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> None:
    """Joins the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # what the group leaves in reference cycles is freed now, not at interpreter exit,
        # where gloo's threads then aborted a finished run about one time in eight
        gc.collect()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def launched_as_main() -> bool:
    """Rank 0 by torchrun's environment: valid before and after the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def shard(indices: list[int]) -> list[int]:
    """This rank's contiguous part of one batch (sizes differ by at most one)."""
    n, world, r = len(indices), world_size(), rank()
    return list(indices[r * n // world:(r + 1) * n // world])


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor)
        tensor /= world_size()
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_grads(parameters) -> None:
    """Averages `.grad` across ranks, through one flat buffer (one collective)."""
    if not active():
        return
    # which parameters have a gradient is the same on every rank: the ranks run the same
    # tasks at every step (a head whose task sat out keeps None, as in one process)
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce_mean_(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights."""
    if active():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list without DDP)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()
