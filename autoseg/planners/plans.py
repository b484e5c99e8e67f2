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
from autoseg.typed_json import from_json

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
    ``mean``/``std``), ``"zscore"`` (per-case z-score), ``"rgb"`` (per-case, per-channel
    z-score of 8-bit colour), or ``"none"`` (as read).
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


NORMALIZATION_SCHEMES = ("ct", "zscore", "rgb", "none")  # autoseg.preprocessing.normalization applies them


def _validate_configuration(c: ConfigurationPlan, fail) -> None:
    """Every check :meth:`Plans.validate` makes of one configuration; ``fail(field, message)``."""
    if c.dim not in (2, 3):
        raise fail("dim", f"{c.dim}: networks are 2D or 3D")
    if len(c.spacing) not in (3, c.dim) or any(not s > 0 for s in c.spacing):
        raise fail("spacing", f"{c.spacing}: three positive values (z, y, x) in mm")
    for field_name in ("patch_size", "inference_patch_size"):
        size = getattr(c, field_name)
        if size is None:
            continue
        if len(size) != c.dim or any(s < 1 for s in size):
            raise fail(field_name, f"{size}: {c.dim} positive sizes for a {c.dim}D configuration")
    if c.batch_size < 1:
        raise fail("batch_size", f"{c.batch_size}: at least 1")
    t = c.network
    n = t.n_stages
    if n < 1 or any(f < 1 for f in t.features_per_stage):
        raise fail("network.features_per_stage", f"{t.features_per_stage}: at least one stage, positive widths")
    for key, lists in (("kernel_sizes", t.kernel_sizes), ("strides", t.strides)):
        if len(lists) != n:
            raise fail(f"network.{key}", f"{len(lists)} entries for {n} stages")
        for s, entry in enumerate(lists):
            if len(entry) != c.dim or any(v < 1 for v in entry):
                raise fail(f"network.{key}[{s}]", f"{entry}: {c.dim} positive values")
    if t.n_conv_per_stage < 1:
        raise fail("network.n_conv_per_stage", f"{t.n_conv_per_stage}: at least 1")
    if not c.architecture.strip():
        raise fail("architecture", "empty; a registered architecture or module:Class")
    if not 0.0 <= c.edge_flush <= 1.0:
        raise fail("edge_flush", f"{c.edge_flush}: a probability between 0 and 1")
    if c.mirror_axes is not None and any(not 0 <= a < c.dim for a in c.mirror_axes):
        raise fail("mirror_axes", f"{c.mirror_axes}: axes 0..{c.dim - 1}")
    if c.scale_range is not None and (len(c.scale_range) != 2 or not 0 < c.scale_range[0] <= c.scale_range[1]):
        raise fail("scale_range", f"{c.scale_range}: [low, high] with 0 < low <= high")


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
    def from_dict(cls, d: dict, where: str = "plans") -> "Plans":
        """Plans from JSON, every field's type checked and the values validated (:meth:`validate`)."""
        if not isinstance(d, dict) or d.get("version") != PLANS_VERSION:
            version = d.get("version") if isinstance(d, dict) else None
            raise UserError(f"{where}: plans version {version} is not supported (expected {PLANS_VERSION}); "
                            "re-run plan-and-preprocess")
        plans = from_json(cls, d, where)
        plans.validate(where)
        return plans

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        return cls.from_dict(read_json(path), str(path))

    def validate(self, where: str = "plans") -> None:
        """Raise UserError naming the field of any value no stage could work with.

        Plans are JSON users edit by hand (a patch size, a batch size); a nonsense value must be
        refused when the file is read, not deep inside training or an hour into prediction.
        """
        def fail(field_path: str, message: str) -> UserError:
            return UserError(f"{where}: {field_path}: {message}")

        if len(self.label_values) < 2 or len(set(self.label_values)) != len(self.label_values):
            raise fail("label_values", f"{self.label_values}: needs background and at least one label, no repeats")
        if any(v < 0 for v in self.label_values) or self.label_values[0] != 0:
            raise fail("label_values", f"{self.label_values}: values are non-negative and background (0) comes first")
        if len(self.label_names) != len(self.label_values):
            raise fail("label_names", f"{len(self.label_names)} names for {len(self.label_values)} label values")
        if len(self.normalization) != len(self.channel_names):
            raise fail("normalization", f"{len(self.normalization)} schemes for {len(self.channel_names)} channels")
        for i, n in enumerate(self.normalization):
            if n.scheme.lower() not in NORMALIZATION_SCHEMES:
                raise fail(f"normalization[{i}].scheme", f"'{n.scheme}' is not one of {', '.join(NORMALIZATION_SCHEMES)}")
        if not self.configurations:
            raise fail("configurations", "no configuration planned")
        for name, c in self.configurations.items():
            _validate_configuration(c, lambda f, m, name=name: fail(f"configurations.{name}.{f}", m))

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise KeyError(f"configuration '{name}' is not planned; planned: {', '.join(self.configurations)}")
        return self.configurations[name]

    @property
    def num_classes(self) -> int:
        return len(self.label_values)
