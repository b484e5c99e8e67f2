"""A tiny model folder laid out as training leaves it, with random weights."""

import torch

from autoseg.networks import build_network
from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans




def tiny_plans(dim=3, channels=("MR",), label_values=(0, 1, 2)) -> Plans:
    topo = NetworkTopology([4, 8], [[3] * dim] * 2, [[1] * dim, [2] * dim])
    name = "3d_fullres" if dim == 3 else "2d"
    cfg = ConfigurationPlan(name=name, dim=dim, data_identifier=f"p_{name}", spacing=[1.0, 1.0, 1.0][-dim:],
                            median_shape=[10, 12, 12], patch_size=[8] * dim, batch_size=2, network=topo)
    norm = [ChannelNormalization("rgb" if len(channels) == 3 else "zscore") for _ in channels]
    return Plans(1, "Tiny", "default", "cpu", 8, list(channels), list(label_values),
                 [f"label{v}" for v in label_values], norm, {name: cfg}, is_2d_dataset=dim == 2)


def make_model(root, plans: Plans, configuration: str, folds=(0,), trainer="unet", seed=0):
    """A results folder laid out as training leaves it, with random weights."""
    folder = root / f"{trainer}__{configuration}"
    plans.save(folder / "plans.json")
    for f in folds:
        torch.manual_seed(seed + int(f))
        net = build_network(plans, plans.configuration(configuration))
        (folder / f"fold_{f}").mkdir(parents=True, exist_ok=True)
        torch.save({"format": 1, "trainer": trainer, "architecture": "unet", "configuration": configuration,
                    "fold": str(f), "network": net.state_dict()}, folder / f"fold_{f}" / "checkpoint_final.pt")
    return folder
