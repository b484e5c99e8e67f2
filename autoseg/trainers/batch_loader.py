"""Training batches, endlessly: patch locations, cut-outs, augmentation, deep-supervision targets.

Batch ``i`` of a stream depends only on ``(seed, i)``: the sampler draws its locations and the
transforms their parameters from one generator seeded with both, so the stream is the same
inline, in background threads or in processes, and a recorded batch can be replayed.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

import numpy as np

from autoseg.trainers.augmentation import Batch, Compose


def _batch_seed(seed: int, index: int) -> np.random.Generator:
    # one generator per batch index: the stream is the same inline, in threads or in processes
    return np.random.default_rng([seed, index])


def make_batch(sampler: Any, transforms: Compose, seed: int, index: int) -> Batch:
    """Batch number ``index`` of the stream: locations, augmentation, deep-supervision targets.

    Returns numpy arrays: ``data`` (B,C,*patch) float32, ``target`` list of (B,1,*scaled) int16,
    plus ``locations`` and ``params`` (what was drawn, for logging or replay).
    """
    rng = _batch_seed(seed, index)
    locations = sampler.sample_locations(rng)
    params = transforms.sample(rng, len(locations), sampler.num_channels)
    sizes = transforms.region_sizes(params, sampler.patch_size, len(locations))
    crops = [sampler.crop(loc, size) for loc, size in zip(locations, sizes)]
    if len(set(sizes)) == 1:
        batch: Batch = {"data": np.stack([c[0] for c in crops]), "seg": np.stack([c[1] for c in crops])}
    else:
        batch = {"data": [c[0] for c in crops], "seg": [c[1] for c in crops]}
    batch = transforms.apply(batch, params)
    target = batch.pop("target", None) or [batch["seg"]]
    return {"data": batch["data"], "target": target, "locations": locations, "params": params}


def _worker_loop(sampler: Any, transforms: Compose, seed: int, start: int, step: int, out: Any, stop: Any) -> None:
    index = start
    try:
        while not stop.is_set():
            batch = make_batch(sampler, transforms, seed, index)
            batch.pop("params")
            while not stop.is_set():
                try:
                    out.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
            index += step
    except Exception as e:  # surface the error in the training loop, not a silent hang
        out.put(e)


class TrainingBatches:
    """Endless iterator of training batches as torch tensors.

    Yields ``{"data": float32 (B,C,*patch), "target": [int64 (B,1,*scaled patch), ...],
    "locations": [...]}`` with targets full resolution first. ``num_workers=0`` builds
    each batch inline; ``n > 0`` builds them ahead in ``n`` background workers (``backend``
    ``"thread"``, the default: numpy/scipy release the GIL, and a thread costs no start-up or
    copying; or ``"process"``). Batch ``i`` depends only on ``(seed, i)``, so the stream is
    identical whatever the workers. Call :meth:`close` (or use ``with``) to stop workers.
    """

    def __init__(self, sampler: Any, transforms: Compose, num_workers: int = 1, seed: int | None = None,
                 backend: str = "thread", prefetch: int = 2) -> None:
        if backend not in ("thread", "process"):
            raise ValueError(f"backend must be 'thread' or 'process', got {backend!r}")
        self.sampler = sampler
        self.transforms = transforms
        self.num_workers = int(num_workers)
        self.seed = sampler.seed if seed is None else seed
        self.backend = backend
        self.prefetch = prefetch
        self._index = 0
        self._workers: list[Any] = []
        self._queues: list[Any] = []
        self._stop: Any = None

    def _start(self) -> None:
        if self.backend == "thread":
            self._stop = threading.Event()
            for w in range(self.num_workers):
                q: Any = queue.Queue(maxsize=self.prefetch)
                t = threading.Thread(target=_worker_loop, daemon=True, name=f"autoseg-batches-{w}",
                                     args=(self.sampler, self.transforms, self.seed, w, self.num_workers, q, self._stop))
                self._queues.append(q)
                t.start()
                self._workers.append(t)
        else:
            import multiprocessing as mp

            # spawn, not fork: forking a process whose torch thread pools are running can deadlock
            ctx = mp.get_context("spawn")
            self._stop = ctx.Event()
            for w in range(self.num_workers):
                q = ctx.Queue(maxsize=self.prefetch)
                p = ctx.Process(target=_worker_loop, daemon=True, name=f"autoseg-batches-{w}",
                                args=(self.sampler, self.transforms, self.seed, w, self.num_workers, q, self._stop))
                self._queues.append(q)
                p.start()
                self._workers.append(p)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        import torch

        if self.num_workers <= 0:
            batch = make_batch(self.sampler, self.transforms, self.seed, self._index)
            batch.pop("params")
        else:
            if not self._workers:
                self._start()
            batch = self._queues[self._index % self.num_workers].get()
            if isinstance(batch, Exception):
                self.close()
                raise batch
        self._index += 1
        return {
            "data": torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32)),
            "target": [torch.from_numpy(np.ascontiguousarray(t)).long() for t in batch["target"]],
            "locations": batch["locations"],
        }

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for q in self._queues:  # unblock workers waiting on a full queue
            try:
                while True:
                    q.get_nowait()
            except Exception:
                pass
        for worker in self._workers:
            worker.join(timeout=5)
            if self.backend == "process" and worker.is_alive():
                worker.terminate()
        self._workers, self._queues = [], []

    def __enter__(self) -> "TrainingBatches":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
