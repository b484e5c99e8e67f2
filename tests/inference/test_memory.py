"""Bounded-memory inference: float16 / on-disk accumulation, class-streamed export, argmax and files.

Every streamed result is checked against the whole-array path it replaces (to_original_geometry,
average_probabilities, segmentation_from_probabilities, entropy_map, np.save): equal bit for bit.
"""
import io
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.atomic import save_npy
from autoseg.dataset.imageio import Geometry, read_image
from autoseg.errors import UserError
from autoseg.inference import sliding_window
from autoseg.inference.export import ExportMember, entropy_map, export_case, to_original_geometry
from autoseg.inference.folder import predict_folder
from autoseg.inference.predictor import Predictor, finish, infer, predict_case, prepare
from autoseg.inference.sliding_window import predict_sliding_window
from autoseg.postprocessing.ensemble import (ClassFileWriter, ProbabilityFile, RunningArgmax, average_probabilities,
                                             ensemble_folders, index_dtype, segmentation_from_probabilities,
                                             segmentation_from_probability_files)
from autoseg.preprocessing.pipeline import preprocess_case

from tests.inference.test_export import framed_case, make_plans
from tests.inference.test_sliding_window import expected_softmax, pointwise_net


def random_probabilities(k: int, shape, seed: int, dtype=np.float32, smooth: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k,) + tuple(shape)).astype(np.float32)
    if smooth:  # "realistic": large blobs, confident inside, hesitant at their borders
        from scipy import ndimage

        logits = ndimage.gaussian_filter(logits, sigma=(0, 2, 2, 2)) * 20
    return torch.softmax(torch.from_numpy(logits), 0).numpy().astype(dtype)


# ------------------------------------------------------------------ argmax one class at a time


@pytest.mark.parametrize("k,dtype", [(3, np.float32), (7, np.float16), (300, np.float32)])
def test_running_argmax_equals_argmax_with_ties(k, dtype):
    probs = random_probabilities(k, (3, 9, 11), seed=k, dtype=dtype)
    probs[:, 0] = probs[:, 0].round(1)  # many exact ties; np.argmax keeps the lowest index
    probs[:, 1, :3] = 1.0 / k  # every class tied
    run = RunningArgmax(probs.shape[1:], k)
    for c in range(k):
        run.update(probs[c])
    assert run.index.dtype == index_dtype(k) == (np.uint8 if k <= 256 else np.uint16)
    np.testing.assert_array_equal(run.index, np.argmax(probs, 0))
    values = list(range(0, 2 * k, 2))
    np.testing.assert_array_equal(run.labels(values), segmentation_from_probabilities(probs, values))
    assert run.labels(values).dtype == segmentation_from_probabilities(probs, values).dtype


def test_running_argmax_refuses_misuse():
    run = RunningArgmax((2, 2, 2), 2)
    with pytest.raises(ValueError, match="shape"):
        run.update(np.zeros((2, 2, 3), np.float32))
    run.update(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="1 of 2"):
        run.labels([0, 1])


# ------------------------------------------------------------------ probabilities files class by class


def test_class_file_writer_is_bytes_of_np_save_and_atomic(tmp_path):
    probs = random_probabilities(5, (7, 6, 9), seed=0)
    box = (slice(1, 5), slice(0, 6), slice(2, 8))
    whole = np.zeros_like(probs)
    whole[0] = 1.0
    whole[(slice(None),) + box] = probs[(slice(None),) + box]
    reference = io.BytesIO()
    np.save(reference, whole.astype(np.float16), allow_pickle=False)
    path = tmp_path / "case_probabilities.npy"
    with ClassFileWriter(path, 5, probs.shape[1:]) as w:
        for c in range(5):
            w.write_box(probs[(c,) + box], box, 1.0 if c == 0 else 0.0)
        assert not path.exists()  # only complete files carry the name
    assert path.read_bytes() == reference.getvalue()
    f = ProbabilityFile(path)
    assert f.shape == probs.shape and f.dtype == np.float16
    np.testing.assert_array_equal(f.read_class(3), whole[3].astype(np.float16))

    with pytest.raises(ValueError, match="2 of 5"):
        with ClassFileWriter(tmp_path / "short.npy", 5, probs.shape[1:]) as w:
            w.write(probs[0])
            w.write(probs[1])
    with pytest.raises(RuntimeError):
        with ClassFileWriter(tmp_path / "killed.npy", 5, probs.shape[1:]) as w:
            w.write(probs[0])
            raise RuntimeError("killed mid-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_probabilities.npy"]  # no partial left


