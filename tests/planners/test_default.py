"""Planners: topology rules, the default planner's decisions, user planners, example plans."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import UserError
from autoseg.fingerprint.fingerprint import FINGERPRINT_VERSION, CaseFingerprint, ChannelIntensity, Fingerprint
from autoseg.planners import get_planner
from autoseg.planners.base import Planner, resolve_profile
from autoseg.planners.default import CPU_FLOPS_PER_ITERATION, DefaultPlanner, oriented_axes
from autoseg.planners.plans import Plans
from autoseg.planners.topology import fit_patch, plan_topology, total_stride, training_flops, training_memory_bytes

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "documentation" / "examples"
DATA = REPO.parent / "shared" / "data"


def make_fingerprint(spacings, shapes, channel_names=("MRI",), label_values=(0, 1, 2), is_2d=False,
                     intensity=None) -> Fingerprint:
    """A hand-made fingerprint: one case per (spacing, shape after crop)."""
    cases = [CaseFingerprint(f"c{i}", list(map(float, sp)), list(sh), list(sh), [[0, s] for s in sh],
                             {v: 10 for v in label_values}, {v: 1 for v in label_values if v})
             for i, (sp, sh) in enumerate(zip(spacings, shapes))]
    median_spacing = [float(s) for s in np.median(np.array(spacings, float), axis=0)]
    in_plane = median_spacing[1:] if is_2d else median_spacing
    intensity = intensity or [ChannelIntensity(n, 100, 0, 1, -1, 1, -1, 0, 1, 0, 1) for n in channel_names]
    return Fingerprint(FINGERPRINT_VERSION, "Test", list(channel_names), list(label_values),
                       [f"l{v}" for v in label_values], is_2d, len(cases), median_spacing,
                       [int(s) for s in np.median(np.array(shapes), axis=0)], max(in_plane) / min(in_plane),
                       intensity, cases)


def hippocampus_like(n=200):
    return make_fingerprint([(1, 1, 1)] * n, [(36, 50, 35)] * n)


def acdc_like(n=40):
    rng = np.random.default_rng(0)
    shapes = [(int(rng.integers(7, 13)), int(rng.integers(200, 300)), int(rng.integers(180, 260))) for _ in range(n)]
    return make_fingerprint([(10, 1.5625, 1.5625)] * n, shapes, channel_names=("cineMRI",), label_values=(0, 1, 2, 3))


def drive_like():
    return make_fingerprint([(1, 1, 1)] * 20, [(1, 584, 565)] * 20, channel_names=("R", "G", "B"),
                            label_values=(0, 1), is_2d=True)


def check_consistent(plans: Plans, planner: DefaultPlanner) -> None:
    """Invariants every planned configuration must satisfy."""
    for c in plans.configurations.values():
        net = c.network
        assert len(c.patch_size) == c.dim and len(c.spacing) == 3 and len(c.median_shape) == 3
        assert net.strides[0] == [1] * c.dim and len(net.kernel_sizes) == len(net.strides) == net.n_stages >= 2
        assert all(len(k) == c.dim for k in net.kernel_sizes + net.strides)
        assert all(p % s == 0 for p, s in zip(c.patch_size, total_stride(net)))
        assert all(p // s >= 4 for p, s in zip(c.patch_size, total_stride(net)) if s > 1)
        assert c.batch_size >= 2
        assert planner.cost(c.patch_size, net, c.batch_size) <= planner.budget(c.dim)


# --- topology ---

def test_topology_isotropic_hippocampus_patch():
    t = plan_topology([40, 56, 40], [1, 1, 1], 16, 128)
    assert t.features_per_stage == [16, 32, 64, 128]
    assert t.strides == [[1, 1, 1]] + [[2, 2, 2]] * 3 and all(k == [3, 3, 3] for k in t.kernel_sizes)
    # the reference CPU network (0.3 s/iteration on 2 cores) must fit the CPU budget
    flops = training_flops(t, [40, 56, 40], 4, 1, 3)
    assert 0.9e11 < flops <= CPU_FLOPS_PER_ITERATION


def test_topology_anisotropic_kernels_catch_up_and_stay():
    t = plan_topology([10, 256, 224], [10, 1.5625, 1.5625], 32, 320)
    assert t.kernel_sizes[0] == [1, 3, 3] and t.kernel_sizes[1] == [1, 3, 3] and t.strides[1] == [1, 2, 2]
    first_z_conv = next(i for i, k in enumerate(t.kernel_sizes) if k[0] == 3)
    assert all(k == [3, 3, 3] for k in t.kernel_sizes[first_z_conv:])  # in-plane never drops back to 1
    assert t.features_per_stage[-1] == 320 and max(t.features_per_stage) == 320


def test_topology_frozen_axis_and_feature_cap():
    t = plan_topology([10, 256, 256], [10, 1.5, 1.5], 32, 320, frozen_axes=(0,))
    assert all(k[0] == 1 for k in t.kernel_sizes) and all(s[0] == 1 for s in t.strides)
    assert max(plan_topology([512, 512], [1, 1], 32, 512).features_per_stage) == 512


def test_fit_patch_rounds_up_to_stride():
    patch, t = fit_patch([37, 51, 33], [1, 1, 1], base_features=32, max_features=320)
    assert patch == [40, 56, 40] and t.n_stages == 4


def test_memory_estimate_calibration():
    """nnU-Net's usual 8 GB plan (128^3, batch 2) fits in 8 GB; 160^3 does not."""
    assert training_memory_bytes(plan_topology([128] * 3, [1] * 3, 32, 320), [128] * 3, 2, 3) < 8e9
    assert training_memory_bytes(plan_topology([160] * 3, [1] * 3, 32, 320), [160] * 3, 2, 3) > 8e9


