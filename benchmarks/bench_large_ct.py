"""Whole-body CT prediction on the CPU: wall time and peak memory as the volume and the classes grow, autoseg vs nnU-Net v2.

    python benchmarks/bench_large_ct.py                        # the grid below, both tools
    python benchmarks/bench_large_ct.py --depths 75 --classes 2 --tools autoseg    # a quick look

The image is ``benchmarks/ct_phantom.py``'s seeded whole-body phantom: int16 HU on 512x512 slices
of 0.8 x 0.8 mm, 1.5 mm apart; the full volume is 600 slices (512x512x600, 157 M voxels), 1/2 and
1/8 of it are its first 300 and 75 slices. K classes: background plus K - 1 structures.

Identical network for both tools, untrained (seeded random weights: the cost of predicting does
not depend on what the weights learned): nnU-Net's PlainConvUNet with ``--features`` per stage,
3x3x3 kernels, two convolutions per stage, instance norm, leaky ReLU, a ``--patch`` cube at
1.5 mm isotropic spacing (what TotalSegmentator's 1.5 mm models use), CT normalisation with
the same clip window and statistics. autoseg's plans carry the same topology
(``autoseg.networks.unet`` builds the same layers). Both models are written by this script:
nnU-Net's as a trained model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth built
by nnU-Net's own trainer class in its own environment), autoseg's as a workspace model folder.

Timed commands (one case, a fresh output folder, no test-time mirroring, CPU):

* nnU-Net: ``nnUNetv2_predict_from_modelfolder -i IN -o OUT -m MODEL -f 0 --disable_tta -device cpu``
* autoseg: ``autoseg predict -i IN -o OUT -d LargeCT -c 3d_fullres -f 0 --no-tta --device cpu --workspace WS``

Wall time includes start-up, reading, preprocessing, the sliding window, export and writing.
Peak memory is the whole process tree's RSS and PSS (``harness.run_measured``). A run whose tree
passes ``--memory-limit-gb`` (default 20 GB: the 24 GB machine would otherwise start killing
processes at random) is stopped and recorded as out of memory at that size. The label maps of
the two tools are compared voxel by voxel where both finished (same network weights are not
shared, so this is agreement of two random models: reported, not asserted).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ct_phantom  # noqa: E402
import harness  # noqa: E402

BENCHMARK = "large_ct"
SPACING = (1.5, 0.8, 0.8)  # z, y, x mm
MODEL_SPACING = [1.5, 1.5, 1.5]
CLIP = (-1000.0, 1500.0)
MEAN, STD = 100.0, 400.0
DATASET = "LargeCT"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[75, 300, 600],
                   help="slices of the 512x512 phantom (default 75 300 600: 1/8, 1/2, full)")
    p.add_argument("--classes", type=int, nargs="+", default=[2, 20, 105],
                   help="numbers of classes K, background included (default 2 20 105)")
    p.add_argument("--grid", choices=["cross", "full"], default="cross",
                   help="cross (default): every depth at the largest K, every K at the largest depth; full: all pairs")
    p.add_argument("--tools", nargs="+", choices=["nnunet", "autoseg"], default=["nnunet", "autoseg"])
    p.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--memory-limit-gb", type=float, default=20.0)
    p.add_argument("--timeout-min", type=float, default=60.0)
    p.add_argument("--scratch", type=Path, default=None, help="work folder (default ~/.cache/autoseg-bench/large_ct)")
    p.add_argument("--nnunet-venv", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None, help="JSON lines of every run (default SCRATCH/results.jsonl)")
    return p.parse_args(argv)


def pairs(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.grid == "full":
        return [(d, k) for d in args.depths for k in args.classes]
    top_d, top_k = max(args.depths), max(args.classes)
    chosen = [(d, top_k) for d in sorted(args.depths)] + [(top_d, k) for k in sorted(args.classes) if k != top_k]
    return list(dict.fromkeys(chosen))


# --------------------------------------------------------------------------- the case


def write_case(scratch: Path, depth: int, k: int) -> Path:
    """``IN/ct_0000.nii.gz``: the first ``depth`` slices of the full phantom with ``k - 1`` structures."""
    folder = scratch / "cases" / f"d{depth}_k{k}"
    image_file = folder / "ct_0000.nii.gz"
    if not image_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        image, _ = ct_phantom.make_phantom(shape=(max(depth, 600), 512, 512), spacing=SPACING, num_labels=k - 1, seed=0)
        ct_phantom.write_case(image[:depth], None, SPACING, image_file)
    return folder


# --------------------------------------------------------------------------- the models


def label_names(k: int) -> dict[str, int]:
    return {"background": 0, **{f"structure_{i:03d}": i for i in range(1, k)}}


def autoseg_model(scratch: Path, k: int, features: list[int], patch: int) -> Path:
    """A workspace whose results hold an untrained ``unet__3d_fullres`` fold 0; returns the workspace."""
    import torch

    from autoseg.networks import build_network
    from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans

    ws = scratch / f"autoseg_k{k}"
    folder = ws / DATASET / "results" / "unet__3d_fullres"
    if (folder / "fold_0" / "checkpoint_final.pt").is_file():
        return ws
    n = len(features)
    topo = NetworkTopology(list(features), [[3, 3, 3]] * n, [[1, 1, 1]] + [[2, 2, 2]] * (n - 1), 2)
    cfg = ConfigurationPlan(name="3d_fullres", dim=3, data_identifier="large_ct_3d", spacing=MODEL_SPACING,
                            median_shape=[600, 273, 273], patch_size=[patch] * 3, batch_size=2, network=topo)
    names = label_names(k)
    plans = Plans(1, DATASET, "default", "cpu", 8, ["CT"], list(names.values()), list(names),
                  [ChannelNormalization("ct", clip_low=CLIP[0], clip_high=CLIP[1], mean=MEAN, std=STD)],
                  {"3d_fullres": cfg})
    plans.save(ws / DATASET / "plans.json")
    plans.save(folder / "plans.json")
    torch.manual_seed(0)
    net = build_network(plans, cfg)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "trainer": "unet", "architecture": "unet", "configuration": "3d_fullres", "fold": "0",
                "network": net.state_dict()}, folder / "fold_0" / "checkpoint_final.pt")
    return ws


def nnunet_plans(k: int, features: list[int], patch: int) -> dict:
    n = len(features)
    resample = "resample_data_or_seg_to_shape"
    kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": f"Dataset990_{DATASET}", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(SPACING), "original_median_shape_after_transp": [600, 512, 512],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [patch] * 3, "median_image_size_in_voxels": [600, 273, 273],
            "spacing": MODEL_SPACING, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": resample, "resampling_fn_data_kwargs": kwargs,
            "resampling_fn_seg": resample, "resampling_fn_seg_kwargs": {**kwargs, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": resample, "resampling_fn_probabilities_kwargs": {**kwargs, "order": 1},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                    "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        # CTNormalization clips to the 0.5/99.5 percentiles and z-scores with mean/std: autoseg's numbers
        "foreground_intensity_properties_per_channel": {"0": {
            "max": CLIP[1], "mean": MEAN, "median": MEAN, "min": CLIP[0],
            "percentile_00_5": CLIP[0], "percentile_99_5": CLIP[1], "std": STD}},
    }


_BUILD_NNUNET_CHECKPOINT = r"""
import json, sys, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
folder = sys.argv[1]
plans = json.load(open(f"{folder}/plans.json")); dataset = json.load(open(f"{folder}/dataset.json"))
pm = PlansManager(plans); cm = pm.get_configuration("3d_fullres")
heads = pm.get_label_manager(dataset).num_segmentation_heads
torch.manual_seed(0)
net = nnUNetTrainer.build_network_architecture(pm, cm, 1, heads, enable_deep_supervision=False)
print(sum(p.numel() for p in net.parameters()))
torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres", "fold": 0, "plans": plans, "dataset_json": dataset},
            "inference_allowed_mirroring_axes": (0, 1, 2)}, f"{folder}/fold_0/checkpoint_final.pth")