def test_probability_file_names_a_bad_file(tmp_path):
    bad = tmp_path / "bad_probabilities.npy"
    save_npy(bad, np.zeros((3, 4, 5, 6), np.float16))
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(UserError, match="bad_probabilities.npy: truncated"):
        ProbabilityFile(bad)
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(UserError, match="text.npy: not a readable"):
        ProbabilityFile(tmp_path / "text.npy")


def test_ensembling_files_class_by_class_equals_the_whole_arrays(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"m{i}.npy")
        save_npy(files[-1], random_probabilities(4, (6, 7, 8), seed=i, smooth=i == 1).astype(np.float16))
    values = [0, 3, 7, 9]
    mean = average_probabilities([np.load(f) for f in files])
    seg = segmentation_from_probability_files(files, values, save_mean=tmp_path / "mean.npy")
    np.testing.assert_array_equal(seg, segmentation_from_probabilities(mean, values))
    np.testing.assert_array_equal(np.load(tmp_path / "mean.npy"), mean.astype(np.float16))
    save_npy(tmp_path / "other.npy", np.zeros((4, 6, 7, 9), np.float16))
    with pytest.raises(UserError, match="other.npy: probabilities of shape"):
        segmentation_from_probability_files([files[0], tmp_path / "other.npy"], values)


# ------------------------------------------------------------------ the export, streamed


def _preprocessed_case(plans, spacing, seed=0, k=3, smooth=True):
    image, _ = framed_case(shape=(14, 20, 18), seed=seed)
    cfg = next(iter(plans.configurations.values()))
    geometry = Geometry(tuple(spacing), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)
    data, _, props = preprocess_case(image, None, geometry, plans, cfg)
    probs = random_probabilities(k, data.shape[1:], seed=seed, smooth=smooth).astype(np.float16)
    return probs, props, cfg


def _whole_array_path(members, plans, label_values):
    mean = average_probabilities(to_original_geometry(p, props, plans, cfg) for p, props, cfg in members)
    return mean, segmentation_from_probabilities(mean, label_values)


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("spacing,separate_axis", [((1.0, 1.0, 1.0), None), ((3.0, 1.0, 1.0), 0)])
def test_export_case_equals_the_whole_array_path(tmp_path, smooth, spacing, separate_axis):
    values = (0, 16, 24, 30, 31)
    plans = make_plans((1.5, 0.7, 0.7) if separate_axis is not None else (1.3, 0.9, 1.1), label_values=values,
                       separate_axis=separate_axis)
    members = [_preprocessed_case(plans, spacing, seed=s, k=len(values), smooth=smooth) for s in (0, 1)]
    # the second member saw a smaller crop box: outside it, its probabilities are background's
    p1, props1, cfg1 = members[1]
    props1 = dict(props1, crop_bbox=[[lo + 1, hi] for lo, hi in props1["crop_bbox"]],
                  shape_after_crop=[s - 1 for s in props1["shape_after_crop"]])
    members[1] = (p1, props1, cfg1)
    for chosen in (members[:1], members):
        mean, seg = _whole_array_path(chosen, plans, values)
        out = tmp_path / f"{len(chosen)}_probabilities.npy"
        exported = export_case([ExportMember(p, props, cfg) for p, props, cfg in chosen], values,
                               probabilities_file=out, keep_probabilities=True, entropy=True)
        np.testing.assert_array_equal(exported.segmentation, seg)
        assert exported.segmentation.dtype == seg.dtype
        np.testing.assert_array_equal(exported.probabilities, mean)
        np.testing.assert_array_equal(exported.entropy, entropy_map(mean))
        reference = tmp_path / "reference.npy"
        save_npy(reference, mean.astype(np.float16))
        assert out.read_bytes() == reference.read_bytes()  # what write_case_outputs wrote before
        # nothing asked for: nothing built
        plain = export_case([ExportMember(p, props, cfg) for p, props, cfg in chosen], values)
        assert plain.probabilities is None and plain.entropy is None
        np.testing.assert_array_equal(plain.segmentation, seg)


