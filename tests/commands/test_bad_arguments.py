"""Bad arguments end in one line on stderr (what is wrong, and with which option or file), exit code
2, no traceback, before any long work: budgets, folds, parts, models, input and output folders,
channel counts."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.synthetic import make_dataset
from tests.inference.models import make_model, tiny_plans

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A raw dataset, a workspace with a one-fold model of it (Tiny) and one with no trained fold
    (Bare), and input folders: empty, without images, with a 2-channel case."""
    root = tmp_path_factory.mktemp("bad_arguments")
    make_dataset(root / "raw" / "Tiny", num_cases=2, shape=(10, 12, 12), seed=3)
    plans = tiny_plans()
    plans.save(root / "ws" / "Tiny" / "plans.json")
    make_model(root / "ws" / "Tiny" / "results", plans, "3d_fullres", folds=(0,))
    plans.save(root / "ws" / "Bare" / "plans.json")
    plans.save(root / "ws" / "Bare" / "results" / "unet__3d_fullres" / "plans.json")
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here", encoding="utf-8")
    (root / "two").mkdir()
    two = sitk.GetImageFromArray(np.zeros((10, 12, 12, 2), np.float32), isVector=True)
    sitk.WriteImage(two, str(root / "two" / "case_2ch.nii.gz"))
    (root / "a_file").write_text("", encoding="utf-8")
    return root


def fill(argv: list[str], root: Path) -> list[str]:
    return [a.replace("ROOT", str(root)) for a in argv]


PREDICT = ["predict", "-i", "ROOT/raw/Tiny/imagesTr", "-o", "ROOT/out", "--workspace", "ROOT/ws", "--device", "cpu"]
TRAIN = ["train", "Tiny", "3d_fullres", "0", "--workspace", "ROOT/ws", "--device", "cpu"]
RUN = ["run", "ROOT/raw/Tiny", "--workspace", "ROOT/ws_run", "-np", "1", "--profile", "cpu"]

# (arguments, the one line expected on stderr: a regex; ROOT stands for the fixture's folder)
CASES = [
    # budgets
    (TRAIN + ["--time-budget", "-1"], r"--time-budget must be a positive number of minutes, got -1"),
    (TRAIN + ["--time-budget", "0"], r"--time-budget must be a positive number of minutes, got 0"),
    (TRAIN + ["--epochs", "0"], r"--epochs must be at least 1, got 0"),
    (TRAIN + ["--iters-per-epoch", "-5"], r"--iters-per-epoch must be at least 1, got -5"),
    (TRAIN + ["--val-iters", "-1"], r"--val-iters must be at least 0, got -1"),
    (TRAIN + ["--num-workers", "-1"], r"--num-workers must be at least 0, got -1"),
    (RUN + ["--time-budget", "-1"], r"--time-budget '-1' must be a positive duration"),
    (RUN + ["--time-budget", "0"], r"--time-budget '0' must be a positive duration"),
    (RUN + ["--time-budget", "soon"], r"--time-budget 'soon' is not a duration"),
    (RUN + ["--fold-minutes", "-3"], r"per-fold time budget must be positive, got -3"),
    (RUN + ["--epochs", "0"], r"--epochs must be at least 1, got 0"),
    (RUN + ["--gpu-memory", "0"], r"--gpu-memory must be positive, got 0"),
    (RUN + ["--parallel", "0"], r"--parallel must be at least 1, got 0"),
    (["plan-and-preprocess", "ROOT/raw/Tiny", "--workspace", "ROOT/ws_pp", "--gpu-memory", "-2"],
     r"--gpu-memory must be positive, got -2"),
    (["plan-and-preprocess", "ROOT/raw/Tiny", "--workspace", "ROOT/ws_pp", "-np", "0"], r"-np must be at least 1, got 0"),
    (["evaluate", "ROOT/raw/Tiny/labelsTr", "ROOT/raw/Tiny/labelsTr", "-np", "0"],
     r"-np/--num-workers must be at least 1, got 0"),
    (["evaluate", "ROOT/raw/Tiny/labelsTr", "ROOT/raw/Tiny/labelsTr", "--nsd-tolerance", "-1"],
     r"--nsd-tolerance must be at least 0, got -1"),
    # folds
    (["train", "Tiny", "3d_fullres", "-1", "--workspace", "ROOT/ws"], r"fold '-1' must be a fold number \(0-4\) or 'all'"),
    (["train", "Tiny", "3d_fullres", "first", "--workspace", "ROOT/ws"], r"fold 'first' must be a fold number"),
    (RUN + ["--folds", "-1"], r"--folds: folds are 0-4, got -1"),
    (RUN + ["--folds", "7"], r"--folds: folds are 0-4, got 7"),
    (RUN + ["--folds", "zero"], r"argument --folds: invalid int value: 'zero' \(see 'autoseg run --help'\)"),
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "-f", "-1"], r"-f/--folds: folds are fold numbers \(0-4\) or 'all', got -1"),
    (["find-best-configuration", "Tiny", "--workspace", "ROOT/ws", "--folds", "-1"],
     r"--folds: folds are fold numbers \(0-4\), got -1"),
    (["export-model", "Tiny", "-o", "ROOT/m.zip", "--workspace", "ROOT/ws", "-f", "-2"], r"-f/--folds: .* got -2"),
    # parts
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "--part", "0", "--num-parts", "0"], r"--num-parts must be at least 1, got 0"),
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "--part", "5", "--num-parts", "2"],
     r"--part must be 0 to 1 with --num-parts 2, got 5"),
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "--part", "1"], r"--part K and --num-parts N go together"),
    # models
    (PREDICT + ["-d", "Nope", "-c", "3d_fullres"], r"dataset workspace ROOT/ws/Nope does not exist"),
    (PREDICT + ["-d", "Tiny", "-c", "2d"], r"no trained model in ROOT/ws/Tiny/results/unet__2d"),
    (PREDICT + ["-d", "Tiny"], r"ROOT/ws/Tiny/best_configuration.json does not exist"),
    (PREDICT + ["-d", "Bare", "-c", "3d_fullres"], r"checkpoint\(s\) missing: .*fold_0/checkpoint_final.pt.*train the model"),
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "-f", "3"], r"checkpoint\(s\) missing: .*fold_3.*available: fold_0"),
    (PREDICT + ["--model", "ROOT/missing.zip"], r"model archive ROOT/missing.zip does not exist"),
    (PREDICT + ["-c", "3d_fullres"], r"say which model: -d DATASET .* or --model ZIP"),
    (["train", "Nope", "3d_fullres", "0", "--workspace", "ROOT/ws"], r"ROOT/ws/Nope does not exist; run 'autoseg plan-and"),
    (["train", "Tiny", "3d_nonsense", "0", "--workspace", "ROOT/ws"], r"ROOT/ws/Tiny/plans.json: .*3d_nonsense"),
    # input and output folders
    (["predict", "-i", "ROOT/empty", "-o", "ROOT/out", "--workspace", "ROOT/ws", "-d", "Tiny", "-c", "3d_fullres"],
     r"input folder ROOT/empty is empty: no images found"),
    (["predict", "-i", "ROOT/nowhere", "-o", "ROOT/out", "--workspace", "ROOT/ws", "-d", "Tiny", "-c", "3d_fullres"],
     r"input folder ROOT/nowhere does not exist"),
    (["predict", "-i", "ROOT/a_file", "-o", "ROOT/out", "--workspace", "ROOT/ws", "-d", "Tiny", "-c", "3d_fullres"],
     r"input folder ROOT/a_file is a file, not a folder"),
    (["predict", "-i", "ROOT/notes", "-o", "ROOT/out", "--workspace", "ROOT/ws", "-d", "Tiny", "-c", "3d_fullres",
      "-f", "0", "--device", "cpu"], r"input folder ROOT/notes holds no image files \(.nii.gz"),
    (["predict", "-i", "ROOT/two", "-o", "ROOT/two", "--workspace", "ROOT/ws", "-d", "Tiny", "-c", "3d_fullres"],
     r"-o ROOT/two: the output folder must differ from the input folder"),
    (PREDICT[:4] + ["ROOT/a_file/out"] + PREDICT[5:] + ["-d", "Tiny", "-c", "3d_fullres"],
     r"cannot write into ROOT/a_file/out: ROOT/a_file is a file, not a folder"),
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "-np", "0"], r"-np/--num-workers must be at least 1, got 0"),
    (PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "-f", "0", "--overlap", "1.5"], r"overlap 1.5 must be in \[0, 1\)"),
    # channels
    (["predict", "-i", "ROOT/two", "-o", "ROOT/out_two", "--workspace", "ROOT/ws", "-d", "Tiny", "-c", "3d_fullres",
      "-f", "0", "--device", "cpu"], r"ROOT/two/case_2ch.nii.gz: has 2 channel\(s\) but the model was trained on 1"),
]


