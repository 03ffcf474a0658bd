"""Compressed sparse row (CSR) weights for the direct sparse convolution and sparse linear ops.

Convolution (Park et al., ICLR 2017, §2.1; docs/research.md §2): the weight ``(K, C/g, R, S)`` is
a matrix with one row per output channel and one column per ``(c, r, s)`` of its group. The
kernel wants each column index to be the *offset of that input element in the padded input*,
so that output ``(y, x)`` reads ``in_padded[offset + y·Wph + x]``. Offsets depend on the input
size, so :class:`ConvCSR` stores the size-independent index ``c·R·S + r·S + s`` and derives
(and caches) the offsets per :class:`ConvLayout` with :meth:`ConvCSR.input_offsets`.

:class:`ConvLayout` is the padded, stride-phase-split input layout; it must agree exactly with
``make_layout`` in ``csrc/sparse_conv.cpp`` (``tests/test_sparse_kernel.py`` checks it does):
per input channel, ``sh·sw`` phase planes (one per ``(h mod sh, w mod sw)``), each ``Hph`` rows
by ``Wph`` columns; padded element ``(h, w)`` sits at
``((h % sh)·sw + w % sw)·Hph·Wph + (h // sh)·Wph + w // sw``. The padded row pitch
``Wph·sw ≥ W + pad_w`` (and ``Wph ≥ Q``) shares one row's right padding with the next row's
left padding, and each phase plane has one extra zero row so such reads stay in zeros.
A layout may hold ``stack`` images side by side (small images at batch > 1, see
:func:`perfmodel.refined.images_per_unit`): a row of the unit holds that row of every image,
image ``j``'s ``image_pitch`` columns (and outputs) after image ``j − 1``'s, so
``Wph = stack·image_pitch``; the zero columns between images are the padding of both.

Large CSRs go to the kernel in *segment-major* order (:meth:`ConvCSR.segment_major`): the
kernel's channel blocks are passed over one at a time, each reading every row's segment for
that block, so ordering the arrays block by block makes each pass one contiguous stream, which
a cold CSR (batch 1) needs (docs/sparse-kernel.md, "A cold CSR").

Row pairs (:class:`RowPairs`): output channels ``2q`` and ``2q + 1`` share the columns both
use, so the kernel loads each such input vector once for both rows' FMAs; every other non-zero
stays in a per-row CSR. Worth it from :data:`perfmodel.refined.PAIR_MIN_SHARE` of the non-zeros
shared (docs/sparse-kernel.md, "row pairs").

Linear: the weight ``(out_features, in_features)`` is a plain CSR matrix (:class:`LinearCSR`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

import torch

from perfmodel.refined import PAIR_MIN_SHARE, unit_layout

Pair = tuple[int, int]


def _without_plans(weight: object) -> dict:
    """A CSR weight's state for pickling and deep copies: its call plans hold the extension
    module, which does not pickle, and are rebuilt on the first call."""
    state = dict(weight.__dict__)
    state["_plans"] = {}
    state["_fast"] = []
    # A copy's tensors start their version counters afresh, so the stamp would no longer
    # describe them: without it the copy's first call rebuilds what is derived.
    state.pop("_stamp", None)
    return state


def _restore(weight: object, state: dict) -> None:
    """Unpickle a CSR weight: a pickle from a version without some derived cache (``_plans``,
    ``_fast``, ``_segments`` came later) gets it empty, rebuilt on the first call."""
    weight.__dict__.update(state)
    for spec in fields(weight):
        if spec.name not in weight.__dict__ and spec.default_factory is not MISSING:
            weight.__dict__[spec.name] = spec.default_factory()


def _forget_if_changed(weight: object, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> None:
    """Drop everything derived from a CSR weight's arrays (offsets, row pairs, call plans)
    once any of them was written in place through torch since it was derived, which bumps
    its version counter (``copy_`` in ``load_state_dict``, ``mul_``, ...; not writes through
    ``.data`` or a NumPy view, nor inference-mode tensors, which have no counter): a cache
    would go on using the old non-zeros (a layer loaded with another state dict after its
    first call computed with the old weights, or garbage where the indices changed). ≈0.3 µs
    a call."""
    try:
        stamp = (a._version, b._version, c._version)
    except RuntimeError:  # tensors made under torch.inference_mode() keep no version counter
        return
    caches = weight.__dict__
    if caches.get("_stamp") != stamp:
        for name in ("_offsets", "_segments", "_cache", "_plans", "_fast"):
            if name in caches:
                caches[name].clear()
        caches["_stamp"] = stamp


@dataclass(frozen=True)
class ConvLayout:
    """Geometry of one group's padded input and flattened output (see module docstring)."""

    channels: int  # input channels per group
    height: int
    width: int
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    out_height: int  # P
    out_width: int  # Q
    phase_rows: int  # Hph, including the extra zero row
    row_pitch: int  # Wph: the flattened output has Q valid outputs in every Wph
    plane: int  # elements per input channel: sh·sw·Hph·Wph
    flat_outputs: int  # M = P·Wph
    stack: int = 1  # images per unit, side by side
    image_pitch: int = 0  # columns (and outputs) of one image in a row: Wph / stack

    @property
    def phase_plane(self) -> int:
        return self.phase_rows * self.row_pitch