def test_export_memory_does_not_grow_with_the_number_of_classes():
    plans = make_plans((1.0, 1.0, 1.0))
    shape = (24, 48, 48)
    props = {"original_shape": list(shape), "shape_after_crop": list(shape), "crop_bbox": [[0, s] for s in shape],
             "original_spacing": [1.0] * 3, "target_spacing": [1.0] * 3}
    cfg = plans.configuration("3d_fullres")
    volume = int(np.prod(shape)) * 4
    peaks = {}
    for k in (4, 64):
        probs = random_probabilities(k, shape, seed=k).astype(np.float16)
        tracemalloc.start()
        export_case([ExportMember(probs, props, cfg)], list(range(k)))
        peaks[k] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    whole = 64 * volume
    assert peaks[64] < 6 * volume < whole / 10, (peaks, volume)  # a few volumes, not K of them
    assert peaks[64] < 1.5 * peaks[4]


# ------------------------------------------------------------------ the sliding window


@pytest.fixture
def float16_accumulator(monkeypatch):
    monkeypatch.setattr(sliding_window, "FLOAT16_ACCUMULATOR_BYTES", 0)


@pytest.mark.parametrize("dim,shape,patch", [(3, (1, 19, 23, 17), (8, 8, 8)), (3, (1, 5, 6, 7), (8, 8, 8)),
                                             (2, (2, 5, 11, 30), (16, 16))])
def test_float16_accumulator_above_the_threshold(monkeypatch, dim, shape, patch):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    net = pointwise_net(dim, in_ch=shape[0], k=4)
    exact = expected_softmax(net, data, dim)
    small = predict_sliding_window(net, data, patch, dim=dim, num_classes=4, tta=False)
    assert small.dtype == torch.float32
    bytes32 = 4 * int(np.prod(shape[1:])) * 4
    monkeypatch.setattr(sliding_window, "FLOAT16_ACCUMULATOR_BYTES", bytes32 - 1)
    big = predict_sliding_window(net, data, patch, dim=dim, num_classes=4, tta=False)
    assert big.dtype == torch.float16 and big.shape == small.shape and big.is_contiguous()
    torch.testing.assert_close(big.float(), exact, atol=2e-3, rtol=0)
    monkeypatch.setattr(sliding_window, "FLOAT16_ACCUMULATOR_BYTES", bytes32)
    assert predict_sliding_window(net, data, patch, dim=dim, num_classes=4, tta=False).dtype == torch.float32


def test_float16_accumulator_keeps_the_tile_corners(float16_accumulator):
    # a 48^3 gaussian's corner weight is ~1e-10, below float16's smallest number (6e-8): a float16
    # weighted sum would be 0 there
    assert float(sliding_window.gaussian_importance_map((48, 48, 48)).min()) < 1e-8
    data = np.random.default_rng(1).normal(size=(1, 50, 50, 50)).astype(np.float32)
    net = pointwise_net(3)
    out = predict_sliding_window(net, data, (48, 48, 48), dim=3, num_classes=3, tta=False, tile_batch_size=8)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), expected_softmax(net, data, 3), atol=2e-3, rtol=0)


class Blobby(nn.Module):
    """Position-dependent logits: every tile differs, so the running mean really averages."""

    def __init__(self, k: int):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, k, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * 3


