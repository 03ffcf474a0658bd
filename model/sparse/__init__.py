"""Direct sparse convolution on CPU (Park et al., ICLR 2017, §2.1) and sparse linear layers.

Public API:
- :class:`SparseConv2d`, :class:`SparseLinear`: inference-only replacements built with
  ``from_dense`` from a trained or pruned ``nn.Conv2d``/``nn.Linear``; same outputs.
- :func:`convert_model`: a copy of a model with the layers a plan marks ``"sparse"`` replaced;
  :func:`to_dense_model` the way back (to trace, export or train it).
- :func:`sparse_conv2d`, :func:`sparse_linear`: the ops on CSR weights
  (:func:`conv_weight_to_csr`, :func:`linear_weight_to_csr`).
- :func:`native_available`, :func:`kernel_info`: whether the native kernel (C++, AVX-512/AVX2,
  OpenMP; built on first use into ``build/sparse_kernel``) runs, or why the pure-PyTorch
  reference does instead.

Importing this package never builds or loads the native kernel; the first op does.
See docs/sparse-kernel.md for the kernel design.
"""

from model.sparse.convert import (
    convert_model,
    convertible_layers,
    to_dense_model,
    unconvertible_layers,
)
from model.sparse.csr import (
    ConvCSR,
    ConvLayout,
    LinearCSR,
    conv_layout,
    conv_weight_to_csr,
    linear_weight_to_csr,
)
from model.sparse.functional import sparse_conv2d, sparse_linear
from model.sparse.layers import SparseConv2d, SparseLinear
from model.sparse.native import KernelInfo, NativeKernelWarning, kernel_info, native_available

__all__ = [
    "ConvCSR",
    "ConvLayout",
    "KernelInfo",
    "LinearCSR",
    "NativeKernelWarning",
    "SparseConv2d",
    "SparseLinear",
    "conv_layout",
    "conv_weight_to_csr",
    "convert_model",
    "convertible_layers",
    "kernel_info",
    "linear_weight_to_csr",
    "native_available",
    "sparse_conv2d",
    "sparse_linear",
    "to_dense_model",
    "unconvertible_layers",
]
