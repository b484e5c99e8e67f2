"""Plans read from JSON are type-checked and validated, naming the file and the field."""
import json

import pytest

from autoseg.errors import PluginNotFound, UserError
from autoseg.planners.plans import Plans

from tests.planners.test_default import acdc_like


@pytest.fixture
def plans_file(tmp_path):
    from autoseg.planners.default import DefaultPlanner

    path = tmp_path / "plans.json"
    DefaultPlanner(acdc_like(), profile="cpu").plan().save(path)
    return path


def edit(path, change) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def set_config(key, value, config="3d_fullres"):
    def change(d):
        target = d["configurations"][config]
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return change


@pytest.mark.parametrize("key,value,message", [
    ("patch_size", [-8, 80, 96], r"configurations\.3d_fullres\.patch_size: \[-8, 80, 96\]: 3 positive sizes"),
    ("patch_size", ["10", 80, 96], r"configurations\.3d_fullres\.patch_size\[0\]: expected an integer, got str '10'"),
    ("patch_size", [10, 80], r"configurations\.3d_fullres\.patch_size: \[10, 80\]: 3 positive sizes"),
    ("batch_size", 0, r"configurations\.3d_fullres\.batch_size: 0: at least 1"),
    ("batch_size", "4", r"configurations\.3d_fullres\.batch_size: expected an integer, got str"),
    ("batch_size", True, r"configurations\.3d_fullres\.batch_size: expected an integer, got bool"),
    ("spacing", [10.0, 0.0, 1.5], r"configurations\.3d_fullres\.spacing: .*three positive values"),
    ("dim", 4, r"configurations\.3d_fullres\.dim: 4: networks are 2D or 3D"),
    ("network.strides", [[1, 1, 1]], r"configurations\.3d_fullres\.network\.strides: 1 entries for 5 stages"),
    ("network.kernel_sizes", [[1, 3]] * 5, r"configurations\.3d_fullres\.network\.kernel_sizes\[0\]: \[1, 3\]: 3 positive"),
    ("network.features_per_stage", [16, 32, 0, 128, 128], r"configurations\.3d_fullres\.network\.features_per_stage: .*positive widths"),
    ("mirror_axes", [0, 3], r"configurations\.3d_fullres\.mirror_axes: \[0, 3\]: axes 0\.\.2"),
    ("scale_range", [1.4, 0.7], r"configurations\.3d_fullres\.scale_range: .*low <= high"),
    ("edge_flush", 1.5, r"configurations\.3d_fullres\.edge_flush: 1\.5: a probability"),
    ("architecture", 3, r"configurations\.3d_fullres\.architecture: expected text, got int 3"),
    ("patch_sise", [10, 80, 96], r"configurations\.3d_fullres: unknown field\(s\) patch_sise"),
])
def test_a_nonsense_configuration_value_is_refused_at_load_naming_file_and_field(plans_file, key, value, message):
    edit(plans_file, set_config(key, value))
    with pytest.raises(UserError, match=rf"plans\.json: {message}"):
        Plans.load(plans_file)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(version=7), r"plans version 7 is not supported"),
    (lambda d: d.pop("label_values"), r"top level: missing field\(s\) label_values"),
    (lambda d: d.update(label_values=[0, 1, 1]), r"label_values: \[0, 1, 1\]: .*no repeats"),
    (lambda d: d.update(label_values=[1, 0, 2]), r"label_values: .*background \(0\) comes first"),
    (lambda d: d.update(label_names=["bg"]), r"label_names: 1 names for 4 label values"),
    (lambda d: d["normalization"][0].update(scheme="minmax"), r"normalization\[0\]\.scheme: 'minmax' is not one of"),
    (lambda d: d.update(normalization=[]), r"normalization: 0 schemes for 1 channels"),
    (lambda d: d.update(gpu_memory_gb="8"), r"gpu_memory_gb: expected a number, got str '8'"),
    (lambda d: d.update(configurations=[]), r"configurations: expected an object, got list"),
])
def test_nonsense_top_level_values_are_refused(plans_file, change, message):
    edit(plans_file, change)
    with pytest.raises(UserError, match=message):
        Plans.load(plans_file)


def test_an_unknown_architecture_is_named_with_its_configuration_when_the_network_is_built(plans_file):
    from autoseg.networks import build_network

    edit(plans_file, set_config("architecture", "transformer9000"))
    plans = Plans.load(plans_file)  # a plug-in name is resolved where networks are built
    with pytest.raises(PluginNotFound, match=r"configuration '3d_fullres': unknown architecture 'transformer9000'"):
        build_network(plans, plans.configuration("3d_fullres"))


def test_the_planners_own_plans_round_trip_unchanged(plans_file):
    plans = Plans.load(plans_file)
    assert Plans.from_dict(plans.to_dict()) == plans
    # ints where floats are expected are fine (JSON writes 10.0 as 10 in some tools)
    edit(plans_file, set_config("spacing", [10, 1.5625, 1.5625]))
    assert Plans.load(plans_file).configuration("3d_fullres").spacing == [10.0, 1.5625, 1.5625]