def test_disk_accumulator_equals_the_memory_one(monkeypatch, tmp_path, float16_accumulator):
    data = np.random.default_rng(2).normal(size=(1, 13, 17, 15)).astype(np.float32)
    net = Blobby(5).eval()
    in_memory = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=5, tta=True)
    monkeypatch.setattr(sliding_window, "DISK_ACCUMULATOR_BYTES", 0)
    scratch = tmp_path / "scratch"
    on_disk = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=5, tta=True, scratch_dir=scratch)
    assert on_disk.dtype == torch.float16
    assert torch.equal(on_disk, in_memory)
    assert list(scratch.iterdir()) == []  # the file is unlinked at once: its space goes with the tensor
    torch.testing.assert_close(on_disk.float().sum(0), torch.ones(on_disk.shape[1:]), atol=3e-3, rtol=0)


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


def test_many_classes_take_smaller_forward_passes(monkeypatch):
    data = np.random.default_rng(3).normal(size=(1, 8, 12, 8)).astype(np.float32)
    net = Counting(Blobby(6).eval())
    whole = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=6, tta=True, tile_batch_size=2)
    assert net.batch_sizes == [16]  # two tiles x eight mirrorings, one pass
    one_copy = 2 * 6 * 8 ** 3 * 4  # float32 logits of the two tiles
    monkeypatch.setattr(sliding_window, "TILE_OUTPUT_BYTES", 3 * one_copy)
    net.batch_sizes.clear()
    split = predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=6, tta=True, tile_batch_size=2)
    assert net.batch_sizes == [6, 6, 4]  # three mirrorings of the two tiles per pass
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=0)
    monkeypatch.setattr(sliding_window, "TILE_OUTPUT_BYTES", one_copy // 2)
    net.batch_sizes.clear()
    predict_sliding_window(net, data, (8, 8, 8), dim=3, num_classes=6, tta=False, tile_batch_size=None)
    assert net.batch_sizes == [1, 1]  # the default batch of 4 tiles halves until its logits fit (or 1)


# ------------------------------------------------------------------ the whole case path


def test_finish_builds_probabilities_only_when_asked(setup, tmp_path):
    raw, _, model = setup
    image, geometry = read_image(raw / "imagesTr" / "case_000.nii.gz")
    predictor = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=False, precision="fp32")
    inferred = infer([predictor], prepare([predictor], image, geometry))
    # the path before: the whole (K, Z0, Y0, X0) array, argmax over it
    whole = average_probabilities(predictor.export(p, props) for p, props in inferred)
    plain = finish([predictor], inferred)
    assert plain.probabilities is None and plain.entropy is None and plain.probabilities_file is None
    np.testing.assert_array_equal(plain.segmentation, segmentation_from_probabilities(whole, predictor.label_values))
    target = tmp_path / "case_000_probabilities.npy"
    full = finish([predictor], inferred, probabilities=target, entropy=True)
    assert full.probabilities is None and full.probabilities_file == target
    np.testing.assert_array_equal(np.load(target), whole.astype(np.float16))
    np.testing.assert_array_equal(full.entropy, entropy_map(whole))
    kept = predict_case([predictor], image, geometry, probabilities=True)
    np.testing.assert_array_equal(kept.probabilities, whole)
    np.testing.assert_array_equal(predictor.predict_probabilities(image, geometry), whole)


def test_predict_folder_and_ensemble_with_a_float16_accumulator(setup, tmp_path, monkeypatch):
    raw, _, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=True, precision="fp32")
    normal = tmp_path / "float32"
    predict_folder([predictor], raw / "imagesTr", normal, save_probabilities=True, uncertainty=True)
    monkeypatch.setattr(sliding_window, "FLOAT16_ACCUMULATOR_BYTES", 0)
    monkeypatch.setattr(sliding_window, "DISK_ACCUMULATOR_BYTES", 0)
    small = tmp_path / "float16"
    predict_folder([predictor], raw / "imagesTr", small, save_probabilities=True, uncertainty=True)
    for cid in ("case_000", "case_001", "case_002"):
        a, b = np.load(normal / f"{cid}_probabilities.npy"), np.load(small / f"{cid}_probabilities.npy")
        assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=3e-3)
        assert (small / f"{cid}_entropy.nii.gz").is_file() and (small / f"{cid}.nii.gz").is_file()
    # the saved probabilities ensemble class by class into the same labels as the whole arrays
    ens = tmp_path / "ensemble"
    ensemble_folders([normal, small], ens, save_probabilities=True, progress=False)
    mean = average_probabilities([np.load(normal / "case_001_probabilities.npy"),
                                  np.load(small / "case_001_probabilities.npy")])
    from autoseg.dataset.imageio import read_label

    np.testing.assert_array_equal(read_label(ens / "case_001.nii.gz")[0],
                                  segmentation_from_probabilities(mean, [0, 1, 2]))
    np.testing.assert_array_equal(np.load(ens / "case_001_probabilities.npy"), mean.astype(np.float16))


