"""benchmarks/harness.py: tree-wide memory measurement, MSD -> nnU-Net conversion, result table.

The harness never needs nnU-Net itself for these tests; the baseline environment is not required.
"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402

from autoseg.synthetic import make_dataset  # noqa: E402

# The parent holds almost nothing; a child it starts allocates ~300 MB and keeps it 1.0 s.
CHILD_ALLOCATES = textwrap.dedent("""
    import subprocess, sys
    child = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    sys.exit(subprocess.call([sys.executable, "-c", child]))
""")


def test_peak_memory_counts_the_child_process(tmp_path):
    log = tmp_path / "run.log"
    result = harness.run_measured([sys.executable, "-c", CHILD_ALLOCATES], benchmark="t", tool="x", log_file=log)
    assert result.ok, harness.tail(log)
    assert result.max_processes >= 2
    assert result.peak_rss_bytes > 300 * 2**20  # only the child's memory gets it past 300 MB
    assert 250 * 2**20 < result.peak_pss_bytes <= result.peak_rss_bytes
    assert result.wall_s >= 1.0


def test_timeout_kills_the_whole_tree(tmp_path):
    sleeper = "import subprocess, sys; subprocess.call([sys.executable, '-c', 'import time; time.sleep(60)'])"
    result = harness.run_measured([sys.executable, "-c", sleeper], benchmark="t", tool="x", timeout_s=1.0)
    assert result.returncode == -9
    assert result.wall_s < 10


def test_failed_command_reports_returncode_and_log(tmp_path):
    log = tmp_path / "fail.log"
    result = harness.run_measured([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                                  benchmark="t", tool="x", log_file=log)
    assert result.returncode == 3 and not result.ok
    assert "boom" in harness.tail(log)


def test_convert_msd_to_nnunet_layout(tmp_path):
    msd = make_dataset(tmp_path / "Task07_Ellipsoids", num_cases=3, shape=(8, 12, 12))
    raw = harness.convert_msd_to_nnunet(msd, tmp_path / "raw", 7)
    assert raw.name == "Dataset007_Ellipsoids"
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 3
    assert meta["channel_names"] == {"0": "MRI"}
    assert meta["labels"]["background"] == 0 and sorted(meta["labels"].values()) == [0, 1, 2]
    images = sorted(p.name for p in (raw / "imagesTr").iterdir())
    labels = sorted(p.name for p in (raw / "labelsTr").iterdir())
    assert len(images) == 3 and all(n.endswith("_0000.nii.gz") for n in images)
    assert [n.replace("_0000", "") for n in images] == labels
    # the links resolve to the original, readable files
    img = sitk.ReadImage(str(raw / "imagesTr" / images[0]))
    assert img.GetSize()[::-1][0] >= 1
    # converting again reuses the finished copy
    mtime = (raw / "dataset.json").stat().st_mtime_ns
    assert harness.convert_msd_to_nnunet(msd, tmp_path / "raw", 7) == raw
    assert (raw / "dataset.json").stat().st_mtime_ns == mtime


def test_convert_splits_multichannel_images(tmp_path):
    msd = make_dataset(tmp_path / "Task01_Two", num_cases=2, shape=(6, 8, 8))
    meta = json.loads((msd / "dataset.json").read_text())
    meta["modality"] = {"0": "T1", "1": "T2"}
    (msd / "dataset.json").write_text(json.dumps(meta))
    for entry in meta["training"]:
        path = msd / entry["image"]
        img = sitk.ReadImage(str(path))
        sitk.WriteImage(sitk.JoinSeries([img, img * 2]), str(path))  # 4D: (x, y, z, channel)
    raw = harness.convert_msd_to_nnunet(msd, tmp_path / "raw", 1)
    names = sorted(p.name for p in (raw / "imagesTr").iterdir())
    assert len(names) == 4 and sum(n.endswith("_0001.nii.gz") for n in names) == 2
    c0 = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / names[0])))
    c1 = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / names[1])))
    assert c0.ndim == 3 and (c1 == 2 * c0).all()


def test_nnunet_env_only_for_the_subprocess(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    folders = harness.NnunetFolders.under(tmp_path).make()
    env = harness.nnunet_env(folders, tmp_path / "venv", extra_trainers=True)
    assert env["nnUNet_raw"] == str(folders.raw) and Path(env["nnUNet_preprocessed"]).is_dir()
    assert env["nnUNet_extTrainer"] == str(harness.NNUNET_TRAINERS_DIR)
    assert (harness.NNUNET_TRAINERS_DIR / "nnUNetTrainer_Budget.py").is_file()
    import os
    assert "nnUNet_raw" not in os.environ


def _result(tool: str, wall: float, rss: int, rc: int = 0) -> harness.RunResult:
    return harness.RunResult(benchmark="b", tool=tool, command=["c"], returncode=rc, wall_s=wall,
                             peak_rss_bytes=rss, peak_pss_bytes=rss // 2, max_processes=1)


def test_table_reports_medians_and_ratios(tmp_path):
    nn = [_result("nnunet", w, 2 * 2**30) for w in (20.0, 30.0, 100.0)]
    ours = [_result("autoseg", w, 2**30) for w in (5.0, 10.0, 12.0)] + [_result("autoseg", 1.0, 1, rc=1)]
    table = harness.comparison_table([("step", nn, ours)])
    row = table.splitlines()[2]
    assert "| 3 / 3 |" in row  # the failed run counts for nothing
    assert "30.0 s" in row and "10.0 s" in row and "| 0.33 |" in row and "| 0.50 |" in row
    missing = harness.comparison_table([("step", nn, [])]).splitlines()[2]
    assert "not run" in missing and "n/a" in missing
    harness.append_result(tmp_path / "r.jsonl", nn[0], dataset="d")
    harness.append_result(tmp_path / "r.jsonl", ours[0], dataset="d")
    records = harness.read_results(tmp_path / "r.jsonl")
    assert [r["tool"] for r in records] == ["nnunet", "autoseg"] and records[0]["dataset"] == "d"


def test_bench_plan_preprocess_runs_the_autoseg_side(tmp_path, capsys):
    import bench_plan_preprocess

    msd = make_dataset(tmp_path / "Task09_Small", num_cases=3, shape=(8, 12, 12))
    rc = bench_plan_preprocess.main(["--data", str(msd), "--tools", "autoseg", "--scratch", str(tmp_path / "s"),
                                     "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    records = harness.read_results(tmp_path / "s" / "results.jsonl")
    assert len(records) == 1 and records[0]["tool"] == "autoseg" and records[0]["returncode"] == 0
    assert records[0]["extra"]["outputs"]["preprocessed"]["files"] >= 9  # 3 cases x (data, seg, json)
    assert "| plan-and-preprocess Task09_Small | 0 / 1 | not run |" in out


def test_bench_plan_preprocess_says_when_nnunet_is_missing(tmp_path, capsys):
    import bench_plan_preprocess

    msd = make_dataset(tmp_path / "Task09_Small", num_cases=2, shape=(6, 8, 8))
    rc = bench_plan_preprocess.main(["--data", str(msd), "--tools", "nnunet", "--scratch", str(tmp_path / "s"),
                                     "--nnunet-venv", str(tmp_path / "no-venv")])
    assert rc == 1
    assert "setup_nnunet_env.sh" in capsys.readouterr().err
