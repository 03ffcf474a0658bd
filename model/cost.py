"""FLOPs and parameters of a network as Li et al. count them ("Pruning Filters for Efficient
ConvNets", ICLR 2017, Table 1): multiply-accumulates of every Conv2d and Linear call (no BN,
bias, ReLU or pooling), and the weights and biases of those layers (no BN).

Shapes come from :func:`perfmodel.extract.extract_layers`, so a network built on the meta
device is counted without allocating anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from perfmodel.extract import extract_layers


@dataclass(frozen=True)
class Cost:
    """``macs``: conv + linear multiply-accumulates per image; ``params``: their weights+biases."""

    macs: int
    params: int

    def reduction(self, pruned: Cost) -> tuple[float, float]:
        """Fractions of MACs and parameters that ``pruned`` removed relative to ``self``."""
        return 1.0 - pruned.macs / self.macs, 1.0 - pruned.params / self.params


def count_cost(model: nn.Module, input_shape: Sequence[int], exclude: Sequence[str] = ()) -> Cost:
    """MACs and parameters of ``model``'s Conv2d/Linear layers on one input.

    Args:
        model: any module (meta device is fine).
        input_shape: (C, H, W) of one example.
        exclude: substrings of module paths to leave out (``"downsample"``: Li et al. count
            ResNet-34 without its 1×1 projection shortcuts).
    """

    def kept(name: str) -> bool:
        return not any(part in name for part in exclude)

    from model.fibres import FibreConv2d

    macs = sum(spec.macs for spec in extract_layers(model, input_shape) if kept(spec.name))
    macs += sum(m for name, m in _fibre_macs(model, input_shape).items() if kept(name))
    params = sum(
        p.numel()
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear | FibreConv2d) and kept(name)
        for p in module.parameters(recurse=False)
    )
    return Cost(macs, params)


def _fibre_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """MACs of the fibre layers (:class:`model.fibres.FibreConv2d`, which the extractor does
    not see): each output pixel of each filter multiplies its group's kept fibres (padded to
    the fullest group: the GEMM that runs)."""
    import torch

    from model.fibres import FibreConv2d

    layers = {n: m for n, m in model.named_modules() if isinstance(m, FibreConv2d)}
    if not layers:
        return {}
    macs: dict[str, int] = {}

    def record(name: str, module: FibreConv2d, out: torch.Tensor) -> None:
        if name not in macs:  # first call, as the extractor counts
            macs[name] = module.out_channels * module.fibres_per_group * out.shape[-2] * \
                out.shape[-1]  # fmt: skip

    handles = [
        module.register_forward_hook(lambda m, _args, out, name=name: record(name, m, out))
        for name, module in layers.items()
    ]
    training = model.training
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return macs
