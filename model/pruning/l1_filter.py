"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017;
docs/research.md §5).

1. Score every filter ``F_j`` of a layer by ``s_j = Σ |F_j|`` (§3.1, eq. 1 of the paper: the
   sum of absolute kernel weights over input channels and positions).
2. Remove the ``C − keep`` lowest-scoring filters, ``keep = int(C·(1 − p))`` for the layer's
   ratio ``p``, their feature maps, the BN channels and the matching input channels of the next
   layer (§3.2).
3. Across layers (§3.3): *independent* scores each layer on its original weights; *greedy*
   ignores the input channels already removed from the previous layer.
4. ResNets (§3.3, Fig. 3): the first conv of each residual block is pruned freely. The second
   keeps the width the shortcut needs (``second_conv="keep"``, default), or, with
   ``second_conv="follow-projection"`` (Li's ResNet-34-pruned-C rule), follows the projection
   shortcut: in a stage whose first block has a 1×1 projection, the projection's filters are
   ranked by L1 norm and the same filter indices go from the projection and from the second
   conv (the last conv of a bottleneck) of every block of the stage, BatchNorms included, so
   those residual-stream channels are 0 throughout the stage. Stages without a projection (the
   first stage of ResNet-18/34, every option-A CIFAR ResNet stage) keep their width. Sensitive
   layers are skipped (``skip``: Li's layer ids — stem conv = 1, first conv of residual block
   ``b`` = ``2b`` — or module paths) and ratios are set per stage (``stage_ratios``).
5. Retrain once (§4: constant lr, 40 epochs on CIFAR-10): here the fine-tune phase, with the
   pruned filters frozen at zero.

Pruned filters are masked together with their bias and BN scale and shift, so a pruned channel
is exactly zero (the paper removes the BN channel) and surgery (:mod:`model.surgery`) cuts the
network without changing its function. Sensitivity analysis is in :mod:`model.sensitivity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model.pruning.masking import MaskedWeights
from model.surgery import (
    StreamGroup,
    block_convs,
    channel_groups,
    filter_norms,
    residual_blocks,
    stream_groups,
    stream_keep,
)
from model.training import Callback
from perfmodel.predict import LayerPrediction

SELECTIONS = ("independent", "greedy")
CRITERIA = ("smallest", "largest", "random")
SECOND_CONV = ("keep", "follow-projection")


@dataclass
class L1FilterConfig:
    """L1-filter hyperparameters; every default has its reason."""

    ratio: float = 0.5  # p of every prunable conv (Li's VGG-16-A prunes its layers by 50%)
    stage_ratios: list[float] = field(default_factory=list)  # ResNet stages (Li: [0.6, 0.3, 0.1])
    layer_ratios: dict[str, float] = field(default_factory=dict)  # per-layer overrides
    skip: list[int | str] = field(default_factory=list)  # sensitive layers: Li ids or paths
    selection: str = "independent"  # Li's default; "greedy" is §3.3's alternative
    # ResNet second convs: "keep" their width (Li's ResNet-56/110 and ResNet-34-A/B), or
    # "follow-projection" (§3.3, ResNet-34-pruned-C: the projection's ranking, stage-wide)
    second_conv: str = "keep"
    inference_batch: int = 1  # batch size the speedups are predicted and measured for

    def __post_init__(self) -> None:
        ratios = [self.ratio, *self.stage_ratios, *self.layer_ratios.values()]
        if any(not 0 <= r < 1 for r in ratios):
            raise ValueError(f"pruning ratios must be in [0, 1), got {ratios}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}")
        if self.second_conv not in SECOND_CONV:
            raise ValueError(f"second_conv must be one of {', '.join(SECOND_CONV)}")


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Li et al.'s layer numbers: convs in definition order, 1×1 projection shortcuts left out
    (ResNet: stem = 1, block ``b``'s first conv = ``2b``)."""
    convs = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and "downsample" not in name and "shortcut" not in name
    ]
    return {name: index for index, name in enumerate(convs, start=1)}  # fmt: skip


def _stage(name: str) -> int | None:
    head = name.split(".", 1)[0]
    return int(head[5:]) - 1 if head.startswith("layer") and head[5:].isdigit() else None


def prunable_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Convs whose filters may go: every conv of a plain chain, the inner convs of a block."""
    modules = dict(model.named_modules())
    return [g.producer for g in channel_groups(model, tuple(input_shape))
            if isinstance(modules[g.producer], nn.Conv2d)]  # fmt: skip


def followed_streams(
    model: nn.Module, input_shape: Sequence[int], config: L1FilterConfig
) -> list[StreamGroup]:
    """The residual streams pruned by the projection's ranking (none unless
    ``second_conv="follow-projection"``): one per stage whose first block has a projection."""
    if config.second_conv != "follow-projection":
        return []
    return stream_groups(model, tuple(input_shape))


def layer_ratios(
    model: nn.Module, input_shape: Sequence[int], config: L1FilterConfig
) -> dict[str, float]:
    """Pruning ratio of every prunable layer (0 for skipped ones).

    With ``second_conv="follow-projection"`` every producer of a followed residual stream (the
    projection and each block's second conv) gets the stream's ratio: 0 when ``skip`` names the
    projection or any of those second convs (by path or Li id), else ``layer_ratios`` of the
    projection, else the stage's ratio, else ``ratio``.

    Raises:
        ValueError: ``layer_ratios`` names a second conv that follows a projection (set the
            stream's ratio on the projection instead).
    """
    ids = layer_ids(model)
    skip = {str(s) for s in config.skip}

    def skipped(name: str) -> bool:
        return name in skip or str(ids.get(name)) in skip

    def ratio(name: str) -> float:
        if name in config.layer_ratios:
            return config.layer_ratios[name]
        if config.stage_ratios and _stage(name) is not None:
            return config.stage_ratios[_stage(name)]
        return config.ratio

    ratios = {name: 0.0 if skipped(name) else ratio(name)
              for name in prunable_layers(model, input_shape)}  # fmt: skip
    for stream in followed_streams(model, input_shape, config):
        followers = [p for p in stream.producers[1:] if p in config.layer_ratios]
        if followers:
            raise ValueError(
                f"{', '.join(followers)} follow {stream.projection}'s ranking; set the stream's "
                f"ratio on {stream.projection} in layer_ratios"
            )
        p = 0.0 if any(map(skipped, stream.producers)) else ratio(stream.projection)
        ratios.update(dict.fromkeys(stream.producers, p))
    return ratios


def keep_counts(ratios: dict[str, float], model: nn.Module) -> dict[str, int]:
    """Filters kept per layer: ``keep = int(C·(1 − p))`` (Li et al.), at least one.

    NB: 1e-9 is added before truncating, so 50·(1 − 0.9) = 4.999… keeps 5 filters, not 4.
    """
    modules = dict(model.named_modules())
    return {n: max(1, int(modules[n].out_channels * (1 - p) + 1e-9)) for n, p in ratios.items()}


def plan(model: nn.Module, input_shape: Sequence[int], config: L1FilterConfig) -> dict[str, int]:
    """Layer path → filters kept, for every prunable layer (the pruning plan); with
    ``second_conv="follow-projection"`` also every producer of a followed residual stream (the
    same count for the projection and the stage's second convs)."""
    return keep_counts(layer_ratios(model, input_shape, config), model)


def select_filters(
    model: nn.Module,
    input_shape: Sequence[int],
    keep: dict[str, int],
    selection: str = "independent",
    criterion: str = "smallest",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-mask (C,) per planned layer.

    A residual stream (:func:`model.surgery.stream_groups`) whose projection or second convs
    are in ``keep`` is ranked by the projection's filters; the projection and every second conv
    of its stage get the same mask (Li et al. §3.3). Streams are decided before the first
    convs of their stage, so ``greedy`` scores those convs without the stream channels removed.

    Args:
        keep: filters to keep per layer (from :func:`plan`).
        selection: ``independent`` (scores on the original weights) or ``greedy`` (ignoring the
            input channels already removed from the previous layer).
        criterion: remove the ``smallest`` L1 norms (the method), or the ``largest`` or
            ``random`` ones (the baselines of the sensitivity analysis, Li et al. Fig. 2).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}")
    modules = dict(model.named_modules())
    inputs_kept: dict[str, torch.Tensor] = {}
    masks = {}

    def choose(producer: str, kept: int) -> torch.Tensor:
        weight = modules[producer].weight.detach()  # (C, in, R, S)
        if selection == "greedy" and producer in inputs_kept:
            weight = weight[:, inputs_kept[producer]]
        scores = weight.abs().reshape(weight.shape[0], -1).sum(1)  # (C,) eq. 1
        if criterion == "largest":
            scores = -scores
        elif criterion == "random":  # drawn on the CPU: the same filters on any device
            scores = torch.rand(len(scores), generator=generator).to(weight.device)
        mask = torch.zeros(len(scores), dtype=torch.bool, device=weight.device)
        mask[torch.argsort(scores, descending=True, stable=True)[:kept]] = True
        return mask

    streams = {}
    for stream in stream_groups(model, tuple(input_shape)):
        width = stream_keep(stream, keep)
        if width is not None:
            streams[stream.blocks[0]] = (stream, width)
    for group in channel_groups(model, tuple(input_shape)):
        stream, width = streams.pop(group.producer.rpartition(".")[0], (None, 0))
        if stream is not None:  # the stage's stream, before its first conv reads it
            mask = choose(stream.projection, width)
            masks.update(dict.fromkeys(stream.producers, mask))
            inputs_kept.update(dict.fromkeys(stream.consumers, mask))
        if group.producer not in keep:
            continue
        masks[group.producer] = choose(group.producer, keep[group.producer])
        for consumer in group.consumers:
            inputs_kept[consumer] = masks[group.producer]
    return masks


def parameter_masks(model: nn.Module, input_shape: Sequence[int],
                    filters: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # fmt: skip
    """0/1 masks of the parameters of pruned filters: weight rows, bias, BN scale and shift."""
    norms = {g.producer: g.norm for g in channel_groups(model, tuple(input_shape))}
    if set(filters) - set(norms):  # residual-stream producers (second convs, projections)
        for stream in stream_groups(model, tuple(input_shape)):
            norms.update(zip(stream.producers, stream.norms, strict=True))
    params = dict(model.named_parameters())
    masks = {}
    for layer, keep in filters.items():
        names = [f"{layer}.weight", f"{layer}.bias"]
        if norms.get(layer):
            names += [f"{norms[layer]}.weight", f"{norms[layer]}.bias"]
        for name in names:
            if name in params:
                shape = (-1,) + (1,) * (params[name].dim() - 1)
                masks[name] = keep.to(params[name].dtype).reshape(shape).expand_as(params[name])
                masks[name] = masks[name].clone()
    return masks


class L1Filter(MaskedWeights):
    """L1-norm filter pruning as training hooks (:class:`model.training.PruningHooks`).

    Prunes once at the start of the prune phase, holds the pruned filters at zero while the
    network retrains (one prune epoch, then the fine-tune phase: Li's "retrain once").
    """

    name = "l1-filter"
    structured = True

    def __init__(self, predictions: dict[str, LayerPrediction], config: L1FilterConfig):
        self.config = config
        self.predictions = predictions
        self.input_shape: tuple[int, ...] | None = None
        self.param_masks: dict[str, torch.Tensor] = {}
        self.states: dict[str, str] = {}

    def start(self, model: nn.Module, emit: Callback) -> None:
        self.input_shape = self.input_shape or _input_shape(self.predictions)
        ratios = layer_ratios(model, self.input_shape, self.config)
        keep = keep_counts(ratios, model)
        filters = select_filters(model, self.input_shape, keep, self.config.selection)
        self.param_masks = parameter_masks(model, self.input_shape, filters)
        modules = dict(model.named_modules())
        streams = followed_streams(model, self.input_shape, self.config)
        leader = {p: s.projection for s in streams for p in s.producers[1:]}
        if self.config.second_conv == "follow-projection":
            self._identity_stages(model, streams, emit)
        for name, mask in filters.items():
            channels = modules[name].out_channels
            removed = channels - int(mask.sum())
            if name in leader:
                self.states[name] = "pruned" if ratios[name] else "skipped"
                emit({"type": "decision", "epoch": 0, "layer": name,
                      "action": "prune" if ratios[name] else "exclude",
                      "reason": f"follows {leader[name]}: removed the same {removed} of "
                                f"{channels} residual-stream channels"})  # fmt: skip
            elif ratios[name] == 0:
                self.states[name] = "skipped"
                emit({"type": "decision", "epoch": 0, "layer": name, "action": "exclude",
                      "reason": "skipped (sensitive layer or ratio 0)"})  # fmt: skip
            else:
                self.states[name] = "pruned"
                emit({"type": "decision", "epoch": 0, "layer": name, "action": "prune",
                      "reason": f"removed {removed} of {channels} filters with the "
                                f"{'smallest' if removed else 'no'} L1 norms (ratio "
                                f"{ratios[name]:.2f}, {self.config.selection})"})  # fmt: skip
        self._apply(model)

    def _identity_stages(
        self, model: nn.Module, streams: list[StreamGroup], emit: Callback
    ) -> None:
        """Decision events for the second convs that cannot follow a projection (their stage
        has identity or zero-padding shortcuts only): they keep the stream's width."""
        followed = {b for s in streams for b in s.blocks}
        for block_name, block in residual_blocks(model).items():
            if block_name in followed:
                continue
            name = f"{block_name}.{block_convs(block)[-1]}"
            self.states[name] = "skipped"
            emit({"type": "decision", "epoch": 0, "layer": name, "action": "exclude",
                  "reason": "no projection shortcut in its stage to follow: the residual "
                            "stream keeps its width"})  # fmt: skip

    def end_epoch(self, model: nn.Module, epoch: int, emit: Callback) -> bool:
        return True  # pruned once; retraining continues in the fine-tune phase

    def layer_states(self) -> dict[str, str]:
        return dict(self.states)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.param_masks, "states": dict(self.states)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.param_masks = dict(state["masks"])
        self.states = dict(state["states"])


def _input_shape(predictions: dict[str, LayerPrediction]) -> tuple[int, ...]:
    """(C, H, W) of the network input from the first layer's spec (the pipeline sets the
    registered input shape instead; this is for hooks built by hand)."""
    first = next(iter(predictions.values())).layer
    if hasattr(first, "in_height"):
        return (first.in_channels, first.in_height, first.in_width)
    return (first.in_features,)


__all__ = [
    "L1Filter",
    "L1FilterConfig",
    "filter_norms",
    "followed_streams",
    "layer_ids",
    "plan",
    "select_filters",
]
