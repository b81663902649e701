"""Data-parallel training under ``torchrun`` (PyTorch DDP over gloo).

``torchrun --nproc-per-node N -m freshrec.cli build ...`` starts N processes; each loads the same
data, draws the same batch order (the numpy generator is seeded alike on every rank) and trains
on its share of every batch: the rank-th of every N sequences, so the users of a batch are split
across ranks. DDP averages the gradients; the loss each rank backpropagates is its sum over its
targets divided by the number of targets of the whole batch across ranks (times N, which DDP's
average divides out), so a step is the step one process takes on the whole batch. Every rank
embeds the whole catalog with the item tower, so the full softmax over the catalog stays exact;
the item tower's dropout draws come from one random stream shared by the ranks, so every rank
computes the same catalog vectors. Rank 0 alone logs, evaluates for the report, writes the
checkpoints and the rest of the build; the others stop after training.

Training runs on CPU (the towers are small; ML-100K trains in minutes), so the backend is gloo;
``torchrun``'s rendezvous (``--nnodes``, ``--rdzv-endpoint``) spreads the same command over nodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import distributed as dist

T = TypeVar("T")


class Ranks:
    """This process's place among the training processes; one process (rank 0 of 1) by default,
    where every method is a no-op or the identity."""

    def __init__(self, rank: int = 0, world: int = 1, backend: str | None = None) -> None:
        self.rank, self.world, self.backend = rank, world, backend
        self._shared_rng: torch.Tensor | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"processes": self.world, "backend": self.backend}

    # -- data --------------------------------------------------------------------------------
    def share(self, batch: Sequence[T]) -> tuple[list[T], bool]:
        """This rank's share of a global batch (every world-th element from its rank) and whether
        it counts. A share that would be empty (a last batch smaller than the world) is the
        batch's first element, not counted: every rank still runs the step DDP waits for."""
        mine = list(batch[self.rank :: self.world])
        return (mine, True) if mine else (list(batch[:1]), False)

    def mean_loss(self, logits: torch.Tensor, labels: torch.Tensor, counted: bool = True) -> tuple[torch.Tensor, int]:
        """Cross-entropy whose DDP-averaged gradient is that of the mean over the whole batch
        (every rank's labels), and that batch's number of labels."""
        if self.world == 1:
            return F.cross_entropy(logits, labels), len(labels)
        n = int(self.sum(len(labels) if counted else 0))
        loss = F.cross_entropy(logits, labels, reduction="sum") * (self.world / max(n, 1))
        return (loss if counted else loss * 0.0), n

    def sum(self, x: float) -> float:
        """``x`` summed over the ranks."""
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every rank's 1-D int64 tensor, concatenated in rank order, and where this rank's starts."""
        if self.world == 1:
            return x, 0
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(x)], dtype=torch.int64))
        n = [int(s.item()) for s in sizes]
        parts = [torch.zeros(max(n), dtype=x.dtype) for _ in range(self.world)]
        dist.all_gather(parts, torch.cat([x, torch.zeros(max(n) - len(x), dtype=x.dtype)]))
        return torch.cat([p[:k] for p, k in zip(parts, n)]), sum(n[: self.rank])

    # -- modules and randomness ----------------------------------------------------------------
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DDP (its parameters broadcast from rank 0, gradients averaged)."""
        if self.world == 1:
            return module
        return torch.nn.parallel.DistributedDataParallel(module)

    def seed(self, seed: int) -> None:
        """Starts the stream the ranks share (from ``seed``, the same on every rank) and sets each
        rank's own stream (user-tower and reranker dropout) apart: rank 0 keeps the one it has,
        as one process would, the others are seeded by their rank."""
        if self.world > 1:
            own = torch.get_rng_state()
            torch.manual_seed(seed + 104_729)
            self._shared_rng = torch.get_rng_state()
            torch.set_rng_state(own)
            if self.rank:
                torch.manual_seed(seed + 7919 * self.rank)

    @contextmanager
    def shared_rng(self) -> Iterator[None]:
        """Random draws made inside come from the stream every rank shares."""
        if self._shared_rng is None:
            yield
            return
        own = torch.get_rng_state()
        torch.set_rng_state(self._shared_rng)
        try:
            yield
        finally:
            self._shared_rng = torch.get_rng_state()
            torch.set_rng_state(own)

    # -- lifecycle -----------------------------------------------------------------------------
    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. filling a cache), the others after it."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leaves the process group once every rank has reached here: a rank that tears gloo down
        while the main rank is still writing its results can abort ("terminate called without an
        active exception", seen under load)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def from_env() -> Ranks:
    """The ranks ``torchrun`` set up (``WORLD_SIZE`` > 1: joins its process group over gloo);
    one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), dist.get_backend())
