"""The resumable training sampler: any epoch's order from seed + epoch; the same clips per step on any number of
ranks."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, DistributedSampler


class EpochSeededSampler(DistributedSampler):
    """Shuffles with seed + epoch, so any epoch's order is known without replaying the earlier ones, skips the
    samples a resumed run had already consumed in its first epoch (mid-epoch `fit --ckpt_path last`), and gives
    rank r of `num_replicas` the positions r, r + num_replicas, ... of that order.

    With batch_size b per rank, global step s therefore trains on positions [s*b*W, (s+1)*b*W) of the epoch's order
    on any number W of ranks: the same clips as one process with batch_size b*W. The tail is padded by repeating
    the order's first samples so every rank gets as many batches (DistributedSampler's rule). It is a
    DistributedSampler so Lightning leaves it in place instead of wrapping it in another one."""

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        resume_epoch: int = 0,
        resume_skip: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.resume_epoch, self.resume_skip = resume_epoch, resume_skip

    def _order(self) -> list[int]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.tolist()
        order = order[self.resume_skip :] if self.epoch == self.resume_epoch else order
        padding = -len(order) % self.num_replicas
        return order + (order * (padding // max(len(order), 1) + 1))[:padding]

    def __iter__(self):
        return iter(self._order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        size = len(self.dataset) - (self.resume_skip if self.epoch == self.resume_epoch else 0)
        return -(-size // self.num_replicas)
