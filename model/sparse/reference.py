"""Pure-PyTorch reference of the sparse ops, on exactly the CSR data the native kernel uses.

Always importable (no compiler needed): it is the fallback when the native extension cannot be
built and, with ``F.conv2d``/``F.linear``, the test oracle. It builds the same padded,
stride-phase-split input as the kernel (:class:`model.sparse.csr.ConvLayout`) and evaluates

    out[n, k, o] = bias[k] + Σ_j value[j] · in_padded[n, g(k), offset[j] + o],   o = y·Wph + x

by gathering, so a wrong offset or layout shows up here as it would in the kernel. It is
correct, not fast.
"""

from __future__ import annotations

import torch

from model.sparse.csr import ConvCSR, ConvLayout, LinearCSR

_GATHER_ELEMENTS = 1 << 24  # bound on the temporary (N, chunk, M) gather, in floats


def pack_input(x: torch.Tensor, layout: ConvLayout, groups: int) -> torch.Tensor:
    """The padded, phase-split input of every group: ``(N, groups·C_g·plane + M)``.

    Trailing ``M`` zeros are the slack that reads of discarded outputs may run into.
    """
    N, C, H, W = x.shape
    (sh, sw), (ph, pw) = layout.stride, layout.padding
    Hph, Wph = layout.phase_rows, layout.row_pitch
    padded = x.new_zeros(N, C, Hph * sh, Wph * sw)  # rows and row pitch of the layout
    padded[:, :, ph : ph + H, pw : pw + W] = x
    phases = padded.view(N, C, Hph, sh, Wph, sw).permute(0, 1, 3, 5, 2, 4)  # (N,C,sh,sw,Hph,Wph)
    flat = phases.reshape(N, C * layout.plane)
    return torch.cat([flat, x.new_zeros(N, layout.flat_outputs)], dim=1)


def sparse_conv2d(
    x: torch.Tensor,
    csr: ConvCSR,
    layout: ConvLayout,
    bias: torch.Tensor | None = None,
    fuse_relu: bool = False,
) -> torch.Tensor:
    """Direct sparse convolution of a validated NCHW float32 input; ``(N, K, P, Q)``."""
    N = x.shape[0]
    K, G = csr.out_channels, csr.groups
    M, P, Q = layout.flat_outputs, layout.out_height, layout.out_width
    buf = pack_input(x, layout, G)  # (N, G·C_g·plane + M)
    rows = csr.row_ids()  # (nnz,)
    group_base = (rows // (K // G)) * (layout.channels * layout.plane)
    starts = csr.input_offsets(layout).to(torch.int64) + group_base  # (nnz,)
    values = csr.values
    out = x.new_zeros(N, K, M)
    positions = torch.arange(M)
    chunk = max(1, _GATHER_ELEMENTS // max(1, N * M))
    for j0 in range(0, csr.nnz, chunk):
        j1 = min(csr.nnz, j0 + chunk)
        index = starts[j0:j1, None] + positions  # (chunk, M)
        gathered = buf[:, index] * values[j0:j1, None]  # (N, chunk, M)
        out.index_add_(1, rows[j0:j1], gathered)
    out = out.view(N, K, P, layout.row_pitch)[..., :Q]  # drop the Wph − Q discarded columns
    if bias is not None:
        out = out + bias.view(1, K, 1, 1)
    if fuse_relu:
        out = torch.relu(out)
    return out.contiguous()


def sparse_linear(
    x: torch.Tensor, csr: LinearCSR, bias: torch.Tensor | None = None, fuse_relu: bool = False
) -> torch.Tensor:
    """``x (N, F) · Wᵀ + b`` with ``W`` in CSR; ``(N, out_features)``."""
    rows = csr.row_ids()
    gathered = x[:, csr.cols.to(torch.int64)] * csr.values  # (N, nnz)
    out = x.new_zeros(x.shape[0], csr.out_features).index_add_(1, rows, gathered)
    if bias is not None:
        out = out + bias
    if fuse_relu:
        out = torch.relu(out)
    return out
