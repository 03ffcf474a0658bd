"""Shared mechanics of methods that hold a fixed 0/1 mask on weights while training.

L1-norm filter pruning and magnitude pruning decide *which* weights go in their own way; both
then keep them at zero the same way: the gradient is masked before the optimizer step (so
momentum never builds up on pruned weights) and the weights are re-masked after it.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskedWeights:
    """Mixin for pruning hooks whose state is ``param_masks``: parameter name → 0/1 mask."""

    param_masks: dict[str, torch.Tensor]

    def _apply(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, mask in self.param_masks.items():
                params[name].mul_(mask)

    def tracked_parameters(self) -> set[str]:
        return set()

    def regularize(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, mask in self.param_masks.items():
            if params[name].grad is not None:
                params[name].grad.mul_(mask)

    def after_step(self, model: nn.Module, updates: dict[str, torch.Tensor]) -> None:
        self._apply(model)

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return dict(self.param_masks)
