"""Fibre removal: all-zero shape fibres of a convolution become a smaller dense GEMM.

SSL's ``shape`` groups (Wen et al., NIPS 2016, §3.2, Fig. 2 "shape-wise") are the fibres
``W[:, c, r, s]``: one input position ``(c, r, s)`` taken across all the filters, i.e. one
column of the lowered weight matrix ``(K, C·R·S)`` that im2col + GEMM multiplies with the
lowered input ``(C·R·S, P·Q)``. A zero fibre is a zero column, so its row of the lowered input
need not be built and its column need not be multiplied. :mod:`model.surgery` removes whole
channels, filters and branches; this module removes the remaining zero fibres:

    out[n, k, p, q] = b[k] + Σ_{j kept} W[k, c_j, r_j, s_j] · x_pad[n, c_j, p·sh + r_j·dh,
                                                                         q·sw + s_j·dw]

computed as a *gather* of the kept rows of the lowered input, one ``index_select`` of the
shifted input per kernel position ``(r, s)``, into ``cols (F_kept, N, P, Q)``, followed by one
dense GEMM ``(K, F_kept) × (F_kept, N·P·Q)``, run as a 1×1 convolution (oneDNN for large
weights, where it beat MKL's GEMM on this host: :data:`_MKLDNN_MIN_WEIGHTS`). Large batches are
gathered in chunks of images that fit in cache (:data:`_COLS_BUDGET`).
For a grouped convolution a fibre is taken per group, ``W[g·K/G : (g+1)·K/G, c, r, s]``, each
group's kept fibres are padded to the same count with zero weights, and the GEMM is a grouped
1×1 convolution.

Equality. The kept fibres are exactly the non-zero columns, so for finite inputs the fibre
layer computes the same sum as the original convolution, only without the ``0 · x`` terms; the
outputs differ by float summation order (≤ 1e-5 in the tests, which compare whole networks
against the masked ones). A removed fibre can never revive: its weight is gone.

Use: :func:`remove_fibres` after :func:`model.surgery.cut` (fibre layers are no longer
``nn.Conv2d``, so surgery and :func:`perfmodel.extract.extract_layers` do not see them;
:func:`fibre_layer_spec` describes them to the performance model). To reload a saved network,
:func:`rebuild_fibres` replaces the recorded convolutions by empty fibre layers, then
``load_state_dict`` fills them (every tensor is a parameter or buffer: safetensors-safe).

Run ``python -m model.fibres`` for the speed table behind :data:`DEFAULT_MIN_REMOVED`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.measure import median_times
from model.surgery import BiasMapConv2d
from model.threads import torch_threads
from perfmodel.layers import Conv2dSpec

DEFAULT_MIN_REMOVED = 0.75
"""Fraction of zero fibres from which :func:`remove_fibres` replaces a convolution.

From :func:`measure_speed` on the 2-core development host (AMD EPYC, shared; 1 thread, batch
1 and 32; 3×3 convs 16→16 and 64→64 @ 32×32, 128→128 @ 16×16; two runs): with 64 or 128
channels the fibre layer was 0.6–1.1× ``F.conv2d`` at 50 % of the fibres removed, 0.7–1.4× at
70 %, 1.05–1.5× at 75 % (faster in every case) and 1.6–2.7× at 90 %. With 16 channels it
did not pay reliably (0.3–1.1× up to 80 %, 0.96–1.1× at 90 %): copies of the input, not
multiply-adds, dominate such thin layers. See ``docs/methods.md`` ("Fibre removal").
"""
DEFAULT_MIN_WEIGHTS = 4096
"""Weights of the kept GEMM (``K ×`` kept fibres per group) below which a layer stays a
convolution: the gather's fixed cost outweighs what it saves (16-channel 3×3 layers, and
LeNet-5's conv2 cut to 1→50 with 6 of 25 fibres, ran slower as fibre layers)."""

_COLS_BUDGET = 1 << 18
"""Elements of the gathered input ``cols`` per chunk (1 MiB in fp32, one core's L2 here):
larger batches are cut into chunks of images. The 1×1 GEMM ran at 40–120 GFLOP/s with 256–1024
columns of 144–288 rows and at 30–50 with 16384 (out of cache); without chunks the
64→64 @ 32×32, batch 32, 50 % case of :func:`measure_speed` was 0.25× dense, with 0.6–1.0×."""