# --- default planner on hand-made fingerprints ---

def test_isotropic_cpu_plan():
    planner = DefaultPlanner(hippocampus_like(), profile="cpu")
    plans = planner.plan()
    check_consistent(plans, planner)
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    full, two = plans.configurations["3d_fullres"], plans.configurations["2d"]
    assert full.spacing == [1.0, 1.0, 1.0] and full.patch_size == [40, 56, 40] and full.batch_size == 4
    assert full.network.features_per_stage == [16, 32, 64, 128]
    assert two.patch_size == [56, 40] and 8 <= two.batch_size <= 16 and max(two.network.features_per_stage) <= 256
    assert two.data_identifier == full.data_identifier == "3d_fullres_1.00x1.00x1.00"
    assert full.resampling.separate_axis is None and not full.anisotropic
    assert plans.profile == "cpu" and plans.planner == "default" and plans.normalization[0].scheme == "zscore"
    assert training_flops(full.network, full.patch_size, full.batch_size, 1, 3) <= CPU_FLOPS_PER_ITERATION


def test_isotropic_gpu_plan_batch_capped_by_dataset_fraction():
    plans = DefaultPlanner(hippocampus_like(), gpu_memory_gb=8, profile="gpu").plan()
    full = plans.configurations["3d_fullres"]
    assert full.network.features_per_stage == [32, 64, 128, 256]
    # 5% of 200 x 36x50x35 voxels is ~7 patches of 40x56x40
    assert full.batch_size == int(0.05 * 200 * 36 * 50 * 35 / (40 * 56 * 40))
    small = DefaultPlanner(hippocampus_like(n=3), profile="gpu").plan().configurations["3d_fullres"]
    assert small.batch_size == 2


def test_gpu_memory_budget_shrinks_patch():
    fp = make_fingerprint([(1, 1, 1)] * 50, [(300, 300, 300)] * 50)
    big = DefaultPlanner(fp, gpu_memory_gb=24, profile="gpu").plan().configurations["3d_fullres"]
    small = DefaultPlanner(fp, gpu_memory_gb=6, profile="gpu").plan().configurations["3d_fullres"]
    assert math.prod(small.patch_size) < math.prod(big.patch_size)
    assert training_memory_bytes(small.network, small.patch_size, small.batch_size, 3) <= 6e9


