"""The client halves of aggregation schemes, chosen by the task's `strategy` config.

proximal_mu  FedProx: add mu/2 * ||w - w_global||^2 to the loss.
scaffold     SCAFFOLD: correct each gradient by c - c_i; keep c_i at the site.
local_keys   FedBN ("norm") / FedPer ("head"): layers that never leave the site,
             chosen by module type, never by substrings of names.
freeze       parameter names that must not change this round (FedMA's layer-wise phases).
lr           the scheme's own client learning rate, in place of train.lr (SCAFFOLD's SGD).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

NORM_TYPES = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
CONV_TYPES = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
SCAFFOLD_C = "scaffold.c/"
SCAFFOLD_DC = "scaffold.dc/"


@dataclass(frozen=True)
class SchemeHooks:
    proximal_mu: float = 0.0
    scaffold: bool = False
    local_keys: str = ""  # "", "norm" or "head"
    head_layers: int = 1
    freeze: tuple[str, ...] = ()
    lr: float = 0.0  # the scheme's own client learning rate (SCAFFOLD's SGD); 0: train.lr

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> SchemeHooks:
        known = {f.name for f in fields(SchemeHooks)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"this client does not support strategy hook {unknown[0]!r}")
        values = dict(config)
        if "freeze" in values:
            values["freeze"] = tuple(values["freeze"])
        hooks = SchemeHooks(**values)
        if hooks.local_keys not in ("", "norm", "head"):
            raise ValueError(f"unknown local_keys policy {hooks.local_keys!r}")
        return hooks


def personal_keys(model: torch.nn.Module, hooks: SchemeHooks) -> set[str]:
    """State-dict keys that stay at the site under the hooks' policy (empty = none)."""
    if not hooks.local_keys:
        return set()
    modules = list(model.named_modules())
    if hooks.local_keys == "norm":
        chosen = [(name, m) for name, m in modules if isinstance(m, NORM_TYPES)]
    else:
        # the head: from the k-th last conv-like module to the end, in registration order,
        # which for MONAI's UNet is the order data flows through the last layers
        leaves = [(name, m) for name, m in modules if not list(m.children())]
        convs = [i for i, (_, m) in enumerate(leaves) if isinstance(m, CONV_TYPES)]
        if len(convs) < hooks.head_layers:
            raise ValueError(
                f"the model has only {len(convs)} conv layers, fewer than "
                f"head_layers={hooks.head_layers}"
            )
        chosen = leaves[convs[-hooks.head_layers] :]
    keys = {f"{name}.{key}" if name else key for name, m in chosen for key in m.state_dict()}
    if not keys:
        raise ValueError(
            f"local_keys={hooks.local_keys!r} matches no tensor of this model "
            "(e.g. FedBN needs learnable norm layers)"
        )
    return keys


class SchemeTraining:
    """The scheme's changes to one local training run, around the plain loop."""

    def __init__(
        self,
        hooks: SchemeHooks,
        model: torch.nn.Module,
        control: Mapping[str, torch.Tensor],
        site_control: Mapping[str, torch.Tensor],
        lr: float,
    ) -> None:
        self.hooks = hooks
        self.lr = lr
        self.params = dict(model.named_parameters())
        known = set(model.state_dict())
        for name in hooks.freeze:
            if name not in known:
                raise ValueError(f"cannot freeze {name!r}: the model has no such tensor")
            if name in self.params:  # buffers (running statistics) have no gradient anyway
                self.params[name].requires_grad_(False)
        # the round's starting point: FedProx's anchor and SCAFFOLD's w_global
        self.start = {k: p.detach().clone() for k, p in self.params.items()}
        self.c = {k: control[k] for k in self.params if k in control}
        self.c_i = {k: site_control.get(k, torch.zeros_like(v)) for k, v in self.c.items()}

    def penalty(self) -> torch.Tensor | None:
        """FedProx: mu/2 * ||w - w_global||^2 over the trainable parameters."""
        mu = self.hooks.proximal_mu
        if mu <= 0:
            return None
        terms = [
            (p - self.start[k]).pow(2).sum() for k, p in self.params.items() if p.requires_grad
        ]
        return 0.5 * mu * torch.stack(terms).sum()

    def correct_gradients(self) -> None:
        """SCAFFOLD: g <- g - c_i + c."""
        for key, c in self.c.items():
            grad = self.params[key].grad
            if grad is not None:
                grad.add_(c - self.c_i[key])

    def new_site_control(self, steps: int) -> dict[str, torch.Tensor]:
        """SCAFFOLD option II: c_i+ = c_i - c + (w_global - y) / (K lr)."""
        if steps == 0:
            return dict(self.c_i)
        scale = 1.0 / (steps * self.lr)
        return {
            k: self.c_i[k] - c + (self.start[k] - self.params[k].detach()) * scale
            for k, c in self.c.items()
        }