# ------------------------------------------------------------------ streaming z rows


@pytest.mark.parametrize("dim,shape,patch,context", [
    (3, (1, 37, 30, 28), (16, 16, 16), 1),
    (3, (1, 6, 30, 28), (16, 16, 16), 1),  # thinner than the patch: padded
    (2, (1, 9, 40, 33), (16, 16), 1),
    (2, (1, 9, 20, 17), (16, 16), 3),  # 2.5D: neighbouring slices as channels
])
@pytest.mark.parametrize("float16", [False, True])
def test_streamed_rows_equal_the_whole_accumulator(monkeypatch, dim, shape, patch, context, float16):
    if float16:
        monkeypatch.setattr(sliding_window, "FLOAT16_ACCUMULATOR_BYTES", 0)
    torch.manual_seed(0)
    conv = (nn.Conv3d(1, 5, 3, padding=1) if dim == 3 else nn.Conv2d(context, 5, 3, padding=1))
    conv.context_slices = context
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    whole = predict_sliding_window(conv, x, patch, dim, 5, tta=True).float().numpy()
    got = np.full_like(whole, np.nan)
    runs = []

    def on_rows(r0, r1, rows):
        assert r0 == (runs[-1][1] if runs else 0)  # consecutive, each row once
        runs.append((r0, r1))
        for c in range(5):
            got[c, r0:r1] = rows(c)

    assert predict_sliding_window(conv, x, patch, dim, 5, tta=True, on_rows=on_rows) is None
    assert runs[-1][1] == shape[1]
    np.testing.assert_array_equal(got, whole)
    if dim == 3 and shape[1] > 2 * patch[0]:
        assert len(runs) > 2  # rows left as the tiles moved on, not all at the end


@pytest.mark.parametrize("spacing,separate_axis,image_spacing", [
    ((1.0, 1.0, 1.0), None, (1.0, 1.0, 1.0)),
    ((1.3, 0.7, 0.9), None, (1.0, 1.0, 1.0)),
    ((0.5, 1.0, 1.0), None, (1.0, 1.0, 1.0)),  # more rows than the image
    ((4.0, 0.8, 0.8), 0, (2.5, 1.0, 1.0)),  # thick slices, nearest along z
    ((1.0, 1.5, 1.0), 1, (1.0, 1.0, 1.0)),
])
def test_row_export_equals_export_case(spacing, separate_axis, image_spacing):
    from autoseg.inference.export import RowExport

    values = (0, 3, 7)
    plans = make_plans(spacing, label_values=values, separate_axis=separate_axis)
    cfg = next(iter(plans.configurations.values()))
    image, _ = framed_case(shape=(30, 26, 22), label_values=values)
    geometry = Geometry(image_spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)
    data, _, props = preprocess_case(image, None, geometry, plans, cfg)
    torch.manual_seed(1)
    conv = nn.Conv3d(1, 3, 3, padding=1)
    probs = predict_sliding_window(conv, data, [8, 8, 8], 3, 3, tta=False)
    reference = export_case([ExportMember(probs, props, cfg)], values, entropy=True)
    rows = RowExport(props, cfg, values, entropy=True)
    predict_sliding_window(conv, data, [8, 8, 8], 3, 3, tta=False, on_rows=rows)
    got = rows.result()
    assert set(np.unique(reference.segmentation)) == set(values)  # every label and the crop's outside
    np.testing.assert_array_equal(got.segmentation, reference.segmentation)
    assert got.segmentation.dtype == reference.segmentation.dtype
    np.testing.assert_array_equal(got.entropy, reference.entropy)


