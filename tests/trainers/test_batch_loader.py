"""The batch stream: the same batches whatever the workers, and a worker's error reaches the loop."""
import numpy as np
import pytest
import torch

from autoseg.trainers.augmentation import Compose, build_train_transforms
from autoseg.trainers.batch_loader import TrainingBatches, make_batch

SCALES_3D = [[1, 1, 1], [1, 2, 2], [2, 4, 4]]


@pytest.mark.parametrize("workers,backend", [(0, "thread"), (1, "thread"), (2, "thread"), (1, "process")])
def test_training_batches_same_stream_for_any_workers(sampler3d, workers, backend):
    t = build_train_transforms((8, 16, 16), 3, anisotropic=False, deep_supervision_scales=SCALES_3D)
    ref = [make_batch(sampler3d, t, 0, i) for i in range(3)]
    with TrainingBatches(sampler3d, t, num_workers=workers, seed=0, backend=backend) as it:
        got = [next(it) for _ in range(3)]
    for r, g in zip(ref, got):
        assert g["data"].dtype == torch.float32 and g["data"].shape == (4, 2, 8, 16, 16)
        assert g["target"][0].dtype == torch.int64 and len(g["target"]) == 3
        np.testing.assert_array_equal(g["data"].numpy(), r["data"])
        np.testing.assert_array_equal(g["target"][2].numpy(), r["target"][2])


def test_worker_error_reaches_the_training_loop(sampler3d):
    class Broken(Compose):
        def apply(self, batch, params):
            raise RuntimeError("boom")

    with TrainingBatches(sampler3d, Broken([]), num_workers=1) as it:
        with pytest.raises(RuntimeError, match="boom"):
            next(it)
