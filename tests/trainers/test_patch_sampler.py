import json

import numpy as np
import pytest

from autoseg.trainers.patch_sampler import PatchLocation, PatchSampler


def write_case(folder, case_id, shape, channels=1, seed=0, with_fg=True):
    """A preprocessed case: noise image, a box of class 1 and a smaller box of class 2."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((channels,) + tuple(shape)).astype(np.float32)
    seg = np.zeros(shape, np.int16)
    locs = {}
    if with_fg:
        z0 = shape[0] // 3
        seg[z0:z0 + max(1, shape[0] // 4), 2:5, 3:6] = 1
        seg[-1, -2:, -2:] = 2
        for c in (1, 2):
            locs[str(c)] = np.argwhere(seg == c).tolist()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{case_id}.npy", data)
    np.save(folder / f"{case_id}_seg.npy", seg)
    (folder / f"{case_id}.json").write_text(json.dumps({"case_id": case_id, "class_locations": locs}))
    return data, seg


@pytest.fixture
def cases3d(tmp_path):
    for i in range(3):
        write_case(tmp_path, f"c{i}", (20, 24, 28), channels=2, seed=i)
    return tmp_path


def test_3d_patch_shapes(cases3d):
    s = PatchSampler(cases3d, ["c0", "c1", "c2"], (8, 16, 16), dim=3, batch_size=3)
    data, seg = s.sample_batch()
    assert data.shape == (3, 2, 8, 16, 16) and data.dtype == np.float32
    assert seg.shape == (3, 1, 8, 16, 16) and seg.dtype == np.int16


def test_crop_matches_volume(cases3d):
    s = PatchSampler(cases3d, ["c0"], (8, 16, 16), dim=3, batch_size=1)
    data, seg = s.arrays("c0")
    d, g = s.crop(PatchLocation("c0", (10, 12, 14)))
    np.testing.assert_array_equal(d, data[:, 6:14, 4:20, 6:22])
    np.testing.assert_array_equal(g[0], seg[6:14, 4:20, 6:22])


def test_small_volume_is_padded_with_zeros(tmp_path):
    data, seg = write_case(tmp_path, "small", (4, 6, 5))
    s = PatchSampler(tmp_path, ["small"], (8, 10, 12), dim=3, batch_size=4, oversample_foreground=0.0)
    d, g = s.sample_batch()
    assert d.shape == (4, 1, 8, 10, 12) and g.shape == (4, 1, 8, 10, 12)
    for b in range(4):
        # the whole volume is inside the patch, everything else is zero padding
        assert np.count_nonzero(d[b]) == data.size
        assert np.isclose(d[b].sum(), data.sum(), rtol=1e-4)
        assert (g[b] > 0).sum() == (seg > 0).sum()


def test_2d_sampling_of_3d_volume_and_2d_image(tmp_path):
    write_case(tmp_path, "vol", (6, 20, 24))
    write_case(tmp_path, "img", (1, 20, 24))
    s = PatchSampler(tmp_path, ["vol", "img"], (16, 16), dim=2, batch_size=5)
    d, g = s.sample_batch()
    assert d.shape == (5, 1, 16, 16) and g.shape == (5, 1, 16, 16)
    vol = np.load(tmp_path / "vol.npy")
    loc = PatchLocation("vol", (3, 10, 12))
    d, _ = s.crop(loc)
    np.testing.assert_array_equal(d, vol[:, 3, 2:18, 4:20])


def test_foreground_forced_with_oversample_one(tmp_path):
    # foreground is a tiny fraction of a large volume: random patches would mostly miss it
    for i in range(2):
        write_case(tmp_path, f"c{i}", (40, 64, 64), seed=i)
    for dim, patch in ((3, (8, 12, 12)), (2, (12, 12))):
        s = PatchSampler(tmp_path, ["c0", "c1"], patch, dim=dim, batch_size=4, oversample_foreground=1.0, seed=3)
        for _ in range(10):
            _, g = s.sample_batch()
            assert all((g[b] > 0).any() for b in range(4))


def test_forced_voxel_is_away_from_patch_edge(tmp_path):
    # class 2 sits in the volume's corner: the patch sticks out rather than leave it on the edge
    write_case(tmp_path, "c", (20, 24, 28))
    s = PatchSampler(tmp_path, ["c"], (8, 12, 12), dim=3, batch_size=1, oversample_foreground=1.0)
    corner_hits = 0
    for i in range(40):
        loc = s.sample_locations(np.random.default_rng(i))[0]
        _, g = s.crop(loc)
        where = np.argwhere(g[0] == 2)
        if len(where):
            corner_hits += 1
            assert (where.min(axis=0) <= np.array([6, 9, 9])).all()  # within 3/4 of the patch
    assert corner_hits > 5


def test_forced_count_is_last_of_batch(cases3d):
    s = PatchSampler(cases3d, ["c0"], (8, 8, 8), dim=3, batch_size=4, oversample_foreground=0.33)
    locs = s.sample_locations(np.random.default_rng(0))
    assert [l.forced_foreground for l in locs] == [False, False, False, True]
    s0 = PatchSampler(cases3d, ["c0"], (8, 8, 8), dim=3, batch_size=4, oversample_foreground=0.0)
    assert not any(l.forced_foreground for l in s0.sample_locations())


def test_no_foreground_falls_back_to_random(tmp_path):
    write_case(tmp_path, "empty", (10, 12, 12), with_fg=False)
    s = PatchSampler(tmp_path, ["empty"], (8, 8, 8), dim=3, batch_size=2, oversample_foreground=1.0)
    d, g = s.sample_batch()
    assert d.shape == (2, 1, 8, 8, 8) and not g.any()


def test_seed_reproduces_batch(cases3d):
    a = PatchSampler(cases3d, ["c0", "c1", "c2"], (8, 16, 16), dim=3, batch_size=3, seed=7)
    b = PatchSampler(cases3d, ["c0", "c1", "c2"], (8, 16, 16), dim=3, batch_size=3, seed=7)
    c = PatchSampler(cases3d, ["c0", "c1", "c2"], (8, 16, 16), dim=3, batch_size=3, seed=8)
    da, sa = a.sample_batch()
    db, sb = b.sample_batch()
    dc, _ = c.sample_batch()
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(sa, sb)
    assert not np.array_equal(da, dc)
    # recorded locations replay the same batch
    locs = a.sample_locations(np.random.default_rng(1))
    np.testing.assert_array_equal(a.sample_batch(locations=locs)[0], b.sample_batch(locations=locs)[0])


def test_missing_case_is_a_user_error(cases3d):
    from autoseg.errors import UserError

    with pytest.raises(UserError, match="nope.npy"):
        PatchSampler(cases3d, ["c0", "nope"], (8, 8, 8), dim=3, batch_size=2)


def test_random_patches_are_flush_with_an_edge_as_often_as_asked(tmp_path):
    write_case(tmp_path, "c", (12, 40, 30), with_fg=False)
    shape, patch = (12, 40, 30), (4, 8, 8)
    for flush in (0.0, 0.5):
        s = PatchSampler(tmp_path, ["c"], patch, dim=3, batch_size=1, oversample_foreground=0.0, edge_flush=flush)
        rng = np.random.default_rng(0)
        corners = np.array([[c - p // 2 for c, p in zip(s.sample_locations(rng)[0].center, patch)] for _ in range(2000)])
        hi = np.array(shape) - np.array(patch)
        assert (corners >= 0).all() and (corners <= hi).all()  # never sticks out: no padding wasted
        at_ends = ((corners == 0) | (corners == hi)).mean(axis=0)
        uniform = 2 / (hi + 1)  # the two end positions out of hi + 1
        np.testing.assert_allclose(at_ends, flush + (1 - flush) * uniform, atol=0.04)


def test_edge_flush_must_be_a_probability(cases3d):
    with pytest.raises(ValueError, match="probability"):
        PatchSampler(cases3d, ["c0"], (8, 8, 8), dim=3, batch_size=1, edge_flush=1.5)
