"""2.5D trainers: a 2D U-Net fed ``K`` neighbouring slices as channels (the ``2d`` configuration).

The network (:class:`autoseg.networks.context_unet.ContextSliceUNet`) carries
``context_slices``; the sampler cuts that many slices around the sampled one (edge slices
repeated) and the sliding window stacks each slice with its neighbours the same way, so a
checkpoint needs nothing beyond its architecture name to predict.
"""
from __future__ import annotations

from typing import Any

from autoseg.errors import UserError
from autoseg.trainers.base import Trainer
from autoseg.trainers.registry import register_trainer


@register_trainer("unet_2p5d")
class UNet2p5dTrainer(Trainer):
    architecture = "unet_2p5d"  # 3 slices; unet_2p5d_k5: 5

    @property
    def context_slices(self) -> int:
        return int(getattr(self.network, "context_slices", 1))

    def network_input_channels(self) -> int:
        return len(self.plans.channel_names) * self.context_slices

    def build_sampler(self, case_ids: list[str], seed: int) -> Any:
        from autoseg.trainers.patch_sampler import ContextSlicePatchSampler

        if self.config.dim != 2:
            raise UserError(f"trainer '{self.results_name()}' needs a 2D configuration ('2d'), "
                            f"'{self.configuration}' is {self.config.dim}D")
        return ContextSlicePatchSampler(self.preprocessed_dir, case_ids, self.config.patch_size,
                                        self.config.batch_size, self.context_slices,
                                        oversample_foreground=self.oversample_foreground, seed=seed,
                                        edge_flush=self.config.edge_flush)


@register_trainer("unet_2p5d_k5")
class UNet2p5dK5Trainer(UNet2p5dTrainer):
    architecture = "unet_2p5d_k5"