def test_many_classes_count_in_the_gpu_memory_estimate():
    """A 104-class CT-like dataset (sparse values up to 311) gets a smaller patch x batch than the
    same images with 2 classes, and its plan fits the budget with its 104 output channels counted."""
    spacings, shapes = [(1.5, 0.8, 0.8)] * 50, [(300, 400, 400)] * 50
    values = (0, *[2 + 3 * i for i in range(104)])
    few = DefaultPlanner(make_fingerprint(spacings, shapes, label_values=(0, 1)), gpu_memory_gb=8, profile="gpu")
    many = DefaultPlanner(make_fingerprint(spacings, shapes, label_values=values), gpu_memory_gb=8, profile="gpu")
    a, b = (p.plan().configurations["3d_fullres"] for p in (few, many))
    assert math.prod(b.patch_size) * b.batch_size < math.prod(a.patch_size) * a.batch_size
    assert training_memory_bytes(b.network, b.patch_size, b.batch_size, 105) <= 8e9
    # the outputs are what differs: 12 bytes per class and output voxel
    t = plan_topology([128] * 3, [1] * 3, 32, 320)
    extra = training_memory_bytes(t, [128] * 3, 2, 105) - training_memory_bytes(t, [128] * 3, 2, 2)
    heads = sum(128 ** 3 // 8 ** s for s in range(t.n_stages - 1))
    assert extra == pytest.approx(heads * 103 * 2 * 12)
    plans = many.plan()
    check_consistent(plans, many)
    assert plans.label_values == list(values)


def test_oriented_axes_with_a_hundred_classes():
    """Classes stacked along z in every case: z is oriented, y and x (random) are not; quick
    although every pair of 104 classes is compared."""
    rng = np.random.default_rng(0)
    centroids = [{v: [float(v), *rng.normal(size=2)] for v in range(1, 105)} for _ in range(200)]
    assert oriented_axes(centroids) == [0]
    assert oriented_axes(centroids[:5]) == []  # too few cases hold each pair
    assert oriented_axes([{1: [0.0, 0.0, 0.0]}] * 20) == []


def test_anisotropic_plan():
    planner = DefaultPlanner(acdc_like(), profile="cpu")
    plans = planner.plan()
    check_consistent(plans, planner)
    assert plans.anisotropy == pytest.approx(6.4)
    full = plans.configurations["3d_fullres"]
    assert full.anisotropic and full.resampling.separate_axis == 0 and full.resampling.separate_axis_order == 0
    assert full.network.kernel_sizes[0] == [1, 3, 3] and full.network.strides[1] == [1, 2, 2]
    hybrid = plans.configurations["3d_hybrid"]
    assert hybrid.trainer == "hybrid" and hybrid.data_identifier == full.data_identifier
    assert all(k[0] == 1 for k in hybrid.network.kernel_sizes) and all(s[0] == 1 for s in hybrid.network.strides)
    # 5 of the 10 slices, and the 2D profile's batch: more, thinner stacks than 3d_fullres's 4
    assert hybrid.patch_size[0] == 5 and hybrid.batch_size >= 8 > full.batch_size
    # it predicts with its training patch, as every configuration does
    assert hybrid.inference_patch == hybrid.patch_size
    assert all(c.inference_patch_size is None for c in plans.configurations.values())
    # uniform patch positions: edge-flush patches did not pay on ACDC (documentation/hybrid.md)
    assert all(c.edge_flush == 0.0 for c in plans.configurations.values())
    assert plans.configurations["2d"].spacing[0] == 10.0 and plans.configurations["2d"].notes


def test_anisotropic_target_spacing_takes_10th_percentile_of_coarse_axis():
    spacings = [(z, 0.8, 0.8) for z in [2.5] * 3 + [5.0] * 17]
    fp = make_fingerprint(spacings, [(40, 256, 256)] * 20)
    planner = DefaultPlanner(fp, profile="gpu")
    assert planner.target_spacing() == pytest.approx([np.percentile([2.5] * 3 + [5.0] * 17, 10), 0.8, 0.8])
    plans = planner.plan()
    assert plans.configurations["2d"].spacing[0] == 5.0  # median, slices not resampled
    assert plans.configurations["2d"].data_identifier != plans.configurations["3d_fullres"].data_identifier


def test_2d_dataset_plans_2d_only_with_rgb():
    plans = DefaultPlanner(drive_like(), profile="cpu").plan()
    assert list(plans.configurations) == ["2d"] and plans.is_2d_dataset
    c = plans.configurations["2d"]
    assert c.dim == 2 and len(c.patch_size) == 2 and all(len(k) == 2 for k in c.network.kernel_sizes)
    assert [n.scheme for n in plans.normalization] == ["rgb"] * 3
    assert c.resampling.separate_axis is None and 8 <= c.batch_size <= 16
    # three unnamed channels of a 2D dataset are colour too
    fp = drive_like()
    fp.channel_names = ["a", "b", "c"]
    assert [n.scheme for n in DefaultPlanner(fp, profile="cpu").normalization()] == ["rgb"] * 3


def test_ct_normalization_uses_fingerprint_statistics():
    ct = ChannelIntensity("CT", 1000, 100.0, 300.0, -1000, 2000, -150.0, 90.0, 1300.0, 110.0, 250.0)
    fp = make_fingerprint([(1, 1, 1)] * 4, [(60, 100, 100)] * 4, channel_names=("ct", "T2"),
                          intensity=[ct, ChannelIntensity("T2", 1, 0, 1, 0, 1, 0, 0, 1, 0, 1)])
    norm = DefaultPlanner(fp, profile="cpu").normalization()
    assert norm[0].scheme == "ct" and (norm[0].clip_low, norm[0].clip_high) == (-150.0, 1300.0)
    assert (norm[0].mean, norm[0].std) == (110.0, 250.0)
    assert norm[1].scheme == "zscore"


def test_lowres_only_when_fullres_patch_is_small():
    fp = make_fingerprint([(0.8, 0.8, 0.8)] * 30, [(400, 512, 512)] * 30, channel_names=("CT",))
    plans = DefaultPlanner(fp, profile="gpu").plan()
    full, low = plans.configurations["3d_fullres"], plans.configurations["3d_lowres"]
    assert math.prod(full.patch_size) < 0.25 * math.prod(full.median_shape)
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing))
    assert math.prod(low.patch_size) >= math.prod(low.median_shape)
    assert low.data_identifier.startswith("3d_lowres_")
    assert "3d_lowres" not in DefaultPlanner(hippocampus_like(), profile="gpu").plan().configurations