_MKLDNN_MIN_WEIGHTS = 1 << 14
"""From this many GEMM weights (K·F) on, the 1×1 convolution calls oneDNN directly:
``F.conv2d`` sends a single-threaded 1×1 convolution of batch < 16 to its native GEMM (MKL),
which on this host's AMD CPU was as fast as oneDNN or faster below K·F = 16384 and up to 1.5×
slower above (K = 64, 128 with F = 144, 288; measured once, 1 thread, 256–16384 columns)."""

_HAS_MKLDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()


def _conv1x1(
    cols: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """``F.conv2d(cols, weight, bias, groups=groups)`` for a 1×1 ``weight``, through oneDNN
    where that was measured faster (:data:`_MKLDNN_MIN_WEIGHTS`)."""
    if (
        _HAS_MKLDNN
        and weight.shape[0] * weight.shape[1] >= _MKLDNN_MIN_WEIGHTS
        and cols.device.type == "cpu"
        and cols.dtype == torch.float32
        and not (torch.is_grad_enabled() and (cols.requires_grad or weight.requires_grad))
    ):
        return torch.mkldnn_convolution(cols, weight, bias, (0, 0), (1, 1), (1, 1), groups)
    return F.conv2d(cols, weight, bias, groups=groups)


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``conv``'s zero padding as ``(left, right, top, bottom)`` (the order ``F.pad`` takes)."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero padding is supported, got padding_mode={conv.padding_mode!r}")
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        # torch pads d·(k−1) in total per dimension, the smaller half first (stride 1 only).
        total_h, total_w = (
            d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)
        )
        return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
    ph, pw = (int(p) for p in conv.padding)
    return (pw, pw, ph, ph)


