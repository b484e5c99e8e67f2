import pytest

from autoseg.trainers.base import Trainer
from autoseg.errors import TrainerNotFound
from autoseg.trainers.registry import available_trainers, get_trainer, register_trainer


def test_builtin_trainers():
    assert {"unet", "resenc_unet"} <= set(available_trainers())
    assert get_trainer("unet").architecture == "unet"
    assert get_trainer("resenc_unet").architecture == "resenc_unet"
    assert get_trainer("resenc_unet").results_name() == "resenc_unet"


def test_module_and_file_trainers(tmp_path, monkeypatch):
    code = (
        "from autoseg.trainers.unet import UNetTrainer\n"
        "class MyTrainer(UNetTrainer):\n"
        "    initial_lr = 0.05\n"
        "NotATrainer = int\n"
    )
    (tmp_path / "my_trainers.py").write_text(code)
    by_file = get_trainer(f"{tmp_path / 'my_trainers.py'}:MyTrainer")
    assert issubclass(by_file, Trainer) and by_file.initial_lr == 0.05
    # an unregistered subclass gets its own results folder, not its parent's
    assert by_file.results_name() == "MyTrainer"
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = get_trainer("my_trainers:MyTrainer")
    assert by_module.initial_lr == 0.05
    with pytest.raises(TrainerNotFound, match="not a subclass"):
        get_trainer("my_trainers:NotATrainer")
    with pytest.raises(TrainerNotFound, match="no class"):
        get_trainer("my_trainers:Missing")
    with pytest.raises(TrainerNotFound, match="unknown trainer"):
        get_trainer("nope")
    with pytest.raises(TrainerNotFound, match="does not exist"):
        get_trainer(f"{tmp_path / 'missing.py'}:X")


def test_register_decorator():
    @register_trainer("test_registry_tiny")
    class Tiny(Trainer):
        architecture = "unet"

    assert get_trainer("test_registry_tiny") is Tiny and Tiny.results_name() == "test_registry_tiny"
    with pytest.raises(ValueError, match="already registered"):
        register_trainer("test_registry_tiny")(type("Other", (Trainer,), {}))
