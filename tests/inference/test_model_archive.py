"""One-file models: export -> zip -> import on a fresh workspace predicts the same; damaged,
tampered or hostile archives are refused before anything is written."""
import json
import shutil
import stat
import zipfile

import numpy as np
import pytest
import torch

from autoseg import cli
from autoseg.cli import main
from autoseg.dataset.imageio import read_image
from autoseg.inference.api import predict
from autoseg.inference.model_archive import (IMPORT_RECORD, MANIFEST, ArchiveCorruptError, ArchiveUnsafeError,
                                             ModelArchiveError, export_model, import_model, open_model,
                                             verify_archive)
from autoseg.postprocessing.selection import ModelRef, Selected, Selection
from autoseg.workspace import DatasetWorkspace

POST = {"foreground_largest_component": True, "per_class_largest_component": []}
CKPT0 = "results/unet__3d_fullres/fold_0/checkpoint_final.pt"


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """The shared tiny model in a workspace of its own, with a selection and training state in fold 0."""
    raw, ws, model = setup
    root = tmp_path_factory.mktemp("archive")
    ws = DatasetWorkspace(root / "ws" / "Tiny")
    shutil.copytree(model, ws.results_dir("unet", "3d_fullres"))
    f = ws.fold_dir("unet", "3d_fullres", 0) / "checkpoint_final.pt"
    state = torch.load(f, weights_only=True)
    state.update(optimizer={"state": {}, "param_groups": [{"lr": 0.01}]}, rng={"torch": torch.get_rng_state()},
                 mirror_axes=[0, 1, 2])
    torch.save(state, f)
    Selection(Selected("unet__3d_fullres", [ModelRef("unet", "3d_fullres")], POST, [0, 1])).save(
        ws.best_configuration_file)
    archive = root / "model.zip"
    manifest = export_model(ws, archive, progress=False)
    return raw, ws, archive, manifest


def _predict(raw, ws: DatasetWorkspace) -> np.ndarray:
    return predict(str(raw / "imagesTr" / "case_000.nii.gz"), dataset=ws.name, workspace=ws.root.parent,
                   tta=False, device="cpu", precision="fp32")