def error_line(capsys, argv: list[str]) -> str:
    from autoseg.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, expected", CASES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_argument_is_one_line(setup, capsys, argv, expected):
    line = error_line(capsys, fill(argv, setup))
    command = argv[0]
    expected = expected.replace("ROOT", re.escape(str(setup)))
    assert line.startswith(f"autoseg {command}: error: "), line
    assert re.search(expected, line), f"{line!r} does not match {expected!r}"


def test_nothing_predicted_for_a_wrong_channel_count(setup, capsys):
    # the 2-channel case sorts after a good one: the check of every case comes before the first prediction
    good = setup / "mixed"
    good.mkdir()
    (good / "case_2ch.nii.gz").write_bytes((setup / "two" / "case_2ch.nii.gz").read_bytes())
    (good / "a_good.nii.gz").write_bytes((setup / "raw" / "Tiny" / "imagesTr" / "case_000.nii.gz").read_bytes())
    line = error_line(capsys, fill(["predict", "-i", "ROOT/mixed", "-o", "ROOT/out_mixed", "--workspace", "ROOT/ws",
                                    "-d", "Tiny", "-c", "3d_fullres", "-f", "0", "--device", "cpu"], setup))
    assert "case_2ch.nii.gz: has 2 channel(s) but the model was trained on 1" in line
    assert not list((setup / "out_mixed").glob("*.nii.gz"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_a_read_only_folder_fails_in_one_line_before_predicting(setup):
    out = setup / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        r = subprocess.run([sys.executable, "-m", "autoseg", *fill(PREDICT[:4], setup), str(out),
                            *fill(PREDICT[5:], setup), "-d", "Tiny", "-c", "3d_fullres"],
                           capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300, cwd=REPO,
                           check=False)
    finally:
        out.chmod(0o755)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"autoseg predict: error: cannot write {out}: permission denied"
    assert "predicting with" not in r.stdout  # refused before any model loaded
    assert list(out.iterdir()) == []


def test_bad_arguments_through_the_real_command_line(setup):
    # the installed entry point, as a user runs it: exit code 2, one line, no traceback
    for argv in (TRAIN + ["--time-budget", "-1"], PREDICT + ["-d", "Tiny", "-c", "3d_fullres", "--part", "5",
                                                          "--num-parts", "2"], RUN + ["--folds", "zero"]):
        r = subprocess.run([sys.executable, "-m", "autoseg", *fill(argv, setup)], capture_output=True, text=True,
                           encoding="utf-8", errors="replace", timeout=300, cwd=REPO, check=False)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
