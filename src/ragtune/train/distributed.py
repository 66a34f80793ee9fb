"""Training on several processes (``torchrun`` / ``accelerate launch``): joining the process
group, and this process's place in it. One process alone is rank 0 of 1, and nothing here
imports torch until it is needed."""

from __future__ import annotations

import os


def init_distributed() -> int:
    """Join the process group when started by torchrun / accelerate launch (nccl on GPUs, gloo on
    CPU); this process's rank (0 when started alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank()


class World:
    """This process's place among the training processes (``torchrun``/``accelerate launch``
    start them; torch.distributed must be initialised, gloo on CPU). Alone: rank 0 of 1."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.size = self.dist.get_world_size() if self.dist else 1

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes."""
        if not self.dist:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params) -> None:
        if self.dist:
            for p in params:
                if p.grad is None:  # this process had no example in the batch: it adds zeros
                    p.grad = p.new_zeros(p.shape)
                self.dist.all_reduce(p.grad)