def test_large_cases_are_streamed_with_the_same_labels(setup, tmp_path, monkeypatch):
    from autoseg.inference import predictor as predictor_module

    raw, _, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=True, precision="fp32")
    image, geometry = read_image(raw / "imagesTr" / "case_000.nii.gz")
    prepared = prepare([predictor], image, geometry)
    assert not predictor_module.streams([predictor], prepared)  # small: the whole-array path
    exact = tmp_path / "exact"
    predict_folder([predictor], raw / "imagesTr", exact, uncertainty=True)
    monkeypatch.setattr(predictor_module, "STREAM_BYTES", 0)
    assert predictor_module.streams([predictor], prepared)
    assert not predictor_module.streams([predictor], prepared, probabilities=True)  # they are wanted
    assert not predictor_module.streams([predictor, predictor], prepared * 2)  # an ensemble of configurations
    streamed = tmp_path / "streamed"
    calls = []
    monkeypatch.setattr(predictor_module, "infer", lambda *a: calls.append(a))  # the whole-array path is not taken
    predict_folder([predictor], raw / "imagesTr", streamed, uncertainty=True)
    assert not calls
    from autoseg.dataset.imageio import read_label

    for cid in ("case_000", "case_001", "case_002"):
        img, geo = read_image(raw / "imagesTr" / f"{cid}.nii.gz")
        data, props = prepare([predictor], img, geo)[0]
        # the whole-array path on float32 probabilities: bit for bit what streaming gives
        reference = export_case([ExportMember(predictor.predict_preprocessed(data), props, predictor.config)],
                                predictor.label_values, entropy=True)
        got = read_label(streamed / f"{cid}.nii.gz")[0]
        np.testing.assert_array_equal(got, reference.segmentation)
        np.testing.assert_array_equal(read_image(streamed / f"{cid}_entropy.nii.gz")[0][0], reference.entropy)
        # the whole-array path rounds the probabilities to float16 while they wait for export: a
        # random network's near-ties may flip a voxel or two
        assert np.mean(got != read_label(exact / f"{cid}.nii.gz")[0]) < 5e-3
    assert (streamed / "volumes.csv").read_text().splitlines()[0] == (exact / "volumes.csv").read_text().splitlines()[0]
    api = predict_case([predictor], image, geometry)
    np.testing.assert_array_equal(api.segmentation, read_label(streamed / "case_000.nii.gz")[0])


def test_streaming_memory_does_not_grow_with_classes_times_volume(monkeypatch):
    """The accumulator spans a ring of rows; the export holds a run of rows of one class."""
    from autoseg.inference import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "STREAM_BYTES", 0)
    allocated = []
    zeros = torch.zeros

    def recording_zeros(*args, **kwargs):
        out = zeros(*args, **kwargs)
        allocated.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(torch, "zeros", recording_zeros)
    shape, k = (128, 40, 40), 48
    plans = make_plans((1.0, 1.0, 1.0), label_values=tuple(range(k)), patch=(8, 8, 8))
    torch.manual_seed(0)
    predictor = Predictor(plans, "3d_fullres", [nn.Conv3d(1, k, 1)], device="cpu", tta=False, precision="fp32")
    image = np.random.default_rng(0).random((1,) + shape, dtype=np.float32)
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)
    tracemalloc.start()
    predict_case([predictor], image, geometry)
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    volume = int(np.prod(shape)) * 4
    whole = k * volume  # the (K, Z, Y, X) float32 accumulator of the whole-array path
    assert max(allocated) <= k * 12 * 40 * 40 * 4 < whole / 8  # 12 rows: the tiles' reach (8) and a step (4)
    assert numpy_peak < 4 * volume < whole / 10, (numpy_peak, volume)  # the label map and a run of rows