def zero_fibres(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Boolean ``(G, C/G, R, S)``: True where fibre ``(g, c, r, s)`` is zero in every filter of
    group ``g`` (for ``groups=1`` this is SSL's shape group ``W[:, c, r, s] = 0``)."""
    K = weight.shape[0]
    per_group = weight.detach().reshape(groups, K // groups, *weight.shape[1:])
    return (per_group != 0).sum(dim=1) == 0  # (G, C/G, R, S)


def fibre_layer_spec(original: Conv2dSpec, fibres_per_group: int) -> Conv2dSpec | None:
    """The dense computation a :class:`FibreConv2d` runs, as a performance-model layer spec.

    It is the GEMM of the gathered input: a 1×1 convolution with ``G · fibres_per_group``
    input channels (the kept fibres, padded per group), ``K`` outputs and groups ``G`` on the
    ``P × Q`` output grid of ``original``. ``perfmodel`` dense time of it against that of
    ``original`` is the predicted speedup of fibre removal.

    Args:
        original: the convolution before fibre removal (any batch; it is kept).
        fibres_per_group: kept fibres of the fullest group (:attr:`FibreConv2d.fibres_per_group`).

    Returns:
        The spec, named like ``original``; ``None`` when no fibre is kept (the layer is its
        bias: no computation to predict).
    """
    # NB: the gather itself (one read of the kept input rows) is not in C; S_A counts the
    # gathered matrix (G·F × P × Q) instead of the original input (C × H × W).
    if fibres_per_group < 0:
        raise ValueError(f"fibres_per_group must be >= 0, got {fibres_per_group}")
    if fibres_per_group == 0:
        return None
    return Conv2dSpec(
        name=original.name,
        batch=original.batch,
        per_example=original.per_example,  # with_batch scales both specs alike
        dtype_bytes=original.dtype_bytes,
        in_channels=original.groups * fibres_per_group,
        out_channels=original.out_channels,
        in_height=original.out_height,
        in_width=original.out_width,
        kernel=(1, 1),
        groups=original.groups,
    )


@dataclass(frozen=True)
class _Block:
    """One kernel position's gather: input ``channels`` shifted by ``(r, s)`` → ``cols`` rows
    ``start : start + len(channels)`` (``rows`` holds them when they are not contiguous)."""

    r: int
    s: int
    channels: torch.Tensor  # (B,) int64, absolute input channels
    start: int
    rows: torch.Tensor  # (B,) int64, rows of cols
    contiguous: bool


class FibreConv2d(nn.Module):
    """A ``Conv2d`` computed over its non-zero shape fibres only (see the module docstring).

    Build from a convolution with :meth:`from_conv`; the constructor makes an empty layer of
    the given shapes (for :func:`rebuild_fibres`, before ``load_state_dict``).

    State: ``weight`` (K, F) — the kept columns of each group, padded with zeros to
    ``F = fibres_per_group``; ``bias`` (K,) or absent; ``fibres`` (G, F) int64 — the flat
    position ``(c·R + r)·S + s`` of each column inside its group's ``(C/G, R, S)`` kernel, -1
    for padding; ``bias_map`` (K, P, Q) when built from a
    :class:`model.surgery.BiasMapConv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        fibres_per_group: int,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int, int, int] = (0, 0, 0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        bias_map: tuple[int, int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        R, S = kernel_size
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        if not 0 <= fibres_per_group <= in_channels // groups * R * S:
            raise ValueError(
                f"fibres_per_group={fibres_per_group} out of range for a "
                f"{in_channels // groups}x{R}x{S} kernel"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = (int(R), int(S))
        self.stride = tuple(int(v) for v in stride)
        self.padding = tuple(int(v) for v in padding)  # (left, right, top, bottom)
        self.dilation = tuple(int(v) for v in dilation)
        self.fibres_per_group = fibres_per_group
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.zeros(out_channels, fibres_per_group, **factory))
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        self.register_buffer(
            "fibres", torch.full((groups, fibres_per_group), -1, dtype=torch.int64, device=device)
        )
        if bias_map is not None:
            self.register_buffer("bias_map", torch.zeros(tuple(bias_map), **factory))
        else:
            self.bias_map = None
        self._plan_key: tuple | None = None
        self._plan: list[_Block] = []
        self._padded = False

    # ------------------------------------------------------------------ building

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> FibreConv2d:
        """The fibre layer computing what ``conv`` computes (an ``nn.Conv2d`` or
        :class:`model.surgery.BiasMapConv2d`; zero padding only)."""
        if type(conv) not in (nn.Conv2d, BiasMapConv2d):
            raise TypeError(f"expected nn.Conv2d or BiasMapConv2d, got {type(conv).__name__}")
        weight = conv.weight.detach()
        K, _, R, S = weight.shape
        G = conv.groups
        kept = ~zero_fibres(weight, G)  # (G, C/G, R, S)
        # Sorted by (r, s, c) inside each group: one contiguous block of rows per position.
        positions = [kept[g].permute(1, 2, 0).nonzero() for g in range(G)]  # (n_g, 3): r, s, c
        F_max = max(len(p) for p in positions)
        bias_map = tuple(conv.bias_map.shape) if isinstance(conv, BiasMapConv2d) else None
        layer = cls(
            conv.in_channels, K, (R, S), F_max, stride=conv.stride,
            padding=_explicit_padding(conv), dilation=conv.dilation, groups=G,
            bias=conv.bias is not None, bias_map=bias_map, device=weight.device,
            dtype=weight.dtype,
        )  # fmt: skip
        Kg = K // G
        with torch.no_grad():
            for g, pos in enumerate(positions):
                r, s, c = pos.unbind(1)
                rows = slice(g * Kg, (g + 1) * Kg)
                layer.weight[rows, : len(pos)] = weight[rows][:, c, r, s]  # (K/G, n_g)
                layer.fibres[g, : len(pos)] = (c * R + r) * S + s
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
            if bias_map is not None:
                layer.bias_map.copy_(conv.bias_map)
        return layer

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (for the manifest; :func:`rebuild_fibres`)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "fibres_per_group": self.fibres_per_group,
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None,
            "bias_map": list(self.bias_map.shape) if self.bias_map is not None else None,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FibreConv2d:
        """An empty layer of the shapes in ``config`` (from :meth:`config`)."""
        bias_map = config.get("bias_map")
        return cls(
            config["in_channels"], config["out_channels"], tuple(config["kernel_size"]),
            config["fibres_per_group"], stride=tuple(config["stride"]),
            padding=tuple(config["padding"]), dilation=tuple(config["dilation"]),
            groups=config["groups"], bias=config["bias"],
            bias_map=tuple(bias_map) if bias_map is not None else None,
        )  # fmt: skip

    @property
    def fibres_kept(self) -> int:
        """Kept fibres over all groups (padding slots not counted)."""
        return int((self.fibres >= 0).sum())

    def extra_repr(self) -> str:
        total = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"fibres={self.fibres_kept}/{total}, stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups > 1:
            text += f", groups={self.groups}"
        return text + f", bias={self.bias is not None}"

    # ------------------------------------------------------------------ running

    def _blocks(self) -> list[_Block]:
        """The gather plan, derived from the ``fibres`` buffer and cached until it changes
        (``load_state_dict`` bumps its version; ``.to()`` gives it a new address)."""
        key = (self.fibres.device, self.fibres.data_ptr(), self.fibres._version)
        if key == self._plan_key:
            return self._plan
        G, F_max = self.fibres.shape
        R, S = self.kernel_size
        Cg = self.in_channels // G
        by_position: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        values = self.fibres.tolist()
        kept = 0
        for g, row in enumerate(values):
            for j, flat in enumerate(row):
                if flat < 0:
                    continue
                if flat >= Cg * R * S:
                    raise ValueError(
                        f"fibre index {flat} out of range for a {Cg}x{R}x{S} kernel "
                        "(corrupt state dict?)"
                    )
                c, rs = divmod(flat, R * S)
                channels, rows = by_position.setdefault(divmod(rs, S), ([], []))
                channels.append(g * Cg + c)
                rows.append(g * F_max + j)
                kept += 1
        device = self.fibres.device
        plan = []
        for (r, s), (channels, rows) in sorted(by_position.items()):
            contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
            plan.append(_Block(r, s, torch.tensor(channels, dtype=torch.int64, device=device),
                               rows[0], torch.tensor(rows, dtype=torch.int64, device=device),
                               contiguous))  # fmt: skip
        self._plan, self._padded, self._plan_key = plan, kept < G * F_max, key
        return plan

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(P, Q) of an input of ``height × width``."""
        (R, S), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        left, right, top, bottom = self.padding
        P = (height + top + bottom - dh * (R - 1) - 1) // sh + 1
        Q = (width + left + right - dw * (S - 1) - 1) // sw + 1
        return P, Q

    def _gather(self, padded: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """``cols (G·F, N, P, Q)``: the kept rows of the lowered input; ``padded`` is
        ``(C, N, H_pad, W_pad)`` (a view)."""
        (sh, sw), (dh, dw), (P, Q) = self.stride, self.dilation, out_size
        N = padded.shape[1]
        rows = self.groups * self.fibres_per_group
        differentiable = torch.is_grad_enabled() and padded.requires_grad
        cols = (padded.new_zeros if self._padded or differentiable else padded.new_empty)(
            rows, N, P, Q
        )
        for block in self._plan:
            shifted = padded[
                :,
                :,
                block.r * dh : block.r * dh + sh * (P - 1) + 1 : sh,
                block.s * dw : block.s * dw + sw * (Q - 1) + 1 : sw,
            ]  # (C, N, P, Q), a strided view
            if differentiable:  # out= has no autograd; slower, for fine-tuning only
                cols = cols.index_copy(0, block.rows, shifted.index_select(0, block.channels))
            elif block.contiguous:
                end = block.start + len(block.channels)
                torch.index_select(shifted, 0, block.channels, out=cols[block.start : end])
            else:
                cols.index_copy_(0, block.rows, shifted.index_select(0, block.channels))
        return cols

    def _forward_chunk(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """``(K, N, P, Q)`` for a batch ``x (N, C, H, W)``."""
        N, K, (P, Q) = x.shape[0], self.out_channels, out_size
        padded = F.pad(x, self.padding) if any(self.padding) else x
        cols = self._gather(padded.transpose(0, 1), out_size)  # (G·F, N, P, Q)
        # The GEMM (K, F) × (F, N·P·Q) per group, as a 1×1 convolution over an N·P × Q image.
        weight = self.weight.view(K, self.fibres_per_group, 1, 1)
        out = _conv1x1(cols.view(1, -1, N * P, Q), weight, self.bias, self.groups)
        return out.view(K, N, P, Q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        N, _, H, W = x.shape
        P, Q = self.output_size(H, W)
        if x.is_meta or self.fibres.is_meta:  # shape propagation (perfmodel.extract, surgery)
            out = x.new_empty(N, self.out_channels, P, Q)
        elif self.fibres_per_group == 0:  # all-zero weight: the output is the bias
            self._blocks()  # validates the buffer
            out = x.new_zeros(N, self.out_channels, P, Q)
            if self.bias is not None:
                out = out + self.bias.view(-1, 1, 1)
        else:
            self._blocks()
            step = max(1, _COLS_BUDGET // (self.groups * self.fibres_per_group * P * Q))
            if step >= N or (torch.is_grad_enabled() and x.requires_grad):
                out = self._forward_chunk(x, (P, Q)).transpose(0, 1).contiguous()
            else:
                out = x.new_empty(N, self.out_channels, P, Q)
                for i in range(0, N, step):
                    out[i : i + step] = self._forward_chunk(x[i : i + step], (P, Q)).transpose(0, 1)
        if self.bias_map is not None:
            out = out + self.bias_map  # (N, K, P, Q)
        return out.squeeze(0) if unbatched else out


# ---------------------------------------------------------------------- the network pass


@dataclass(frozen=True)
class FibreLayer:
    """One convolution as :func:`remove_fibres` found it (MACs per image)."""

    name: str
    fibres_total: int  # C·R·S (C/G·R·S per group, times G)
    fibres_kept: int
    macs_before: int
    macs_after: int  # of the GEMM that runs (padding slots of grouped convs included)
    replaced: bool
    reason: str  # why it was or was not replaced
    dense_spec: Conv2dSpec
    fibre_spec: Conv2dSpec | None  # None: not replaced, or no fibre kept

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.fibres_kept / self.fibres_total


@dataclass
class FibreReport:
    """What :func:`remove_fibres` did; ``architecture`` is what :func:`rebuild_fibres` needs."""

    min_removed: float
    layers: list[FibreLayer] = field(default_factory=list)
    architecture: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def replaced(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.replaced]

    @property
    def macs_before(self) -> int:
        return sum(layer.macs_before for layer in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(layer.macs_after for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (specs as their JSON objects)."""
        layers = []
        for layer in self.layers:
            row = asdict(layer)
            row["dense_spec"] = layer.dense_spec.model_dump(mode="json")
            row["fibre_spec"] = (
                layer.fibre_spec.model_dump(mode="json") if layer.fibre_spec else None
            )
            layers.append(row)
        return {"min_removed": self.min_removed, "layers": layers,
                "architecture": self.architecture}  # fmt: skip


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _conv_specs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Conv2dSpec]:
    """Batch-1 spec of the first call of every Conv2d, by module path."""
    from perfmodel.extract import extract_layers

    return {
        spec.name: spec
        for spec in extract_layers(model, input_shape)
        if isinstance(spec, Conv2dSpec) and "#" not in spec.name
    }


def remove_fibres(
    model: nn.Module,
    input_shape: Sequence[int],
    min_removed: float = DEFAULT_MIN_REMOVED,
    min_weights: int = DEFAULT_MIN_WEIGHTS,
) -> FibreReport:
    """Replace, in place, every convolution with enough zero fibres by a :class:`FibreConv2d`.

    A convolution (``nn.Conv2d`` or :class:`model.surgery.BiasMapConv2d`, zero padding) is
    replaced when it has at least one all-zero fibre and the fraction of its fibres that are
    zero is ``>= min_removed``. Call it on the output of :func:`model.surgery.cut`: zero fibres
    covering whole input channels are handled too, but channel removal already makes them free.
    All-or-nothing: every replacement is built before the first is swapped in.

    Args:
        model: the network (eval mode is what the equality is about); modified in place.
        input_shape: (C, H, W) of one example, for the per-layer shapes and MACs.
        min_removed: fraction of zero fibres from which a layer is replaced. The default
            (:data:`DEFAULT_MIN_REMOVED`, 0.75) is where the fibre layer was faster than
            ``F.conv2d`` for every 64- and 128-channel case measured on this project's
            development host at batch 1 and 32 (:func:`measure_speed`); 16-channel layers
            barely gain even at 90 %.
        min_weights: a layer whose kept GEMM has fewer weights (``K × fibres per group``)
            stays a plain convolution: the gather's fixed cost outweighs the multiply-adds it
            saves (:data:`DEFAULT_MIN_WEIGHTS`, 4096: 16-channel 3×3 layers and LeNet-5's
            conv2 with 6 of 25 fibres ran slower as fibre layers than as convolutions). A layer
            with no fibre left is always replaced (it is its bias).

    Returns:
        Per-layer report, every Conv2d that runs on ``input_shape`` included (replaced or
        not, with the reason), and the architecture to record in the manifest for
        :func:`rebuild_fibres`. A conv called several times is described by its first call.
    """
    if not 0.0 <= min_removed <= 1.0:
        raise ValueError(f"min_removed must be in [0, 1], got {min_removed}")
    specs = _conv_specs(model, input_shape)
    report = FibreReport(min_removed=min_removed)
    replacements: dict[str, FibreConv2d] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or name not in specs:
            continue
        spec = specs[name]
        R, S = module.kernel_size
        total = module.in_channels * R * S
        kept = total - int(zero_fibres(module.weight, module.groups).sum())
        reason, layer = "", None
        if type(module) not in (nn.Conv2d, BiasMapConv2d):
            reason = f"{type(module).__name__} is not a plain Conv2d"
        elif module.padding_mode != "zeros":
            reason = f"padding_mode={module.padding_mode!r}"
        elif kept == total:
            reason = "no zero fibre"
        elif 1.0 - kept / total < min_removed:
            reason = f"{1.0 - kept / total:.1%} of fibres zero < min_removed {min_removed:.1%}"
        elif 0 < (gemm := module.out_channels * _fullest_group(module)) < min_weights:
            reason = f"kept GEMM of {gemm} weights < min_weights {min_weights}"
        else:
            layer = FibreConv2d.from_conv(module)
            reason = f"{1.0 - kept / total:.1%} of fibres zero"
        fibre_spec = fibre_layer_spec(spec, layer.fibres_per_group) if layer else None
        if layer is not None:
            replacements[name] = layer.train(module.training)
            report.architecture[name] = layer.config()
            macs_after = fibre_spec.macs if fibre_spec else 0
        else:
            macs_after = spec.macs
        report.layers.append(FibreLayer(name, total, kept, spec.macs, macs_after,
                                        layer is not None, reason, spec, fibre_spec))  # fmt: skip
    for name, layer in replacements.items():
        _set_module(model, name, layer)
    return report


def _fullest_group(conv: nn.Conv2d) -> int:
    """Kept fibres of the group that keeps most (the GEMM's inner dimension)."""
    kept = ~zero_fibres(conv.weight, conv.groups)
    return int(kept.reshape(conv.groups, -1).sum(1).max())


def rebuild_fibres(model: nn.Module, architecture: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Replace, in place, the convolutions named in ``architecture`` (a report's) by empty
    fibre layers of the recorded shapes; then ``model.load_state_dict`` fills them. Returns
    ``model``. Call it after :func:`model.surgery.rebuild`."""
    for path, config in architecture.items():
        old = model.get_submodule(path)
        if not isinstance(old, nn.Conv2d):
            raise ValueError(f"{path} is a {type(old).__name__}, not the recorded Conv2d")
        _set_module(model, path, FibreConv2d.from_config(config).to(old.weight.device))
    return model


# ----------------------------------------------------------------------- measurement


def measure_speed(
    shapes: Sequence[tuple[int, int, int]] = ((16, 16, 32), (64, 64, 32), (128, 128, 16)),
    removed: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9),
    batches: Sequence[int] = (1, 32),
    repeats: int = 25,
    warmup: int = 3,
    threads: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time :class:`FibreConv2d` against ``F.conv2d`` on 3×3, stride 1, padding 1 convs.

    Args:
        shapes: (C, K, H=W) of each convolution.
        removed: fractions of the C·9 fibres zeroed (chosen at random).
        batches: batch sizes.
        repeats, warmup: timed and untimed rounds; medians, dense and fibre alternating.
        threads: ``torch.set_num_threads`` for the run (restored afterwards).

    Returns:
        One row per case: ``{"layer", "batch", "removed", "dense_ms", "fibre_ms", "speedup",
        "max_abs_error"}``.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with torch_threads(threads):
        for C, K, H in shapes:
            for fraction in removed:
                conv = nn.Conv2d(C, K, 3, padding=1).eval()
                drop = torch.randperm(C * 9, generator=generator)[: round(fraction * C * 9)]
                keep = torch.ones(C * 9)
                keep[drop] = 0
                with torch.no_grad():
                    conv.weight.mul_(keep.view(1, C, 3, 3))
                fibre = FibreConv2d.from_conv(conv).eval()
                for batch in batches:
                    x = torch.randn(batch, C, H, H, generator=generator)
                    with torch.no_grad():
                        error = (fibre(x) - conv(x)).abs().max().item()
                        dense_s, fibre_s = median_times(
                            [lambda x=x, c=conv: F.conv2d(x, c.weight, c.bias, padding=1),
                             lambda x=x, f=fibre: f(x)], repeats, warmup,
                        )  # fmt: skip
                    rows.append({"layer": f"{C}→{K} 3x3 @{H}x{H}", "batch": batch,
                                 "removed": fraction, "dense_ms": round(dense_s * 1e3, 4),
                                 "fibre_ms": round(fibre_s * 1e3, 4),
                                 "speedup": round(dense_s / fibre_s, 2),
                                 "max_abs_error": error})  # fmt: skip
    return rows


if __name__ == "__main__":
    for result in measure_speed():
        print(json.dumps(result, ensure_ascii=False), flush=True)
