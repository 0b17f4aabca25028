"""The network every site builds from the server's ModelSpec."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from fedvox.wire.taskconfig import ModelSpec


def build_model(spec: ModelSpec) -> torch.nn.Module:
    # affine norms: learnable per-channel scale and shift, which FedBN/FedPer can keep local
    norm: tuple[str, dict[str, bool]] = (spec.norm, {"affine": True})
    model: torch.nn.Module = UNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm=norm,
        dropout=spec.dropout,
    )
    return model
