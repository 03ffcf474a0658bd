"""Inference-only sparse replacements for ``nn.Conv2d`` and ``nn.Linear``.

Built from a trained or pruned dense layer with ``from_dense``: exact zeros of its weight are
dropped into CSR (:mod:`model.sparse.csr`) and the forward pass runs the direct sparse kernel
(:mod:`model.sparse.functional`), giving the dense layer's output (up to float rounding).
Outputs carry no gradient: these modules are for deployment, not training.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from model.sparse.csr import ConvCSR, LinearCSR, conv_weight_to_csr, linear_weight_to_csr
from model.sparse.functional import Implementation, _pair, sparse_conv2d, sparse_linear


def _check_inference(x: torch.Tensor, layer: str) -> None:
    if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad:
        raise RuntimeError(
            f"{layer} is inference-only (no backward); run it under torch.no_grad() or "
            "torch.inference_mode(), or keep the dense layer for training"
        )


def _csr_of_buffers(layer: nn.Module, index: str) -> None:
    """After ``load_state_dict``: point the layer's CSR weight at its buffers again. With
    ``assign=True`` the buffers are new tensors the CSR does not hold; copied in place, the
    CSR's caches are stale (its own version check would drop them; this makes it explicit)."""
    arrays = {"values": layer.values, index: getattr(layer, index), "row_ptr": layer.row_ptr}
    layer.weight_csr = dataclasses.replace(layer.weight_csr, **arrays)


def _current_csr(layer: nn.Module, index: str):
    """The layer's CSR weight over its current buffers. ``.to()``/``.float()`` (``_apply``),
    ``torch.func.functional_call`` and assigning a buffer replace the buffers, and the layer
    went on computing with the arrays it was built from (a substituted weight was ignored,
    later in-place writes to the new buffers too): a buffer that is not the CSR's array
    re-points the CSR at the buffers first (its caches start afresh)."""
    csr, buffers = layer.weight_csr, layer._buffers
    if (
        buffers["values"] is not csr.values
        or buffers[index] is not getattr(csr, index)
        or buffers["row_ptr"] is not csr.row_ptr
    ):
        _csr_of_buffers(layer, index)
        csr = layer.weight_csr
    return csr


def _padding_of(conv: nn.Conv2d) -> tuple[int, int]:
    """nn.Conv2d's padding as a symmetric (top/bottom, left/right) pair."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero padding is supported, got padding_mode={conv.padding_mode!r}")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' with an even kernel extent is asymmetric; unsupported")
        return (total[0] // 2, total[1] // 2)
    return (int(conv.padding[0]), int(conv.padding[1]))


class SparseConv2d(nn.Module):
    """A 2-D convolution whose weight is stored and applied in CSR (direct sparse conv).

    Build with :meth:`from_dense`. ``fuse_relu=True`` also applies ReLU inside the kernel, so
    it replaces a ``Conv2d`` followed by ``ReLU``.
    """

    def __init__(
        self,
        weight: ConvCSR,
        bias: torch.Tensor | None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        fuse_relu: bool = False,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        self.weight_csr = weight
        self.in_channels = weight.in_channels
        self.out_channels = weight.out_channels
        self.kernel_size = weight.kernel
        self.groups = weight.groups
        # Pairs of ints (a list would make every call rebuild its plan: it is no cache key).
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.fuse_relu = fuse_relu
        self.implementation: Implementation = implementation
        # Buffers so .state_dict() / deepcopy carry the CSR arrays.
        self.register_buffer("values", weight.values)
        self.register_buffer("kernel_index", weight.kernel_index)
        self.register_buffer("row_ptr", weight.row_ptr)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        fuse_relu: bool = False,
        implementation: Implementation = "auto",
    ) -> SparseConv2d:
        """The sparse equivalent of ``conv`` (plus ReLU when ``fuse_relu``).

        Raises:
            TypeError: ``conv`` is not an ``nn.Conv2d``.
            ValueError: unsupported padding mode or asymmetric ``'same'`` padding.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected nn.Conv2d, got {type(conv).__name__}")
        padding = _padding_of(conv)
        csr = conv_weight_to_csr(conv.weight.detach(), conv.groups)
        bias = None if conv.bias is None else conv.bias.detach().to("cpu", torch.float32)
        return cls(
            csr,
            bias,
            stride=(int(conv.stride[0]), int(conv.stride[1])),
            padding=padding,
            dilation=(int(conv.dilation[0]), int(conv.dilation[1])),
            fuse_relu=fuse_relu,
            implementation=implementation,
        )

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return self.weight_csr.sparsity

    @property
    def nnz(self) -> int:
        return self.weight_csr.nnz

    def to_dense(self) -> nn.Conv2d:
        """An equivalent dense ``nn.Conv2d`` (without the fused ReLU)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight_csr.to_dense())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        _csr_of_buffers(self, "kernel_index")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_inference(x, "SparseConv2d")
        unbatched = isinstance(x, torch.Tensor) and x.dim() == 3  # (C, H, W), as nn.Conv2d
        if unbatched:
            x = x.unsqueeze(0)
        if isinstance(x, torch.Tensor) and x.layout == torch.strided and not x.is_contiguous():
            x = x.contiguous()  # e.g. channels_last input; the kernel wants NCHW
        out = sparse_conv2d(
            x,
            _current_csr(self, "kernel_index"),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            fuse_relu=self.fuse_relu,
            implementation=self.implementation,
        )
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.fuse_relu:
            text += ", fuse_relu=True"
        return text + f", sparsity={self.sparsity:.3f}, nnz={self.nnz}"


class SparseLinear(nn.Module):
    """A fully connected layer with a CSR weight (CSR × dense). Build with :meth:`from_dense`."""

    def __init__(
        self,
        weight: LinearCSR,
        bias: torch.Tensor | None,
        fuse_relu: bool = False,
        implementation: Implementation = "auto",
    ) -> None:
        super().__init__()
        self.weight_csr = weight
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.fuse_relu = fuse_relu
        self.implementation: Implementation = implementation
        self.register_buffer("values", weight.values)
        self.register_buffer("cols", weight.cols)
        self.register_buffer("row_ptr", weight.row_ptr)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_dense(
        cls, linear: nn.Linear, fuse_relu: bool = False, implementation: Implementation = "auto"
    ) -> SparseLinear:
        """The sparse equivalent of ``linear`` (plus ReLU when ``fuse_relu``).

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        csr = linear_weight_to_csr(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32)
        return cls(csr, bias, fuse_relu=fuse_relu, implementation=implementation)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return self.weight_csr.sparsity

    @property
    def nnz(self) -> int:
        return self.weight_csr.nnz

    def to_dense(self) -> nn.Linear:
        """An equivalent dense ``nn.Linear`` (without the fused ReLU)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weight_csr.to_dense())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        _csr_of_buffers(self, "cols")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_inference(x, "SparseLinear")
        if isinstance(x, torch.Tensor) and x.layout == torch.strided and not x.is_contiguous():
            x = x.contiguous()
        return sparse_linear(
            x, _current_csr(self, "cols"), self.bias, self.fuse_relu,
            implementation=self.implementation,
        )  # fmt: skip

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, out_features={self.out_features}"
        if self.bias is None:
            text += ", bias=False"
        if self.fuse_relu:
            text += ", fuse_relu=True"
        return text + f", sparsity={self.sparsity:.3f}, nnz={self.nnz}"
