"""The plans file: what every later stage reads to preprocess, build a network and train.

Plain JSON (``plans.json`` in the dataset's workspace), written from these dataclasses;
the schema is documented in ``documentation/plans.md``. Bump :data:`PLANS_VERSION` when a
field changes meaning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoseg.atomic import read_json, write_json
from autoseg.errors import UserError

PLANS_VERSION = 1
# nnU-Net's scaling-augmentation range (sampling-grid factors); a configuration's
# ``scale_range`` of None means this one
DEFAULT_SCALE_RANGE = (0.7, 1.4)


@dataclass
class NetworkTopology:
    """An encoder-decoder's shape; one entry per resolution stage, highest resolution first.

    ``strides[0]`` is always all ones (the first stage does not downsample). A stride or
    kernel of 1 on an axis means that stage does not pool/convolve across it: that is how
    anisotropic data gets in-plane-only (1x3x3) stages. Lists are per spatial axis in
    numpy order; 2D configurations have two axes.
    """

    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_per_stage: int = 2

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)


@dataclass
class ChannelNormalization:
    """How one input channel is normalized.

    ``scheme``: ``"ct"`` (clip to ``clip_low``/``clip_high`` then z-score with the dataset's
    ``mean``/``std``), ``"zscore"`` (per-case z-score), or ``"rgb"`` (per-case, per-channel
    z-score of 8-bit colour).
    """

    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class ResamplingPlan:
    image_order: int = 3
    label_order: int = 1  # 1: each label resampled as a one-hot map, linear, then argmax; 0: nearest
    # Anisotropic data: the coarse axis is resampled separately with this order (0 = nearest),
    # so thick slices are not blurred into each other with a cubic kernel.
    separate_axis: int | None = None
    separate_axis_order: int = 0


@dataclass
class ConfigurationPlan:
    name: str  # "2d", "3d_fullres", "3d_lowres", "3d_hybrid"
    dim: int  # 2 or 3: the network's spatial dimensions
    data_identifier: str  # preprocessed/<data_identifier>/ holds this configuration's data
    spacing: list[float]  # target spacing, (z, y, x) in mm; 2d keeps z as found (no resampling across slices)
    median_shape: list[int]  # median (z, y, x) shape after resampling
    patch_size: list[int]  # dim entries
    batch_size: int
    network: NetworkTopology
    trainer: str = "unet"  # the trainer ``autoseg train`` uses when none is named
    # The network: a key of autoseg.networks.ARCHITECTURES or ``module:Class``. The planner
    # writes the one its trainer trains; a trained model's plans copy records the one it has.
    architecture: str = "unet"
    resampling: ResamplingPlan = field(default_factory=ResamplingPlan)
    # Anisotropic data (spacing ratio > 3): augmentation rotates in-plane only.
    anisotropic: bool = False
    notes: str = ""
    # Network axes (0..dim-1) that training mirrors and test-time augmentation flips; None
    # (plans written before this field): all of them. [] turns both off.
    mirror_axes: list[int] | None = None
    # Scaling augmentation [lo, hi] (sampling-grid factors, < 1 zooms in) when the dataset's
    # object sizes spread beyond nnU-Net's default (0.7, 1.4); then light augmentation scales
    # too. None: the default range, and no scaling in light augmentation.
    scale_range: list[float] | None = None
    # Sliding-window size at prediction and validation, when it differs from patch_size. The
    # planner leaves it None (patch_size); a user may set it. Whole stacks ([10, 96, 96] on ACDC)
    # predicted worse with the hybrid than its 5-slice training patch (documentation/hybrid.md).
    inference_patch_size: list[int] | None = None
    # Probability that a random (not foreground-forced) training patch sits flush with one end
    # of an axis, so small patches see the edge of the field of view that sliding windows tile
    # (trainers.patch_sampler.PatchSampler). The planner leaves 0 (uniform positions): on ACDC 0.2
    # removed the hybrid's far islands but did not raise its postprocessed Dice
    # (documentation/hybrid.md, "Islands"); a user or a benchmark variant may set it.
    edge_flush: float = 0.0

    @property
    def inference_patch(self) -> list[int]:
        """The sliding window's size: ``inference_patch_size``, else ``patch_size``."""
        return list(self.inference_patch_size or self.patch_size)


@dataclass
class Plans:
    version: int
    dataset_name: str
    planner: str
    profile: str  # "gpu" or "cpu": which compute the topology and patch were sized for
    gpu_memory_gb: float
    channel_names: list[str]
    label_values: list[int]  # class index i in the network output is label value label_values[i]
    label_names: list[str]
    normalization: list[ChannelNormalization]
    configurations: dict[str, ConfigurationPlan]
    is_2d_dataset: bool = False
    anisotropy: float = 1.0
    # N4 bias-field correction of MRI channels before cropping (plan-and-preprocess --n4);
    # inference applies the same correction so the model sees what it was trained on.
    n4_bias_correction: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "Plans":
        if d.get("version") != PLANS_VERSION:
            raise ValueError(f"plans version {d.get('version')} is not supported (expected {PLANS_VERSION}); re-run plan-and-preprocess")
        configs = {}
        for name, c in d["configurations"].items():
            c = dict(c)
            c["network"] = NetworkTopology(**c["network"])
            c["resampling"] = ResamplingPlan(**c.get("resampling", {}))
            configs[name] = ConfigurationPlan(**c)
        fields = dict(d)
        fields["normalization"] = [ChannelNormalization(**n) for n in d["normalization"]]
        fields["configurations"] = configs
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        plans = cls.from_dict(read_json(path))
        for name, c in plans.configurations.items():
            # a field users edit by hand: say which file and configuration before training starts
            if not 0.0 <= c.edge_flush <= 1.0:
                raise UserError(f"{path}: configuration '{name}' has edge_flush {c.edge_flush}; "
                                 "it is a probability between 0 and 1")
        return plans

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise KeyError(f"configuration '{name}' is not planned; planned: {', '.join(self.configurations)}")
        return self.configurations[name]

    @property
    def num_classes(self) -> int:
        return len(self.label_values)
