"""One fold trained by several processes (``torchrun``): who this process is and what the ranks share.

Under ``torchrun --nproc_per_node N [--nnodes M ...] -m autoseg train ...`` every process runs
the same command; torchrun tells each which one it is through ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (and where rank 0 listens, ``MASTER_ADDR`` and
``MASTER_PORT``). Without them the world is one process and nothing here touches
``torch.distributed``: every helper of a one-process :class:`DistributedContext` returns its
input unchanged, so the training loop reads the same either way.

What the ranks must agree on, and why (documentation/distributed.md):

* DistributedDataParallel averages gradients inside ``backward``, so every rank must run the
  same number of training steps or the others wait forever in that all-reduce: whether to stop
  early (the time budget) is rank 0's decision, sent to all (:meth:`DistributedContext.main_flag`);
* a step skipped for a non-finite gradient is skipped on every rank (:meth:`all_true`), or the
  weights drift apart;
* the pseudo-Dice counts of the ranks' validation patches are summed (:meth:`sum`) so every rank
  logs and picks ``checkpoint_best.pt`` from the same numbers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import torch
from torch import nn

from autoseg.errors import UserError

T = TypeVar("T")

# Rank r draws the patch stream of seed ``seed + RANK_SEED_STRIDE * r``: well apart from the
# ``seed + iteration`` a resumed run starts from (nnU-Net's 1000 x 250 iterations stay below it),
# so no two ranks, and no rank and a resumed run, draw the same patches.
RANK_SEED_STRIDE = 1 << 20


def rank_batch_share(batch_size: int, oversample_foreground: float, rank: int, world_size: int) -> tuple[int, float]:
    """(patches per rank, this rank's foreground-oversampling fraction) for a plan's ``batch_size``.

    Every rank draws ``ceil(batch_size / world_size)`` patches, so the global batch is at least
    the plan's: ranks of equal batches weigh each patch alike in DDP's gradient average, which
    unequal shares (nnU-Net's exact split) would not. The foreground-forced patches are those the
    sampler would force in one batch of the global size (its last ones), dealt to the ranks whose
    slots they fall in: with a plan of 2 on 2 ranks, rank 1 draws the forced patch and rank 0 the
    random one, as one process draws them, not two forced ones.
    """
    if world_size <= 1:
        return batch_size, oversample_foreground
    per_rank = max(1, math.ceil(batch_size / world_size))
    total = per_rank * world_size
    # the rule of PatchSampler.num_forced, applied to the global batch
    forced = 0 if oversample_foreground <= 0 else min(total, max(1, round(total * oversample_foreground)))
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    mine = max(0, min(hi, total) - max(lo, total - forced))
    return per_rank, mine / per_rank


@dataclass
class DistributedContext:
    """This process's place among the training processes; one process when torchrun is not used."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    _device: torch.device | None = field(default=None, init=False, repr=False)  # where collectives run (start)
    _started: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistributedContext":
        """Read torchrun's variables (``os.environ`` by default); a world of one when they are absent."""
        env = os.environ if environ is None else environ

        def read(name: str, default: int) -> int:
            value = env.get(name, "")
            if value == "":
                return default
            try:
                return int(value)
            except ValueError:
                raise UserError(f"environment variable {name}={value!r} (set by torchrun) is not a whole "
                                "number") from None

        world = read("WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        rank = read("RANK", 0)
        local_rank = read("LOCAL_RANK", 0)
        local_world = read("LOCAL_WORLD_SIZE", world)
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:  # WORLD_SIZE alone, e.g. left over in a job script: no launcher started the others
            raise UserError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} not: start distributed "
                            "training with torchrun (or unset WORLD_SIZE to train in one process)")
        if not 0 <= rank < world or not 0 <= local_rank < local_world or local_world > world:
            raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                            f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}")
        return cls(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the fold's files and validates it."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------ start, stop

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPUs); returns this rank's device.

        On CUDA each process of a machine takes the GPU of its ``LOCAL_RANK``; ``device`` is
        what ``--device`` resolved to. One process: ``device`` as given, nothing started.
        """
        if not self.is_distributed:
            return device
        import torch.distributed as dist

        if not dist.is_available():
            raise UserError("this torch build has no torch.distributed: train in one process (without torchrun)")
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise UserError(f"torchrun started {self.local_world_size} processes on this machine but torch sees "
                                f"{count} GPU(s): pass --nproc_per_node {count} (one process per GPU)")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        elif device.type == "cpu":
            backend = "gloo"
        else:
            raise UserError(f"--device {device.type}: distributed training runs on CUDA GPUs (NCCL) or CPUs (gloo)")
        self._device = device
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
            self._started = True
        return device

    def close(self) -> None:
        """Leave the process group this context started (after the last collective step).

        Drop the DDP wrapper first: whatever still holds the group (a DDP reducer, gloo's pending
        work) when the interpreter shuts down can abort the process ("terminate called without an
        active exception") after a run that succeeded.
        """
        if self._started:
            import gc

            import torch.distributed as dist

            gc.collect()  # a dropped DDP wrapper sits in reference cycles: free it while torch is whole
            if dist.is_initialized():
                dist.destroy_process_group()
            self._started = False

    # ------------------------------------------------------------ what the ranks share

    def wrap(self, network: nn.Module) -> nn.Module:
        """The module training steps call: DDP around ``network`` (its parameters, no copy).

        ``static_graph``: every training step runs the same graph, which lets DDP find parameters
        a network never uses in training (MONAI's UNETR has some) once, instead of searching
        every step as ``find_unused_parameters`` does. DDP broadcasts rank 0's weights when it
        wraps, so every rank starts from the same network.
        """
        if not self.is_distributed:
            return network
        from torch.nn.parallel import DistributedDataParallel

        ids = [self._device.index] if self._device is not None and self._device.type == "cuda" else None
        return DistributedDataParallel(network, device_ids=ids, static_graph=True)

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            if self._device is not None and self._device.type == "cuda":
                dist.barrier(device_ids=[self._device.index])
            else:
                dist.barrier()

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the others: rank 0 creates a file (splits.json) the others read."""
        if not self.is_distributed:
            return fn()
        result = fn() if self.is_main else None
        self.barrier()
        return result if self.is_main else fn()

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64, device=self._device or "cpu")

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks (float64); ``values`` itself in one process."""
        if not self.is_distributed:
            return values
        import torch.distributed as dist

        t = self._tensor(np.asarray(values, dtype=np.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def mean(self, value: float) -> float:
        """The mean of one number over the ranks; ``value`` itself in one process."""
        if not self.is_distributed:
            return value
        return float(self.sum(np.array([value]))[0]) / self.world_size

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (the same answer on all)."""
        if not self.is_distributed:
            return flag
        import torch.distributed as dist

        t = self._tensor(np.array([1.0 if flag else 0.0]))
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def main_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank: a decision taken by one clock for all."""
        if not self.is_distributed:
            return flag
        import torch.distributed as dist

        t = self._tensor(np.array([1.0 if flag else 0.0]))
        dist.broadcast(t, src=0)
        return bool(t.item() > 0.5)

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` (a small picklable object) on every rank."""
        if not self.is_distributed:
            return value
        import torch.distributed as dist

        box: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._device)
        return box[0]

    # ------------------------------------------------------------ per-rank data

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's patch stream (``seed`` itself on rank 0 and in one process)."""
        return seed + RANK_SEED_STRIDE * self.rank

    def batch_share(self, batch_size: int, oversample_foreground: float) -> tuple[int, float]:
        """This rank's batch size and foreground fraction: :func:`rank_batch_share`."""
        return rank_batch_share(batch_size, oversample_foreground, self.rank, self.world_size)