def _rewrite(src, dst, replace=None, drop=(), add=None, manifest=None):
    """A copy of archive ``src`` with members replaced, dropped or added (raw bytes, no new manifest
    unless given)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = replace.get(info.filename, zin.read(info))
            if info.filename == MANIFEST and manifest is not None:
                data = json.dumps(manifest).encode()
            zout.writestr(info, data)
        for name, data in add.items():
            zout.writestr(name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name), data)
    return dst


def _workspace_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_export_import_predicts_the_same_segmentation(trained, tmp_path):
    raw, ws, archive, manifest = trained
    assert manifest.dataset == "Tiny" and manifest.label_values == [0, 1, 2]
    assert manifest.label_names == ["label0", "label1", "label2"]
    assert manifest.selection["folds"] == [0, 1] and manifest.selection["postprocessing"] == POST
    assert [(m.trainer, m.configuration, m.folds) for m in manifest.models] == [("unet", "3d_fullres", ["0", "1"])]
    assert sorted(m.path for m in manifest.members) == [
        "best_configuration.json", "results/unet__3d_fullres/fold_0/checkpoint_final.pt",
        "results/unet__3d_fullres/fold_1/checkpoint_final.pt", "results/unet__3d_fullres/plans.json"]
    assert all(len(m.sha256) == 64 and m.size > 0 for m in manifest.members)

    imported = import_model(archive, tmp_path / "elsewhere")  # a machine that never saw the dataset
    assert imported.root == tmp_path / "elsewhere" / "Tiny" and (imported.root / IMPORT_RECORD).is_file()
    assert not list((tmp_path / "elsewhere").glob(".partial*"))
    state = torch.load(imported.fold_dir("unet", "3d_fullres", 0) / "checkpoint_final.pt", weights_only=True)
    assert "optimizer" not in state and "rng" not in state and state["mirror_axes"] == [0, 1, 2]
    reference = _predict(raw, ws)
    np.testing.assert_array_equal(_predict(raw, imported), reference)


def test_open_model_extracts_once_and_reuses_a_verified_cache(trained, tmp_path):
    raw, ws, archive, _ = trained
    first = open_model(archive, tmp_path)
    assert ".model_cache" in first.root.parts and first.name == "Tiny"
    stamp = (first.root / IMPORT_RECORD).stat().st_mtime_ns
    again = open_model(archive, tmp_path)
    assert again.root == first.root and (again.root / IMPORT_RECORD).stat().st_mtime_ns == stamp
    # a cached file edited after extraction: the cache is not trusted, the archive is extracted again
    plans = first.results_dir("unet", "3d_fullres") / "plans.json"
    plans.write_text(plans.read_text().replace('"batch_size": 2', '"batch_size": 3'))
    fresh = open_model(archive, tmp_path)
    assert '"batch_size": 2' in (fresh.results_dir("unet", "3d_fullres") / "plans.json").read_text()
    np.testing.assert_array_equal(_predict(raw, fresh), _predict(raw, ws))


def test_a_changed_member_is_refused_naming_it(trained, tmp_path):
    _, _, archive, _ = trained
    with zipfile.ZipFile(archive) as zf:
        data = bytearray(zf.read(CKPT0))
    data[len(data) // 2] ^= 0xFF
    bad = _rewrite(archive, tmp_path / "changed.zip", replace={CKPT0: bytes(data)})
    with pytest.raises(ArchiveCorruptError, match=f"member {CKPT0} does not match its checksum"):
        import_model(bad, tmp_path / "ws")
    assert _workspace_files(tmp_path / "ws") == []


def test_a_flipped_byte_in_the_file_is_refused_naming_the_member(trained, tmp_path):
    _, _, archive, _ = trained
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(CKPT0)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # local header, then data
    raw[start + info.compress_size // 2] ^= 0x01
    bad = tmp_path / "flipped.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArchiveCorruptError, match=f"member {CKPT0}"):
        import_model(bad, tmp_path / "ws")
    assert _workspace_files(tmp_path / "ws") == []


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_archive_is_refused(trained, tmp_path, keep):
    _, _, archive, _ = trained
    data = archive.read_bytes()
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ArchiveCorruptError, match="truncated"):
        import_model(bad, tmp_path / "ws")
    assert _workspace_files(tmp_path / "ws") == []


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "results/../../evil.txt", "C:/evil.txt"])
def test_paths_leaving_the_target_are_refused_and_nothing_is_written(trained, tmp_path, name):
    _, _, archive, manifest = trained
    listed = manifest.to_dict()
    # listed in the manifest with the right checksum: only the path itself is wrong
    listed["members"].append({"path": name, "size": 4, "sha256": __import__("hashlib").sha256(b"evil").hexdigest()})
    bad = _rewrite(archive, tmp_path / "evil.zip", add={name: b"evil"}, manifest=listed)
    target = tmp_path / "deep" / "ws"
    with pytest.raises(ArchiveUnsafeError, match="evil.txt"):
        import_model(bad, target)
    assert not list(tmp_path.rglob("evil.txt")) and not (tmp_path / "deep").exists()


def test_unlisted_missing_and_symlink_members_are_refused(trained, tmp_path):
    _, _, archive, _ = trained
    with pytest.raises(ArchiveUnsafeError, match="member extra.txt is not listed"):
        import_model(_rewrite(archive, tmp_path / "extra.zip", add={"extra.txt": b"hi"}), tmp_path / "ws")
    with pytest.raises(ArchiveCorruptError, match=f"member {CKPT0} is listed in manifest.json but missing"):
        import_model(_rewrite(archive, tmp_path / "missing.zip", drop={CKPT0}), tmp_path / "ws")
    link = zipfile.ZipInfo("results/unet__3d_fullres/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ArchiveUnsafeError, match="is a symbolic link"):
        import_model(_rewrite(archive, tmp_path / "link.zip", add={link: b"/etc/passwd"}), tmp_path / "ws")
    with pytest.raises(ArchiveCorruptError, match="no manifest.json"):
        import_model(_rewrite(archive, tmp_path / "nomanifest.zip", drop={MANIFEST}), tmp_path / "ws")
    assert _workspace_files(tmp_path / "ws") == []


def test_declared_sizes_beyond_the_limit_are_refused(trained, tmp_path):
    _, _, archive, manifest = trained
    with pytest.raises(ArchiveUnsafeError, match="limit"):
        import_model(archive, tmp_path / "ws", max_total_bytes=1000)
    # a manifest that lies about a size, however small, is refused before a byte is extracted
    listed = manifest.to_dict()
    listed["members"][0]["size"] += 1
    with pytest.raises(ArchiveCorruptError, match="declares"):
        verify_archive(_rewrite(archive, tmp_path / "size.zip", manifest=listed))
    assert _workspace_files(tmp_path / "ws") == []


def test_import_refuses_an_existing_target_and_bad_names(trained, tmp_path):
    _, _, archive, _ = trained
    import_model(archive, tmp_path)
    with pytest.raises(ModelArchiveError, match="already exists"):
        import_model(archive, tmp_path)
    assert import_model(archive, tmp_path, name="Tiny_copy").root == tmp_path / "Tiny_copy"
    with pytest.raises(ModelArchiveError, match="not a plain folder name"):
        import_model(archive, tmp_path, name="../up")


def test_export_checks_its_inputs(trained, tmp_path):
    _, ws, _, _ = trained
    with pytest.raises(ModelArchiveError, match="checkpoint.*missing"):
        export_model(ws, tmp_path / "m.zip", folds=[3], progress=False)
    with pytest.raises(ModelArchiveError, match="no trained model"):
        export_model(ws, tmp_path / "m.zip", configuration="2d", progress=False)
    assert not (tmp_path / "m.zip").exists()
    one = export_model(ws, tmp_path / "m.zip", folds=[1], configuration="3d_fullres", progress=False)
    assert one.selection["folds"] == [1] and one.selection["postprocessing"] == {}


@pytest.fixture
def commands(monkeypatch):
    """The commands of this feature in ``autoseg``'s parser, whether or not cli.py lists them yet."""
    mine = ["export_model", "import_model", "export_onnx"]
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + [m for m in mine if m not in cli.COMMAND_MODULES])


