"""One loader for every plug-in: registered names, module:Class, file.py:Class, and its errors."""
import dataclasses
import textwrap

import pytest
import torch
from torch import nn

from autoseg.errors import PluginNotFound, UserError
from autoseg.networks import build_network
from autoseg.planners.plans import ConfigurationPlan, NetworkTopology, Plans
from autoseg.plugins import load_plugin


def test_registered_module_and_file(tmp_path, monkeypatch):
    assert load_plugin("int", "thing", object, {"int": int}) is int
    assert load_plugin("lazy", "thing", object, {"lazy": "collections:OrderedDict"}).__name__ == "OrderedDict"
    assert load_plugin("collections:OrderedDict", "thing", dict).__name__ == "OrderedDict"
    (tmp_path / "mine.py").write_text("class A(dict):\n    pass\n")
    assert load_plugin(f"{tmp_path / 'mine.py'}:A", "thing", dict).__name__ == "A"
    # loading the same file twice gives the same class (isinstance checks keep working)
    assert load_plugin(f"{tmp_path / 'mine.py'}:A", "thing", dict) is load_plugin(f"{tmp_path / 'mine.py'}:A", "thing", dict)
    for name, message in [("nope", "unknown thing 'nope'"), ("collections:Nope", "no attribute 'Nope'"),
                          ("collections:OrderedDict", "not a subclass"), ("no_such_mod_xyz:A", "not found"),
                          (f"{tmp_path / 'absent.py'}:A", "does not exist")]:
        with pytest.raises(PluginNotFound, match=message):
            load_plugin(name, "thing", list)
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken on import')\n")
    with pytest.raises(UserError, match="broken on import"):
        load_plugin(f"{tmp_path / 'broken.py'}:A", "thing", object)


def test_a_user_architecture_is_one_file_and_a_name_in_the_plan(tmp_path):
    (tmp_path / "my_net.py").write_text(textwrap.dedent("""
        from torch import nn

        class OneConv(nn.Module):
            def __init__(self, in_channels, num_classes, topology, dim, deep_supervision=True):
                super().__init__()
                self.conv = (nn.Conv3d if dim == 3 else nn.Conv2d)(in_channels, num_classes, 1)

            def forward(self, x):
                return self.conv(x)
    """))
    topo = NetworkTopology([4], [[3, 3, 3]], [[1, 1, 1]])
    config = ConfigurationPlan(name="3d_fullres", dim=3, data_identifier="x", spacing=[1, 1, 1], median_shape=[8, 8, 8],
                               patch_size=[8, 8, 8], batch_size=2, network=topo,
                               architecture=f"{tmp_path / 'my_net.py'}:OneConv")
    plans = Plans(version=1, dataset_name="d", planner="p", profile="cpu", gpu_memory_gb=0, channel_names=["a"],
                  label_values=[0, 1], label_names=["bg", "x"], normalization=[], configurations={"3d_fullres": config})
    net = build_network(plans, config)
    assert isinstance(net, nn.Module) and net(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    with pytest.raises(PluginNotFound, match="not a subclass of torch.nn.modules.module.Module"):
        build_network(plans, dataclasses.replace(config, architecture="collections:OrderedDict"))