"""


def nnunet_model(scratch: Path, venv: Path, k: int, features: list[int], patch: int) -> tuple[Path, int]:
    """nnU-Net's trained-model folder with an untrained fold 0; returns it and the network's parameter count."""
    folder = scratch / f"nnunet_k{k}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    count_file = folder / "parameters.txt"
    if not count_file.is_file():
        (folder / "fold_0").mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(nnunet_plans(k, features, patch), indent=1))
        (folder / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "CT"}, "labels": label_names(k), "numTraining": 1, "file_ending": ".nii.gz"}))
        shutil.copyfile(folder / "plans.json", folder / "plans.json.bak")
        out = subprocess.run([str(venv / "bin" / "python"), "-c", _BUILD_NNUNET_CHECKPOINT, str(folder)],
                             check=True, capture_output=True, text=True, encoding="utf-8", errors="replace")
        count_file.write_text(out.stdout.strip().splitlines()[-1])
    return folder, int(count_file.read_text())


def autoseg_parameters(ws: Path) -> int:
    import torch

    state = torch.load(ws / DATASET / "results" / "unet__3d_fullres" / "fold_0" / "checkpoint_final.pt",
                       weights_only=True)
    return sum(v.numel() for key, v in state["network"].items() if not key.endswith(("running_mean", "running_var",
                                                                                     "num_batches_tracked")))


# --------------------------------------------------------------------------- running


def run_tool(tool: str, case: Path, out: Path, model: Path, venv: Path | None, logs: Path,
             args: argparse.Namespace, folders: harness.NnunetFolders) -> harness.RunResult:
    if out.exists():
        shutil.rmtree(out)
    if tool == "nnunet":
        command = [harness.nnunet_command(venv, "nnUNetv2_predict_from_modelfolder"), "-i", case, "-o", out,
                   "-m", model, "-f", "0", "--disable_tta", "-device", "cpu"]
        env = harness.nnunet_env(folders, venv)
    else:
        command = [sys.executable, "-m", "autoseg", "predict", "-i", case, "-o", out, "-d", DATASET,
                   "-c", "3d_fullres", "-f", "0", "--no-tta", "--device", "cpu", "--workspace", model]
        env = None
    return harness.run_measured(command, benchmark=BENCHMARK, tool=tool, env=env,
                                log_file=logs / f"{tool}_{case.name}.log", timeout_s=args.timeout_min * 60,
                                memory_limit_bytes=int(args.memory_limit_gb * 2**30))


def agreement(a: Path, b: Path) -> float | None:
    import numpy as np

    from autoseg.dataset.imageio import read_label

    fa, fb = a / "ct.nii.gz", b / "ct.nii.gz"
    if not (fa.is_file() and fb.is_file()):
        return None
    return float(np.mean(read_label(fa)[0] == read_label(fb)[0]))


def describe(r: harness.RunResult | None) -> tuple[str, str, str]:
    if r is None:
        return "-", "-", "-"
    gb = f"{r.peak_rss_bytes / 2**30:.2f}"
    if r.extra.get("out_of_memory"):
        return f"out of memory after {r.wall_s:.0f} s", f"> {gb}", f"{r.peak_pss_bytes / 2**30:.2f}"
    if r.returncode != 0:
        return f"failed (exit {r.returncode}) after {r.wall_s:.0f} s", gb, f"{r.peak_pss_bytes / 2**30:.2f}"
    return f"{r.wall_s:.0f}", gb, f"{r.peak_pss_bytes / 2**30:.2f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    scratch = (args.scratch or Path.home() / ".cache" / "autoseg-bench" / BENCHMARK).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    logs = scratch / "logs"
    results_file = args.results or scratch / "results.jsonl"
    venv = harness.nnunet_venv(args.nnunet_venv) if "nnunet" in args.tools else None
    folders = harness.NnunetFolders.under(scratch).make()
    print(json.dumps(harness.machine_info()))
    rows = []
    for depth, k in pairs(args):
        case = write_case(scratch, depth, k)
        got: dict[str, harness.RunResult] = {}
        counts = {}
        for tool in args.tools:
            if tool == "nnunet":
                model, counts[tool] = nnunet_model(scratch, venv, k, args.features, args.patch)
            else:
                model = autoseg_model(scratch, k, args.features, args.patch)
                counts[tool] = autoseg_parameters(model)
            harness.warm_page_cache(case)
            r = run_tool(tool, case, scratch / "out" / f"{tool}_d{depth}_k{k}", model, venv, logs, args, folders)
            got[tool] = r
            harness.append_result(results_file, r, depth=depth, classes=k, parameters=counts[tool])
            print(f"{tool:8s} {depth:4d} slices K={k:3d}: {describe(r)[0]} s, peak RSS {describe(r)[1]} GB "
                  f"(log {r.log_file})", flush=True)
        if len(set(counts.values())) > 1:
            print(f"warning: parameter counts differ: {counts}")
        same = agreement(scratch / "out" / f"nnunet_d{depth}_k{k}", scratch / "out" / f"autoseg_d{depth}_k{k}")
        rows.append((depth, k, got.get("nnunet"), got.get("autoseg"), same))

    header = ["slices (512x512)", "K", "nnU-Net s", "nnU-Net RSS GB", "autoseg s", "autoseg RSS GB",
              "time autoseg/nnU-Net", "RSS autoseg/nnU-Net"]
    table = []
    for depth, k, nn, au, _ in rows:
        ok = nn is not None and au is not None and nn.returncode == 0 and au.returncode == 0
        table.append([depth, k, describe(nn)[0], describe(nn)[1], describe(au)[0], describe(au)[1],
                      f"{au.wall_s / nn.wall_s:.2f}" if ok else "-",
                      f"{au.peak_rss_bytes / nn.peak_rss_bytes:.2f}" if ok else "-"])
    print()
    print(harness.markdown_table(header, table))


if __name__ == "__main__":
    main()