def conv_layout(
    channels: int,
    height: int,
    width: int,
    kernel: Pair,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    stack: int = 1,
) -> ConvLayout:
    """The padded layout for ``channels`` input channels (of one group) of ``height × width``,
    ``stack`` images side by side.

    Raises:
        ValueError: when the kernel does not fit the padded input, or ``stack`` < 1.
    """
    if stack < 1:
        raise ValueError(f"stack must be at least 1 image per unit, got {stack}")
    (R, S), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    P = (height + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (width + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(
            f"kernel {kernel} with dilation {dilation} does not fit the input "
            f"{height}x{width} padded by {padding}"
        )
    # Pitches, rows and plane: perfmodel's mirror of the
    # kernel's make_layout, which the performance model's geometry uses too.
    unit = unit_layout(height, width, P, Q, kernel, stride, padding, dilation, stack)
    return ConvLayout(
        channels, height, width, kernel, stride, padding, dilation, P, Q, unit.phase_rows,
        unit.row_pitch, unit.plane, unit.flat_outputs, stack, unit.image_pitch,
    )  # fmt: skip


def _kernel_offsets(kernel_index: torch.Tensor, kernel: Pair, layout: ConvLayout) -> torch.Tensor:
    """Offsets into one group's padded input of the columns ``kernel_index`` (int32)."""
    R, S = kernel
    (sh, sw), (dh, dw) = layout.stride, layout.dilation
    idx = kernel_index.to(torch.int64)
    c, r, s = idx // (R * S), (idx // S) % R, idx % S
    rows, cols = r * dh, s * dw
    phase = (rows % sh) * sw + cols % sw
    offsets = (
        c * layout.plane + phase * layout.phase_plane + (rows // sh) * layout.row_pitch + cols // sw
    )
    if offsets.numel() and int(offsets.max()) >= 2**31 - 1:
        raise ValueError("input too large for 32-bit offsets")
    return offsets.to(torch.int32).contiguous()


def _segment_major(
    values: torch.Tensor, offsets: torch.Tensor, row_ptr: torch.Tensor, blocks: int, span: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR arrays in segment-major order: channel block 0's segment of every row, then block
    1's, ... (a non-zero is in block ``offset // span``, clamped to the blocks, so an offset
    out of range lands where the kernel's range check stops it). ``values`` may hold several
    floats per entry (row pairs: two). Returns (values, offsets, segment pointers): row
    ``k``'s segment in block ``b`` is ``[seg[b·rows + k], seg[b·rows + k + 1])``."""
    rows = row_ptr.numel() - 1
    counts = (row_ptr[1:] - row_ptr[:-1]).to(torch.int64)
    row = torch.repeat_interleave(torch.arange(rows), counts)
    key = torch.clamp(offsets.to(torch.int64) // span, 0, blocks - 1) * rows + row
    order = torch.argsort(key, stable=True)  # within a segment, the row's own order
    segments = torch.zeros(blocks * rows + 1, dtype=torch.int32)
    segments[1:] = torch.cumsum(torch.bincount(key, minlength=blocks * rows), 0)
    per = values.numel() // max(offsets.numel(), 1)
    ordered = values.view(-1, per)[order].reshape(-1) if offsets.numel() else values
    return ordered.contiguous(), offsets[order].contiguous(), segments


@dataclass(frozen=True, eq=False)
class RowPairs:
    """A conv CSR split for the kernel's row-pair tiles (see the module docstring).

    Attributes:
        values, kernel_index, row_ptr: the non-zeros not shared with the paired row, as in
            :class:`ConvCSR` (``K + 1`` row pointers).
        pair_values: float32 ``(2·m,)``, row ``2q``'s then row ``2q + 1``'s weight of each of
            the ``m`` shared columns.
        pair_index: kernel index of each shared column, int32 ``(m,)``.
        pair_row_ptr: pair ``q`` holds shared columns ``pair_row_ptr[q]:pair_row_ptr[q+1]``,
            int32 ``(K/2 + 1,)``.
    """

    values: torch.Tensor
    kernel_index: torch.Tensor
    row_ptr: torch.Tensor
    pair_values: torch.Tensor
    pair_index: torch.Tensor
    pair_row_ptr: torch.Tensor
    kernel: Pair
    _offsets: dict[ConvLayout, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )
    _segments: dict[tuple, tuple] = field(default_factory=dict, repr=False)

    def __setstate__(self, state: dict) -> None:
        _restore(self, state)

    @property
    def shared(self) -> float:
        """Fraction of all non-zeros that are in shared columns (two values each)."""
        paired = self.pair_values.numel()
        return paired / max(paired + self.values.numel(), 1)

    def segment_major(self, layout: ConvLayout, blocks: int, block_channels: int) -> tuple:
        """The kernel's segment-major arrays for ``blocks`` channel blocks of
        ``block_channels`` channels (see :meth:`ConvCSR.segment_major`): (values, offsets,
        segments, pair values, pair offsets, pair segments), cached per layout and blocking."""
        key = (layout, blocks, block_channels)
        cached = self._segments.get(key)
        if cached is None:
            span = block_channels * layout.plane
            own = _kernel_offsets(self.kernel_index, self.kernel, layout)
            shared = _kernel_offsets(self.pair_index, self.kernel, layout)
            cached = self._segments[key] = (
                *_segment_major(self.values, own, self.row_ptr, blocks, span),
                *_segment_major(self.pair_values, shared, self.pair_row_ptr, blocks, span),
            )
        return cached

    def input_offsets(self, layout: ConvLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets of the per-row non-zeros, offsets of the shared columns), cached."""
        cached = self._offsets.get(layout)
        if cached is None:
            cached = (
                _kernel_offsets(self.kernel_index, self.kernel, layout),
                _kernel_offsets(self.pair_index, self.kernel, layout),
            )
            self._offsets[layout] = cached
        return cached


@dataclass(frozen=True, eq=False)
class ConvCSR:
    """A convolution weight ``(K, C/g, R, S)`` in CSR, one row per output channel.

    Attributes:
        values: non-zero weights, float32 ``(nnz,)``, row by row.
        kernel_index: ``c·R·S + r·S + s`` of each non-zero within its group, int32 ``(nnz,)``.
        row_ptr: row ``k`` holds non-zeros ``row_ptr[k]:row_ptr[k+1]``, int32 ``(K + 1,)``.
        out_channels, in_channels, kernel, groups: the dense weight's geometry.
    """

    values: torch.Tensor
    kernel_index: torch.Tensor
    row_ptr: torch.Tensor
    out_channels: int
    in_channels: int
    kernel: Pair
    groups: int = 1
    # Derived from the arrays, never given: a copy with other arrays (dataclasses.replace)
    # starts without them.
    _offsets: dict[ConvLayout, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _cache: dict[str, object] = field(default_factory=dict, init=False, repr=False)  # pairs…
    # segment-major copies, per layout and blocking (segment_major)
    _segments: dict[tuple, tuple] = field(default_factory=dict, init=False, repr=False)
    # functional.sparse_conv2d's call plans, per input shape and options
    _plans: dict[tuple, tuple] = field(default_factory=dict, init=False, repr=False)
    # the last native plan used, for sparse_conv2d's fast path: [(options..., call)] or []
    _fast: list[tuple] = field(default_factory=list, init=False, repr=False)

    def __getstate__(self) -> dict:
        return _without_plans(self)

    def __setstate__(self, state: dict) -> None:
        _restore(self, state)

    def forget_if_changed(self) -> None:
        """Drop cached offsets, row pairs and call plans if the arrays were written in place."""
        _forget_if_changed(self, self.values, self.kernel_index, self.row_ptr)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def row_pairs(self) -> RowPairs | None:
        """This weight split into row pairs (cached), or None when a group has an odd number
        of output channels."""
        pairs = self._cache.get("pairs", False)  # one read: another thread may clear it
        if pairs is False:
            pairs = self._cache["pairs"] = self._split_pairs()
        return pairs  # type: ignore[return-value]

    def shared_fraction(self) -> float | None:
        """Fraction of the non-zeros in columns that rows ``2q`` and ``2q + 1`` both use
        (cached; None when a group has an odd number of output channels). Counted from the
        indices alone, so deciding against pairs costs no split."""
        share = self._cache.get("shared", False)  # one read: another thread may clear it
        if share is False:
            share = None
            if not (self.out_channels // self.groups) % 2:
                # A shared column is a (pair, column) key that occurs twice.
                columns = self.dense_size // self.out_channels
                keys = (self.row_ids() // 2) * columns + self.kernel_index.to(torch.int64)
                repeated = self.nnz - int(torch.unique(keys).numel())
                share = 2.0 * repeated / max(self.nnz, 1)
            self._cache["shared"] = share
        return share  # type: ignore[return-value]

    def pairs_pay(self) -> bool:
        """Whether the kernel should use row pairs: at least ``PAIR_MIN_SHARE`` of the
        non-zeros are shared."""
        share = self.shared_fraction()
        return share is not None and share >= PAIR_MIN_SHARE

    def _split_pairs(self) -> RowPairs | None:
        if (self.out_channels // self.groups) % 2:
            return None
        # The split goes through the dense weight, where a negative index would wrap around
        # (a wrong result, where the one-row kernel refuses it): refuse it here as well.
        columns = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        index = self.kernel_index
        if self.nnz and not 0 <= int(index.min()) <= int(index.max()) < columns:
            raise ValueError(
                f"sparse_conv2d: column index out of range [0, {columns}) in the CSR's "
                "kernel_index"
            )
        dense = self.to_dense().reshape(self.out_channels // 2, 2, -1)
        first, second = dense[:, 0], dense[:, 1]
        both = (first != 0) & (second != 0)
        pair_rows, pair_cols = torch.nonzero(both, as_tuple=True)  # pair-major, column order
        pair_values = torch.stack([first[both], second[both]], dim=1).reshape(-1).contiguous()
        counts = torch.bincount(pair_rows, minlength=self.out_channels // 2)
        pair_row_ptr = torch.zeros(self.out_channels // 2 + 1, dtype=torch.int64)
        pair_row_ptr[1:] = torch.cumsum(counts, 0)
        rest = dense.masked_fill(both.unsqueeze(1), 0.0).reshape(self.out_channels, -1)
        values, cols, row_ptr = _dense_to_rows(rest)
        return RowPairs(
            values,
            cols,
            row_ptr,
            pair_values,
            pair_cols.to(torch.int32).contiguous(),
            pair_row_ptr.to(torch.int32).contiguous(),
            self.kernel,
        )

    @property
    def dense_size(self) -> int:
        return (
            self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        )

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights (1 − density)."""
        return 1.0 - self.nnz / self.dense_size

    def forget_layouts(self) -> None:
        """Drop what was derived per input size (offsets and segment-major copies, here and in
        the row pairs), keeping the row-pair split: with ever new input sizes these caches
        grew without bound (≈700 KiB a size for AlexNet conv3 at 90%)."""
        self._offsets.clear()
        self._segments.clear()
        pairs = self._cache.get("pairs")
        if pairs is not None:
            pairs._offsets.clear()
            pairs._segments.clear()

    def input_offsets(self, layout: ConvLayout) -> torch.Tensor:
        """Column indices as offsets into one group's padded input (int32, cached per layout)."""
        cached = self._offsets.get(layout)
        if cached is None:
            cached = self._offsets[layout] = _kernel_offsets(self.kernel_index, self.kernel, layout)
        return cached

    def segment_major(
        self, layout: ConvLayout, blocks: int, block_channels: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values, offsets, segments) in the kernel's segment-major order for ``blocks``
        channel blocks of ``block_channels`` input channels: block 0's segment of every row,
        then block 1's, ..., so a pass of the kernel over one channel block reads the CSR as
        one stream, which the hardware prefetchers follow (in row order it jumps to every
        row's part; a cold CSR at batch 1 cost ≈30% of AlexNet conv3). Cached per layout and
        blocking (the extension's ``conv_blocking``)."""
        key = (layout, blocks, block_channels)
        cached = self._segments.get(key)
        if cached is None:
            offsets = self._offsets.get(layout)
            if offsets is None:  # not kept: the op reads only the segment-major copy
                offsets = _kernel_offsets(self.kernel_index, self.kernel, layout)
            cached = self._segments[key] = _segment_major(
                self.values, offsets, self.row_ptr, blocks, block_channels * layout.plane
            )
        return cached  # type: ignore[return-value]

    def row_ids(self) -> torch.Tensor:
        """Output channel of each non-zero, int64 ``(nnz,)``."""
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).to(torch.int64)
        return torch.repeat_interleave(torch.arange(self.out_channels), counts)

    def to_dense(self) -> torch.Tensor:
        """The dense weight ``(K, C/g, R, S)`` (zeros where no non-zero is stored)."""
        cols = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        dense = torch.zeros(self.out_channels, cols, dtype=torch.float32)
        dense[self.row_ids(), self.kernel_index.to(torch.int64)] = self.values
        return dense.view(self.out_channels, -1, *self.kernel)


def _dense_to_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, column indices, row pointers) of a 2-D float tensor's non-zeros."""
    matrix = matrix.detach().to(device="cpu", dtype=torch.float32).contiguous()
    rows, cols = torch.nonzero(matrix, as_tuple=True)  # row-major order
    values = matrix[rows, cols].contiguous()
    counts = torch.bincount(rows, minlength=matrix.shape[0])
    row_ptr = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(counts, 0)
    if row_ptr[-1] >= 2**31:
        raise ValueError("too many non-zeros for 32-bit CSR indices")
    return values, cols.to(torch.int32).contiguous(), row_ptr.to(torch.int32).contiguous()


def conv_weight_to_csr(weight: torch.Tensor, groups: int = 1) -> ConvCSR:
    """CSR of a dense conv weight ``(K, C/groups, R, S)``; exact zeros are dropped.

    Raises:
        ValueError: when the weight is not 4-D or ``groups`` does not divide ``K``.
    """
    if weight.dim() != 4:
        raise ValueError(f"conv weight must be 4-D (K, C/groups, R, S), got {tuple(weight.shape)}")
    K, Cg, R, S = weight.shape
    if groups < 1 or K % groups:
        raise ValueError(f"groups={groups} must divide out_channels={K}")
    values, cols, row_ptr = _dense_to_rows(weight.reshape(K, Cg * R * S))
    return ConvCSR(values, cols, row_ptr, K, Cg * groups, (R, S), groups)


@dataclass(frozen=True, eq=False)
class LinearCSR:
    """A linear weight ``(out_features, in_features)`` in CSR (column = input feature)."""

    values: torch.Tensor
    cols: torch.Tensor
    row_ptr: torch.Tensor
    out_features: int
    in_features: int
    # functional.sparse_linear's native arguments (one plan, under "native")
    _plans: dict[str, tuple] = field(default_factory=dict, init=False, repr=False)
    # sparse_linear's fast path: [(implementation, call)] or []
    _fast: list[tuple] = field(default_factory=list, init=False, repr=False)

    def __getstate__(self) -> dict:
        return _without_plans(self)

    def __setstate__(self, state: dict) -> None:
        _restore(self, state)

    def forget_if_changed(self) -> None:
        """Drop cached offsets, row pairs and call plans if the arrays were written in place."""
        _forget_if_changed(self, self.values, self.cols, self.row_ptr)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.out_features * self.in_features)

    def row_ids(self) -> torch.Tensor:
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).to(torch.int64)
        return torch.repeat_interleave(torch.arange(self.out_features), counts)

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.out_features, self.in_features, dtype=torch.float32)
        dense[self.row_ids(), self.cols.to(torch.int64)] = self.values
        return dense


def linear_weight_to_csr(weight: torch.Tensor) -> LinearCSR:
    """CSR of a dense linear weight ``(out_features, in_features)``; exact zeros are dropped."""
    if weight.dim() != 2:
        raise ValueError(
            f"linear weight must be 2-D (out_features, in_features), got {tuple(weight.shape)}"
        )
    values, cols, row_ptr = _dense_to_rows(weight)
    return LinearCSR(values, cols, row_ptr, weight.shape[0], weight.shape[1])