def test_cli_export_import_and_refusal(trained, tmp_path, capsys, commands):
    raw, ws, _, _ = trained
    out = tmp_path / "cli.zip"
    assert main(["export-model", "Tiny", "-o", str(out), "-f", "0", "--workspace", str(ws.root.parent)]) == 0
    assert "predict --model" in capsys.readouterr().out
    assert main(["import-model", str(out), "--workspace", str(tmp_path / "other")]) == 0
    assert "predict -d Tiny" in capsys.readouterr().out
    out.write_bytes(out.read_bytes()[:100])
    assert main(["import-model", str(out), "--workspace", str(tmp_path / "third")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and str(out) in err and "Traceback" not in err


def predict_accepts(option: str) -> bool:
    """Whether ``autoseg predict`` has ``option`` in this checkout (documentation/sharing.md)."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return option in sub.choices["predict"]._option_string_actions


def test_cli_predict_with_a_model_archive(trained, tmp_path, commands, capsys):
    if not predict_accepts("--model"):
        pytest.skip("autoseg predict has no --model option in this checkout")
    raw, ws, archive, _ = trained
    common = ["-i", str(raw / "imagesTr"), "--no-tta", "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", "-d", "Tiny", "-o", str(tmp_path / "here"), "--workspace", str(ws.root.parent)]
                + common) == 0
    assert main(["predict", "--model", str(archive), "-o", str(tmp_path / "there"),
                 "--workspace", str(tmp_path / "fresh")] + common) == 0
    cases = sorted(p.name for p in (tmp_path / "here").glob("*.nii.gz"))
    assert cases and cases == sorted(p.name for p in (tmp_path / "there").glob("*.nii.gz"))
    for name in cases:
        np.testing.assert_array_equal(read_image(tmp_path / "there" / name)[0], read_image(tmp_path / "here" / name)[0])
    bad = _rewrite(archive, tmp_path / "bad.zip", drop={CKPT0})
    capsys.readouterr()
    assert main(["predict", "--model", str(bad), "-o", str(tmp_path / "bad"), "--workspace", str(tmp_path / "w")]
                + common) == 2
    assert CKPT0 in capsys.readouterr().err and not (tmp_path / "bad").exists()