def test_plans_round_trip(tmp_path):
    plans = DefaultPlanner(acdc_like(), profile="gpu").plan()
    hybrid = plans.configurations["3d_hybrid"]
    hybrid.inference_patch_size = [2 * hybrid.patch_size[0]] + hybrid.patch_size[1:]  # a user's choice survives
    plans.save(tmp_path / "plans.json")
    assert Plans.load(tmp_path / "plans.json") == plans


def test_plans_written_before_edge_flush_load_with_uniform_patches(tmp_path):
    plans = DefaultPlanner(acdc_like(), profile="cpu").plan().to_dict()
    for c in plans["configurations"].values():
        del c["edge_flush"]
    assert all(c.edge_flush == 0.0 for c in Plans.from_dict(plans).configurations.values())


def test_an_edge_flush_outside_0_1_names_the_plans_file(tmp_path):
    plans = DefaultPlanner(acdc_like(), profile="cpu").plan()
    plans.configurations["3d_hybrid"].edge_flush = 1.5
    plans.save(tmp_path / "plans.json")
    with pytest.raises(UserError, match=r"plans\.json: configurations\.3d_hybrid\.edge_flush: 1\.5: a probability"):
        Plans.load(tmp_path / "plans.json")


def test_profile_resolution():
    import torch

    assert resolve_profile("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="profile"):
        resolve_profile("tpu")


# --- registry ---

def test_get_planner_by_name_module_and_file(tmp_path):
    assert get_planner("default") is DefaultPlanner
    assert get_planner("autoseg.planners.default:DefaultPlanner") is DefaultPlanner
    source = textwrap.dedent("""
        from autoseg.planners.default import DefaultPlanner

        class CoarsePlanner(DefaultPlanner):
            def target_spacing(self):
                return [2.0, 2.0, 2.0]

        class NotAPlanner:
            pass
    """)
    path = tmp_path / "my_planner.py"
    path.write_text(source)
    cls = get_planner(f"{path}:CoarsePlanner")
    assert issubclass(cls, DefaultPlanner) and issubclass(cls, Planner)
    plans = cls(hippocampus_like(), profile="cpu").plan()
    assert plans.configurations["3d_fullres"].spacing == [2.0, 2.0, 2.0]
    assert plans.configurations["3d_fullres"].median_shape == [18, 25, 18]
    assert plans.planner.endswith(":CoarsePlanner")
    for bad, message in [("nope", "unknown planner"), (f"{path}:Missing", "no attribute"),
                         (f"{path}:NotAPlanner", "not a subclass"), ("no_such_module_xyz:Planner", "not found"),
                         (f"{tmp_path}/absent.py:X", "does not exist")]:
        with pytest.raises(UserError, match=message):
            get_planner(bad)


# --- the example plans in documentation/examples, made from the real datasets ---

def _example(name: str) -> tuple[Fingerprint, Plans]:
    fp_path, plans_path = EXAMPLES / f"fingerprint_{name}.json", EXAMPLES / f"plans_{name}.json"
    if not fp_path.is_file():
        pytest.skip(f"{fp_path} is absent")
    return Fingerprint.load(fp_path), Plans.load(plans_path)


@pytest.mark.parametrize("name", ["Task04_Hippocampus", "ACDC", "DRIVE", "VerSe_sample"])
def test_example_plans_are_what_the_planner_makes(name):
    fp, saved = _example(name)
    planner = DefaultPlanner(fp, profile=saved.profile, gpu_memory_gb=saved.gpu_memory_gb)
    assert planner.plan() == saved
    check_consistent(saved, planner)


def test_real_hippocampus_plans():
    fp, _ = _example("Task04_Hippocampus")
    for profile in ("cpu", "gpu"):
        plans = DefaultPlanner(fp, profile=profile).plan()
        assert set(plans.configurations) == {"2d", "3d_fullres"}
        assert plans.configurations["3d_fullres"].spacing == [1.0, 1.0, 1.0]
        assert plans.configurations["2d"].spacing == [1.0, 1.0, 1.0]


def test_real_acdc_plans():
    fp, _ = _example("ACDC")
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert plans.anisotropy == pytest.approx(6.4)
    full = plans.configurations["3d_fullres"]
    assert full.network.strides[1][0] == 1 and full.network.kernel_sizes[0] == [1, 3, 3]
    assert full.network.kernel_sizes[1] == [1, 3, 3]
    assert "3d_hybrid" in plans.configurations


def test_real_drive_and_verse_plans():
    fp, _ = _example("DRIVE")
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert list(plans.configurations) == ["2d"] and len(plans.channel_names) == 3
    assert {n.scheme for n in plans.normalization} == {"rgb"}
    fp, _ = _example("VerSe_sample")
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert plans.normalization[0].scheme == "ct" and plans.label_values == [0] + list(range(16, 25))
    assert plans.normalization[0].clip_low < 0 < plans.normalization[0].clip_high


def test_oriented_axes_finds_consistent_class_order():
    """An axis where class 2 always lies after class 1 is oriented; a random order is not."""
    from autoseg.planners.default import oriented_axes

    rng = np.random.default_rng(0)
    cases = [{1: [10.0, 20.0, 20.0], 2: [10.0 + rng.normal(), 28.0, 20.0 + rng.normal()]} for _ in range(30)]
    assert oriented_axes(cases) == [1]
    # too few cases holding both classes: no decision, mirror everything
    assert oriented_axes(cases[:5]) == []
    # one class only (or no centroids at all, as in older fingerprints): nothing is oriented
    assert oriented_axes([{1: [1.0, 2.0, 3.0]}] * 30) == [] and oriented_axes([{}] * 30) == []
    # 85% agreement is below the 90% threshold
    mixed = [{1: [0.0, 0.0, 0.0], 2: [0.0, 0.0, 1.0 if i < 17 else -1.0]} for i in range(20)]
    assert oriented_axes(mixed) == []


def test_plans_mirror_only_axes_without_class_order():
    """Hippocampus-like (anterior/posterior in a fixed order along every axis): no mirroring.
    ACDC-like (right ventricle always on one side in x): 3D configurations keep z and y, 2d keeps y."""
    fp = hippocampus_like(20)
    for c in fp.cases:
        c.class_centroids = {1: [10.0, 30.0, 15.0], 2: [18.0, 12.0, 13.0]}
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert all(c.mirror_axes == [] for c in plans.configurations.values())
    fp = acdc_like(40)
    rng = np.random.default_rng(1)
    for c in fp.cases:
        lv = [5.0 + rng.normal(), 100.0 + rng.normal(), 100.0]
        c.class_centroids = {1: [lv[0] + rng.normal(), lv[1] + rng.normal(), 75.0], 3: lv}
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert plans.configurations["2d"].mirror_axes == [0]  # network axes (y, x) of the 2D slices
    assert plans.configurations["3d_fullres"].mirror_axes == [0, 1]
    # and without centroids every axis is mirrored, as nnU-Net does
    assert DefaultPlanner(acdc_like(40), profile="cpu").plan().configurations["3d_fullres"].mirror_axes == [0, 1, 2]


def test_size_scale_range_widens_only_beyond_the_default():
    from autoseg.planners.default import DEFAULT_SCALE_RANGE, size_scale_range

    rng = np.random.default_rng(0)
    homogeneous = 40.0 * rng.uniform(0.85, 1.2, 50)
    assert size_scale_range(homogeneous) is None
    # one case twice the median (ACDC's patient057 under its nominal spacing): zoom in to 0.5
    spread = np.concatenate([homogeneous, [80.0, 26.0]])
    lo, hi = size_scale_range(spread)
    assert lo == pytest.approx(np.median(spread) / 80.0, abs=1e-3) and lo < DEFAULT_SCALE_RANGE[0]
    assert hi == pytest.approx(np.median(spread) / 26.0, abs=1e-3) and hi > DEFAULT_SCALE_RANGE[1]
    # capped, and never narrower than the default on the side that needs no widening
    assert size_scale_range(np.concatenate([homogeneous, [400.0]])) == [0.5, 1.4]
    # too few cases to judge a spread
    assert size_scale_range(spread[-5:]) is None


def test_object_sizes_in_plane_and_volume():
    from autoseg.planners.default import object_sizes

    # 10 slices of 10 mm, 100 foreground voxels per slice at 2x2 mm: 20 mm in-plane
    case = CaseFingerprint("c", [10.0, 2.0, 2.0], [10, 64, 64], [10, 64, 64], [[0, 10], [0, 64], [0, 64]],
                           {0: 1000, 1: 600, 2: 400}, {1: 1, 2: 1})
    empty = CaseFingerprint("e", [1.0, 1.0, 1.0], [4, 4, 4], [4, 4, 4], [[0, 4]] * 3, {0: 64}, {})
    assert object_sizes([case, empty], in_plane=True) == pytest.approx([20.0])
    assert object_sizes([case], in_plane=False) == pytest.approx([(1000 * 40.0) ** (1 / 3)])


def test_plans_widen_scaling_for_spread_object_sizes():
    fp = acdc_like(40)
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert all(c.scale_range is None for c in plans.configurations.values())  # every heart the same size
    fp.cases[0].class_voxels = {0: 10, 1: 100, 2: 100, 3: 100}  # one heart ~3x the others in-plane
    plans = DefaultPlanner(fp, profile="cpu").plan()
    assert plans.configurations["2d"].scale_range == [0.5, 1.4]
    assert plans.configurations["3d_hybrid"].scale_range == [0.5, 1.4]
    # 3d_fullres of thick slices scales in-plane too (the volume's cube root would say 2.2x, still capped)
    assert plans.configurations["3d_fullres"].scale_range == [0.5, 1.4]


def test_real_acdc_and_hippocampus_scale_ranges():
    fp, _ = _example("ACDC")
    plans = DefaultPlanner(fp, profile="cpu").plan()
    lo, hi = plans.configurations["2d"].scale_range
    assert lo == 0.5 and 1.6 < hi < 1.7  # patient057's heart is 2.2x the median, patient037's 0.6x
    fp, _ = _example("Task04_Hippocampus")
    assert all(c.scale_range is None for c in DefaultPlanner(fp, profile="cpu").plan().configurations.values())
