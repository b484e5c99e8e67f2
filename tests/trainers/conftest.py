import pytest

from autoseg.trainers.patch_sampler import PatchSampler

from tests.trainers.test_patch_sampler import write_case


@pytest.fixture
def sampler3d(tmp_path):
    for i in range(3):
        write_case(tmp_path, f"c{i}", (20, 32, 32), channels=2, seed=i)
    return PatchSampler(tmp_path, ["c0", "c1", "c2"], (8, 16, 16), dim=3, batch_size=4, seed=1)
