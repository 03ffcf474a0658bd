"""The refined performance model: the paper's roofline plus the costs it leaves out, per host.

Park et al. (ICLR 2017, §2.2) predict ``t_dense = C/F`` and
``t_sparse = max(α·x·C/F, (S_A + β·x·S_W)/B)``. On a real CPU three things it leaves out decide
the answer for most layers (docs/research.md §7, docs/sparse-kernel.md):

- **per-call overhead**: a small CIFAR layer at batch 1 takes tens of µs, most of it fixed;
- **the dense backend's rate depends on the layer family and its layout work**: oneDNN runs
  1×1 convolutions with a dedicated kernel and the others with its direct kernel (16-channel
  blocks; ``ONEDNN_VERBOSE`` shows ``jit:avx512_core``, ``convolution_direct`` for every
  calibration and validation shape), reorders activations (NCHW ↔ blocked) and weights on every
  call and allocates its output;
- **the sparse kernel's inner loop is bound by loads from L1**, one unaligned input vector per
  16-wide FMA, on vectors that include the padded columns of the layout, plus per-image
  packing, output copy and partial-sum traffic, and a pass over the weights on every call.

Dense time (``C'`` = FLOPs with channels rounded up to the vector width, the blocking of
oneDNN; ``S_A`` activations (input + output), ``S_out`` output activations, ``S_W`` weights,
bytes; ``o_family`` the extra fixed cost of a call to that family's kernel)::

    t_dense = o_d + o_family + C'/F_family + S_A/B_layout + S_out/B_output + S_W/B_weights

``B_output`` charges the output a second time (written blocked, reordered into a newly
allocated NCHW tensor): a layer that makes few FLOPs per output pixel (few input channels,
small kernel) pays relatively more for it.

Where ``F.conv2d`` runs PyTorch's native im2col + GEMM instead of oneDNN (batch 1, a kernel
not larger than 3 in both dimensions, ≤ 20480 input elements, no groups; at one thread also
unstrided 1×1 below batch 16: :func:`runs_native_dense`), the measured dense time
is the faster of the two, and so is the prediction: ``min(t_dense, t_native)`` with
(``S_cols`` the im2col matrix, ``S_W`` the weights the GEMM streams per image)::

    t_native = o_n + S_cols/B_cols (B_cols_strided if strided) + 2·K·C·R·S·P·Q/F_gemm
               + S_W/B_gemm_weights + S_out/B_out

Sparse time (direct sparse convolution, density ``x``; the geometry replicates the kernel's
layout and cache blocking, :func:`sparse_conv_geometry`)::

    fixed    = o_s + U·(packed input bytes)/B_pack + N·(output bytes)/B_out + P/B_partial
               + (tile setups)/R_setup + max(0, S_A − L2)/B_cold
    variable = V·64 B/B_inner + V_pair·64 B/B_pair + T/R_visit + x·W/R_call
    t_sparse = fixed + variable

The kernel works on ``U = ⌈N/g⌉`` units of ``g`` images (:func:`images_per_unit`: small
images stacked side by side from batch 2, else ``g = 1``); the geometry is a unit's.
With ``V = (1 − s)·x·U·W·Σ_tiles max(v, λ)`` vector loads, one per FMA (``W`` weights, ``v``
the output vectors of a register tile, the layout's padded columns included; below ``λ``
vectors the FMA latency, not the loads, sets the pace), ``V_pair = (s/2)·x·U·W·Σ_tiles max(v,
λ)`` the loads of the columns a row pair shares, one per two FMAs (``s`` the share of such
non-zeros: the density ``x`` for random sparsity where the kernel pairs rows, from
``PAIR_MIN_SHARE``, else 0; a pair's tiles are at most ``PAIR_TILE_VECTORS``),
``T = (1 − s/2)·x·U·W·tiles`` visits (one per non-zero or shared column per register tile), ``P``
the bytes of partial sums reloaded per input-channel block and ``x·W/R_call`` one pass over the
non-zeros per call whatever the batch (the CSR's first trip from memory; until the kernel
checked the offsets inside its loop, also that check's pass over them). ``max(0, S_A − L2)``
are the call's activation bytes beyond the L2 of the cores it runs on
(``refined.cache_bytes``): those do not stay cached from one call or layer to the next, and
packing and the output copy meet them in L3 or DRAM (a batch of 32 large images,
where batch 1 stays in L2). ``λ`` (``fma_latency_vectors``) is fitted per host with the rates.
Sparse fully connected layers: ``o_s + x·N·8·W/B_csr`` (batch < 16, CSR streamed per image)
or ``o_s + 2·x·N·W/F_linear`` (batch ≥ 16).

All rates are fitted on the host by :mod:`model.calibration` (non-negative least squares on
relative error, scikit-learn) and stored in the profile's ``refined`` block; the prediction
here needs no torch. The split into ``fixed`` and ``variable`` plays the role of the paper's
memory and compute terms: the sweet spot's upper bound is where the density-dependent time
falls below the fixed time (past it, more sparsity buys less than 2× more).

Parameters are valid for the thread count they were calibrated with (``refined.threads``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from perfmodel.hardware import (
    DenseParameters,
    HardwareProfile,
    NativeDenseParameters,
    ProfileError,
    SparseParameters,
)
from perfmodel.layers import Conv2dSpec, LinearSpec
from perfmodel.roofline import MODELS, Layer, RooflineModel, SparseTime

DENSE_TERMS: tuple[str, ...] = (
    "call",
    "call_conv1x1",
    "call_conv3x3",
    "call_conv",
    "flops_conv1x1",
    "flops_conv3x3",
    "flops_conv",
    "flops_linear",
    "activation_bytes",
    "output_bytes",
    "conv_weight_bytes",
    "linear_weight_bytes",
)
"""Columns of the dense design matrix; the fitted coefficient of each is seconds per unit."""

NATIVE_DENSE_TERMS: tuple[str, ...] = (
    "call",
    "columns_bytes",
    "strided_columns_bytes",
    "gemm_flops",
    "weight_bytes",
    "output_bytes",
)
"""Columns of the design matrix of PyTorch's native convolution path (im2col + GEMM)."""
NATIVE_RATE_FIELD = {
    "columns_bytes": "columns_bytes_per_s",
    "strided_columns_bytes": "strided_columns_bytes_per_s",
    "gemm_flops": "gemm_flops_per_s",
    "weight_bytes": "weight_bytes_per_s",
    "output_bytes": "output_bytes_per_s",
}

SPARSE_FIXED_TERMS: tuple[str, ...] = (
    "call",
    "pack_bytes",
    "strided_pack_bytes",
    "output_bytes",
    "partial_sum_bytes",
    "tile_setups",
    "cold_activation_bytes",
)
SPARSE_VARIABLE_TERMS: tuple[str, ...] = (
    "inner_loop_bytes",
    "pair_loop_bytes",
    "nonzero_visits",
    "call_nonzeros",
    "linear_csr_bytes",
    "linear_flops",
)
SPARSE_TERMS: tuple[str, ...] = SPARSE_FIXED_TERMS + SPARSE_VARIABLE_TERMS
"""Columns of the sparse design matrix (fixed terms first, then density-dependent ones)."""

# Constants of the kernel in model/sparse/csrc/sparse_conv.cpp (docs/sparse-kernel.md).
TILE_VECTORS = 12  # output vectors held in registers per tile
L1_BUDGET_FLOATS = 6144  # one input-channel block's input: 24 KiB
PARTIAL_SUM_FLOATS = 65536  # partial sums of one strip: 256 KiB, in L2
MIN_BLOCK_CHANNELS = 16  # below this the strip is halved instead
# NB: a tile of v accumulators issues v independent FMAs per non-zero; below the FMA latency
# the chain, not the loads, sets the pace. The floor is fitted per host (SparseParameters.
# fma_latency_vectors); 4 is what schema-2 profiles were fitted with.
FMA_LATENCY_VECTORS = 4.0
BATCHED_LINEAR = 16  # the sparse linear kernel broadcasts weights across images from here
# Row pairs: output channels 2q and 2q+1 load the input vectors of the columns both use once
# for both rows. The kernel is given pairs when at least this fraction of the non-zeros is in
# shared columns (for random sparsity, the density): below it the extra loop per tile costs more
# than the shared loads save (docs/sparse-kernel.md, "row pairs").
PAIR_MIN_SHARE = 0.2
PAIR_TILE_VECTORS = {16: 12, 8: 6}  # most vectors of a row pair's tile, per vector width
# Stacking small images: from batch 2, images whose output plane is fewer than
# STACK_BELOW_VECTORS vectors are stacked side by side into units of up to
# STACK_MAX_VECTORS. A register tile of a few vectors is bound by its fixed costs and FMA
# latency, not by loads: a unit of fewer than STACK_MIN_VECTORS costs about as much as one of
# that many. Units wider than 16 vectors measured slower (8×8 in fours 0–16%, 4×4 in
# sixteens 6%, 7×7 in sixes 22%: a wider unit's footprint halves the strip or the channel
# blocks). docs/sparse-kernel.md, "stacking small images".
STACK_BELOW_VECTORS = 6
STACK_MIN_VECTORS = 6
STACK_MAX_VECTORS = 16

# Which dense rate applies: 1×1 (oneDNN's 1×1 kernel), 3×3 stride 1 ungrouped (the most common
# shape, its own rate), every other convolution, fully connected.
# Extra fixed cost per call of each convolution family, on top of the common one (seconds).
DENSE_CALL_FIELD = {
    "call_conv1x1": "conv1x1_call_s",
    "call_conv3x3": "conv3x3_call_s",
    "call_conv": "conv_call_s",
}
DENSE_RATE_FIELD = {
    "flops_conv1x1": "conv1x1_flops_per_s",
    "flops_conv3x3": "conv3x3_flops_per_s",
    "flops_conv": "conv_flops_per_s",
    "flops_linear": "linear_flops_per_s",
    "activation_bytes": "layout_bytes_per_s",
    "output_bytes": "output_bytes_per_s",
    "conv_weight_bytes": "conv_weight_bytes_per_s",
    "linear_weight_bytes": "linear_weight_bytes_per_s",
}
SPARSE_RATE_FIELD = {
    "pack_bytes": "pack_bytes_per_s",
    "strided_pack_bytes": "strided_pack_bytes_per_s",
    "output_bytes": "output_bytes_per_s",
    "inner_loop_bytes": "inner_loop_bytes_per_s",
    "pair_loop_bytes": "pair_loop_bytes_per_s",
    "nonzero_visits": "nonzero_visits_per_s",
    "call_nonzeros": "call_nonzeros_per_s",
    "partial_sum_bytes": "partial_sum_bytes_per_s",
    "tile_setups": "tile_setups_per_s",
    "cold_activation_bytes": "cold_activation_bytes_per_s",
    "linear_csr_bytes": "linear_csr_bytes_per_s",
    "linear_flops": "linear_flops_per_s",
}


class MissingRefinedParametersError(ProfileError):
    """The refined model was asked to predict on a profile that was never calibrated."""

    def __init__(self, profile: str):
        super().__init__(
            f"hardware profile {profile!r} has no refined parameters (only `sweetspot calibrate` "
            "writes them); use the 'paper' performance model, or 'auto' to pick per profile"
        )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(value: int, multiple: int) -> int:
    return _ceil_div(value, multiple) * multiple


@dataclass(frozen=True, slots=True)
class SparseConvGeometry:
    """What the direct sparse kernel does per unit (an image, or small images stacked) and per
    group, from the shapes alone.

    Mirrors ``make_layout``/``make_blocking``/``strip_end``/``tile_vectors`` of
    ``sparse_conv.cpp`` (spatial layout, the one ``auto`` uses): ``nvec`` output vectors per
    channel (``P·Wph`` outputs of a unit, the row pitch includes padding columns, a stack's
    between images too), ``tiles`` register tiles per channel over all strips and
    ``tile_vectors`` the output vectors of each,
    ``channel_blocks`` (input-channel blocks of one group kept in L1), ``packed_floats`` (the
    padded input buffer of all groups) and ``pair_tile_vectors`` (the tiles cut into a row
    pair's pieces, ``pair_pieces``).
    """

    nvec: int
    tiles: int
    tile_vectors: tuple[int, ...]
    channel_blocks: int
    packed_floats: int
    pair_tile_vectors: tuple[int, ...]

    def effective_vectors(
        self, latency_vectors: float = FMA_LATENCY_VECTORS, pairs: bool = False
    ) -> float:
        """Vectors per channel with every tile (``pairs``: every tile of a row pair) counted
        as at least ``latency_vectors``."""
        sizes = self.pair_tile_vectors if pairs else self.tile_vectors
        return float(sum(max(v, latency_vectors) for v in sizes))


def pair_pieces(vectors: int, most: int) -> list[int]:
    """A register tile of ``vectors`` in a row pair: the fewest pieces of at most ``most``, of
    near-equal size (``pair_pieces`` in ``sparse_conv.cpp``)."""
    pieces = _ceil_div(vectors, most)
    return [vectors // pieces + (1 if i < vectors % pieces else 0) for i in range(pieces)]


@dataclass(frozen=True, slots=True)
class UnitLayout:
    """The kernel's padded layout of one unit (``make_layout`` in ``sparse_conv.cpp``), per
    input channel of a group: ``row_pitch`` (``Wph``) floats per flattened output row,
    ``phase_rows`` (``Hph``, one extra zero row included), ``plane`` floats, ``flat_outputs``
    (``M``) outputs, and ``image_pitch``, the columns of one image: a unit of stacked images
    holds them side by side, ``row_pitch = stack·image_pitch``."""

    row_pitch: int
    phase_rows: int
    plane: int
    flat_outputs: int
    image_pitch: int


def unit_layout(
    height: int,
    width: int,
    out_height: int,
    out_width: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    stack: int = 1,
    padding_end: tuple[int, int] | None = None,
) -> UnitLayout:
    """The padded layout of ``stack`` images side by side (see the class). An image's pitch
    shares one row's right padding with the next row's (or the next image's) left padding and
    holds at least the outputs (1×1 kernels with padding have more outputs than padded
    columns).

    ``padding`` is (top, left) and ``padding_end`` (bottom, right), the same when ``None``
    (the kernel's case): asymmetric padding takes top + bottom rows and a shared column gap
    of the larger of left and right.
    """
    sh, sw = stride
    end = padding if padding_end is None else padding_end
    image_pitch = max(_ceil_div(width + max(padding[1], end[1]), sw), out_width)
    pitch = stack * image_pitch
    rows = _ceil_div(height + padding[0] + end[0], sh) + 1  # + one zero row
    return UnitLayout(
        row_pitch=pitch,
        phase_rows=rows,
        plane=sh * sw * rows * pitch,
        flat_outputs=out_height * pitch,
        image_pitch=image_pitch,
    )


def _layer_layout(layer: Conv2dSpec, stack: int = 1) -> UnitLayout:
    return unit_layout(
        layer.in_height, layer.in_width, layer.out_height, layer.out_width, layer.kernel,
        layer.stride, layer.padding, layer.dilation, stack, layer.padding_end,
    )  # fmt: skip


def unit_parallel(units: int, threads: int) -> bool:
    """Whether the kernel gives each thread whole units (``unit_parallel`` in
    ``sparse_conv.cpp``): enough units that divide well among the threads; otherwise it packs
    each unit in parallel and splits its output channels."""
    return units >= threads and (units % threads == 0 or units >= 4 * threads)


def images_per_unit(
    batch: int,
    out_height: int,
    pitch: int,
    vector_width: int = 16,
    threads: int = 1,
) -> int:
    """How many of ``batch`` images the kernel stacks into one unit (the op passes it to the
    kernel): 1 where one image's ``out_height`` rows of ``pitch`` fill at least
    :data:`STACK_BELOW_VECTORS` vectors; otherwise the stack (images side by side) of at most
    :data:`STACK_MAX_VECTORS` vectors with the least work on the busiest thread, a unit
    costing its vectors but at least :data:`STACK_MIN_VECTORS` (a short tile runs at the
    speed of one that long) however few images it holds (on a tie, the fewest empty slots,
    then the largest stack). Where the ``threads`` would each get whole images, stacks that
    leave too few units for that are not considered (2 images on 2 threads stay apart: one
    stacked unit split by output channels measured slower)."""

    def vectors(images: int) -> int:
        return _ceil_div(images * out_height * pitch, vector_width)

    if batch < 2 or vectors(1) >= STACK_BELOW_VECTORS:
        return 1
    per_image = unit_parallel(batch, threads)

    def cost(images: int) -> float:
        units = _ceil_div(batch, images)
        unit = max(vectors(images), STACK_MIN_VECTORS)
        if unit_parallel(units, threads):
            return _ceil_div(units, threads) * unit
        return units * unit / threads  # each unit's output channels split over the threads

    candidates = [1]
    for images in range(2, batch + 1):
        if vectors(images) > STACK_MAX_VECTORS:
            break
        if not per_image or unit_parallel(_ceil_div(batch, images), threads):
            candidates.append(images)
    # Least work; then the fewest empty slots in a last short unit; then the largest stack.
    return min(candidates, key=lambda g: (cost(g), _ceil_div(batch, g) * g, -g))


# The geometry depends on the layer's shape only, not on the density: cached, since a sweet-spot
# search evaluates the sparse time some 60–120 times per layer (a calibrated profile's
# predictions took ≈2 ms a layer, 40% of it here).
@functools.lru_cache(maxsize=4096)
def layer_images_per_unit(layer: Conv2dSpec, vector_width: int = 16, threads: int = 1) -> int:
    """:func:`images_per_unit` for ``layer`` at its batch."""
    layout = _layer_layout(layer)
    return images_per_unit(
        layer.batch, layer.out_height, layout.image_pitch, vector_width, threads
    )


@functools.lru_cache(maxsize=4096)
def sparse_conv_geometry(
    layer: Conv2dSpec, vector_width: int = 16, stack: int = 1
) -> SparseConvGeometry:
    """Layout and cache blocking of ``layer`` in the sparse kernel (see the class), for units
    of ``stack`` images (:func:`layer_images_per_unit`); ``nvec`` and the tiles are a unit's."""
    (R, S), (sh, sw), (dh, dw) = layer.kernel, layer.stride, layer.dilation
    C = layer.in_channels // layer.groups
    layout = _layer_layout(layer, stack)
    Wph, plane = layout.row_pitch, layout.plane
    nvec = _ceil_div(layout.flat_outputs, vector_width)
    phases = min(sh * sw, R * S)
    reach = ((R - 1) * dh // sh) * Wph + ((S - 1) * dw) // sw + 1

    def footprint(strip: int) -> int:
        return min(plane, phases * (strip * vector_width + reach))

    def round_tiles(v: int) -> int:
        return max(TILE_VECTORS, v // TILE_VECTORS * TILE_VECTORS)

    strip = min(nvec, round_tiles(PARTIAL_SUM_FLOATS // (layer.out_channels * vector_width)))
    while strip > TILE_VECTORS and L1_BUDGET_FLOATS // footprint(strip) < min(
        MIN_BLOCK_CHANNELS, C
    ):
        strip = round_tiles(strip // 2)
    # As few equal channel blocks as fit the budget, each up to 1/8 over it.
    fit = max(L1_BUDGET_FLOATS // footprint(strip), 1)
    channel_blocks = _ceil_div(C, fit + fit // 8)
    if footprint(strip) * C <= L1_BUDGET_FLOATS * 5 // 3:  # all of it in 40 KiB: one block
        channel_blocks = 1
    # A short last strip joins the one before; a strip's last few vectors are one tile.
    max_tile = 2 * TILE_VECTORS if vector_width == 16 else TILE_VECTORS + 2
    tail = min(TILE_VECTORS // 3, max_tile - TILE_VECTORS)
    sizes: list[int] = []
    v0 = 0
    while v0 < nvec:
        v1 = min(nvec, v0 + strip)
        if nvec - v1 <= tail:
            v1 = nvec
        left, v0 = v1 - v0, v1
        while left > max_tile:
            sizes.append(TILE_VECTORS)
            left -= TILE_VECTORS
        sizes.append(left)
    most = PAIR_TILE_VECTORS.get(vector_width, 6)
    return SparseConvGeometry(
        nvec=nvec,
        tiles=len(sizes),
        tile_vectors=tuple(sizes),
        channel_blocks=channel_blocks,
        packed_floats=layer.groups * C * plane,
        pair_tile_vectors=tuple(p for v in sizes for p in pair_pieces(v, most)),
    )


def _padded(channels: int, width: int) -> int:
    return _round_up(channels, width)


def dense_features(layer: Layer, vector_width: int = 16) -> dict[str, float]:
    """The dense design row of ``layer`` (keys: :data:`DENSE_TERMS`)."""
    row = dict.fromkeys(DENSE_TERMS, 0.0)
    row["call"] = 1.0
    row["activation_bytes"] = float(layer.activation_bytes)
    if isinstance(layer, LinearSpec):
        row["output_bytes"] = float(layer.batch * layer.out_features * layer.dtype_bytes)
        row["flops_linear"] = float(layer.flops)
        row["linear_weight_bytes"] = float(layer.weight_bytes)
        return row
    # NB: oneDNN blocks channels by the vector width, so 24 channels cost like 32; inputs with
    # fewer channels than a vector (RGB stems) take a dedicated path and are not padded.
    cg, kg = layer.in_channels // layer.groups, layer.out_channels // layer.groups
    padding = _padded(kg, vector_width) / kg
    if cg >= vector_width:
        padding *= _padded(cg, vector_width) / cg
    flops = layer.flops * padding
    outputs = layer.out_channels * layer.out_height * layer.out_width
    row["output_bytes"] = float(layer.batch * outputs * layer.dtype_bytes)
    if layer.kernel == (1, 1):
        family = "conv1x1"
    elif (
        layer.kernel == (3, 3)
        and layer.stride == (1, 1)
        and layer.dilation == (1, 1)
        and layer.groups == 1
    ):
        family = "conv3x3"
    else:
        family = "conv"
    row[f"flops_{family}"] = flops
    row[f"call_{family}"] = 1.0
    row["conv_weight_bytes"] = float(layer.weight_bytes)
    return row


# PyTorch's `use_mkldnn` (aten/src/ATen/native/Convolution.cpp, torch 2.x): below this many
# input elements at batch 1 its own path beats oneDNN "for some case".
NATIVE_MAX_INPUT_ELEMENTS = 20480


def runs_native_dense(layer: Layer, threads: int) -> bool:
    """Whether ``F.conv2d`` runs PyTorch's native im2col + GEMM (``slow_conv2d``, or
    ``slow_conv_dilated2d`` when dilated) on ``layer`` rather than oneDNN: fp32 on CPU,
    PyTorch's ``use_mkldnn`` rule. oneDNN needs both (a) a strided or dilated conv, batch
    ≥ 16, a kernel other than 1×1 or more than one thread, and (b) groups, a kernel larger
    than 3 in both dimensions, batch > 1 or more than 20480 input elements.
    (tests/test_refined_model.py checks this against the kernel PyTorch really calls.)"""
    if isinstance(layer, LinearSpec):
        return False
    one_by_one = layer.kernel == (1, 1)
    wants_onednn = (
        layer.stride != (1, 1)
        or layer.dilation != (1, 1)
        or layer.batch >= 16
        or not one_by_one
        or threads > 1
    )
    onednn_pays = (
        layer.groups > 1
        or (layer.kernel[0] > 3 and layer.kernel[1] > 3)
        or layer.batch > 1
        or layer.batch * layer.in_channels * layer.in_height * layer.in_width
        > NATIVE_MAX_INPUT_ELEMENTS
    )
    return not (wants_onednn and onednn_pays)


def native_dense_features(layer: Conv2dSpec) -> dict[str, float]:
    """The design row of PyTorch's native path (keys: :data:`NATIVE_DENSE_TERMS`): per image,
    unfold the input into a ``C·R·S × P·Q`` matrix, one GEMM with the ``K × C·R·S`` weights,
    the output initialised with the bias."""
    positions = layer.batch * layer.out_height * layer.out_width
    cg = layer.in_channels // layer.groups
    columns = cg * layer.kernel[0] * layer.kernel[1] * positions * layer.groups
    strided = layer.stride != (1, 1) or layer.dilation != (1, 1)
    return {
        "call": 1.0,
        "columns_bytes": 0.0 if strided else float(columns * layer.dtype_bytes),
        "strided_columns_bytes": float(columns * layer.dtype_bytes) if strided else 0.0,
        "gemm_flops": float(layer.flops),
        "weight_bytes": float(layer.batch * layer.weight_bytes),
        "output_bytes": float(positions * layer.out_channels * layer.dtype_bytes),
    }


def sparse_features(
    layer: Layer,
    density: float,
    vector_width: int = 16,
    latency_vectors: float = FMA_LATENCY_VECTORS,
    cache_bytes: int | None = None,
    row_pairs: bool = True,
    threads: int = 1,
) -> dict[str, float]:
    """The sparse design row of ``layer`` at ``density`` (keys: :data:`SPARSE_TERMS`);
    ``latency_vectors`` is the FMA latency floor of a register tile (``λ``, module docstring),
    ``cache_bytes`` the L2 of the cores the kernel runs on (``None``: no cold-activation
    term), ``row_pairs`` whether the kernel computes rows in pairs where they pay (profiles
    calibrated before row pairs: ``False``), ``threads`` what the kernel runs on (it decides
    how many small images it stacks, :func:`images_per_unit`)."""
    row = dict.fromkeys(SPARSE_TERMS, 0.0)
    row["call"] = 1.0
    N, bytes_ = layer.batch, layer.dtype_bytes
    nonzeros = density * layer.weight_count  # NB: expected count; continuous in the density
    if isinstance(layer, LinearSpec):
        row["pack_bytes"] = float(N * layer.in_features * bytes_)
        row["output_bytes"] = float(N * layer.out_features * bytes_)
        if N < BATCHED_LINEAR:
            row["linear_csr_bytes"] = N * 8.0 * nonzeros  # 4 B value + 4 B column index
        else:
            row["linear_flops"] = 2.0 * N * nonzeros
        return row
    # The kernel works on units of `stack` images (small images stacked, from batch 2);
    # U units, the last one possibly short of images but computed whole.
    stack = layer_images_per_unit(layer, vector_width, threads)
    geometry = sparse_conv_geometry(layer, vector_width, stack)
    U = _ceil_div(N, stack)
    # Stride 1 packs rows with memcpy; a stride splits every row into phase planes, element
    # by element.
    strided = layer.stride != (1, 1)
    row["strided_pack_bytes" if strided else "pack_bytes"] = float(
        U * geometry.packed_floats * bytes_
    )
    outputs = layer.out_channels * layer.out_height * layer.out_width
    row["output_bytes"] = float(N * outputs * bytes_)
    # Row pairs, as the op decides (ConvCSR.pairs_pay) for random sparsity: a non-zero's
    # chance that the paired row has its column too is the density, so that is the share.
    pairs = (
        row_pairs
        and density >= PAIR_MIN_SHARE
        and (layer.out_channels // layer.groups) % 2 == 0
    )
    shared = density if pairs else 0.0
    tiles = len(geometry.pair_tile_vectors) if pairs else geometry.tiles
    # Each non-zero of a group's output channel meets every output vector of that channel once;
    # a shared column loads its input vectors once for both rows' FMAs.
    vector_bytes = U * geometry.effective_vectors(latency_vectors, pairs) * vector_width * bytes_
    row["inner_loop_bytes"] = nonzeros * (1.0 - shared) * vector_bytes
    row["pair_loop_bytes"] = nonzeros * shared / 2.0 * vector_bytes
    row["nonzero_visits"] = nonzeros * (1.0 - shared / 2.0) * U * tiles
    # Once per call, not per image: the CSR's trip from memory (the fitted rate takes whatever
    # a call costs per non-zero; older kernels also read every column index in a check).
    row["call_nonzeros"] = nonzeros
    # Every channel block after the first reloads and stores the strip's partial sums, whatever
    # the density (NB: empty CSR segments are assumed to cost the same as short ones).
    if geometry.channel_blocks > 1:
        row["partial_sum_bytes"] = float(
            U
            * layer.out_channels
            * geometry.nvec
            * vector_width
            * bytes_
            * 2
            * (geometry.channel_blocks - 1)
        )
    # Starting and finishing a tile for every output channel in every channel block.
    # (A row pair's tile cut in two sets up as many accumulators: counted as one, so that the
    # fixed costs do not depend on the density.)
    row["tile_setups"] = float(U * layer.out_channels * geometry.tiles * geometry.channel_blocks)
    # A call's input and output stay in the cores' L2 from one call (or layer) to the next
    # while they fit; the bytes beyond it are packed from and written to L3 or DRAM.
    if cache_bytes is not None:
        row["cold_activation_bytes"] = float(max(0, layer.activation_bytes - cache_bytes))
    return row


def _seconds_per_unit(rate: float | None) -> float:
    return 0.0 if rate is None else 1.0 / rate


def _coefficients(
    params: DenseParameters | NativeDenseParameters | SparseParameters,
    rate_field: dict[str, str],
) -> dict[str, float]:
    """Seconds per unit of each term: the call overhead, then 1/rate of each fitted rate."""
    coefficients = {"call": params.call_overhead_s}
    for term, field in rate_field.items():
        coefficients[term] = _seconds_per_unit(getattr(params, field))
    return coefficients


def dense_coefficients(hw: HardwareProfile) -> dict[str, float]:
    """Seconds per unit of each dense term, from the profile's refined parameters."""
    dense = _refined(hw).dense
    coefficients = _coefficients(dense, DENSE_RATE_FIELD)
    for term, field in DENSE_CALL_FIELD.items():
        coefficients[term] = getattr(dense, field)
    return coefficients


def native_dense_coefficients(params: NativeDenseParameters) -> dict[str, float]:
    """Seconds per unit of each term of PyTorch's native path."""
    return _coefficients(params, NATIVE_RATE_FIELD)


def sparse_coefficients(hw: HardwareProfile) -> dict[str, float]:
    """Seconds per unit of each sparse term, from the profile's refined parameters."""
    return _coefficients(_refined(hw).sparse, SPARSE_RATE_FIELD)


def _refined(hw: HardwareProfile):
    if hw.refined is None:
        raise MissingRefinedParametersError(hw.name)
    return hw.refined


def _dot(coefficients: dict[str, float], row: dict[str, float], terms: tuple[str, ...]) -> float:
    return sum(coefficients[term] * row[term] for term in terms)


def onednn_dense_time_s(layer: Layer, hw: HardwareProfile) -> float:
    """The dense time of ``layer`` on oneDNN (the default backend's for fully connected)."""
    row = dense_features(layer, _refined(hw).vector_width)
    return _dot(dense_coefficients(hw), row, DENSE_TERMS)


def native_dense_time_s(layer: Layer, hw: HardwareProfile) -> float | None:
    """The time of PyTorch's native path on ``layer``; ``None`` where ``F.conv2d`` does not
    run it (:func:`runs_native_dense`) or the profile has no fit of it."""
    refined = _refined(hw)
    if refined.native_dense is None or not runs_native_dense(layer, refined.threads):
        return None
    row = native_dense_features(layer)
    return _dot(native_dense_coefficients(refined.native_dense), row, NATIVE_DENSE_TERMS)


@dataclass(frozen=True, slots=True)
class AdditiveSparseTime(SparseTime):
    """Sparse time as a sum: ``memory_s`` the fixed part, ``compute_s`` the density-dependent.

    ``bound`` is "compute" while the density-dependent part dominates; past the crossing the
    layer is bound by its fixed costs (overhead, packing, output), which is where the
    sweet spot's upper bound lies.
    """

    @property
    def total_s(self) -> float:
        return self.compute_s + self.memory_s


class RefinedRoofline(RooflineModel):
    """The refined model (module docstring); needs a calibrated profile.

    Raises :class:`MissingRefinedParametersError` (a :class:`ProfileError`) on a profile without a
    ``refined`` block rather than silently answering with the paper's numbers; pass
    ``model="auto"`` to :func:`perfmodel.predict_network` to get the refined model where a
    profile has it and the paper's otherwise.
    """

    name = "refined"

    def dense_time_s(self, layer: Layer, hw: HardwareProfile) -> float:
        """The best dense backend: oneDNN's time, or PyTorch's native path where ``F.conv2d``
        runs it and it is faster (the measurement takes the faster of the two as well)."""
        onednn = onednn_dense_time_s(layer, hw)
        native = native_dense_time_s(layer, hw)
        return onednn if native is None else min(onednn, native)

    def sparse_time(self, layer: Layer, hw: HardwareProfile, density: float) -> SparseTime:
        refined = _refined(hw)
        coefficients = sparse_coefficients(hw)
        row = sparse_features(
            layer, density, refined.vector_width, refined.sparse.fma_latency_vectors,
            refined.cache_bytes, row_pairs=refined.sparse.pair_loop_bytes_per_s is not None,
            threads=refined.threads,
        )  # fmt: skip
        fixed = _dot(coefficients, row, SPARSE_FIXED_TERMS)
        variable = _dot(coefficients, row, SPARSE_VARIABLE_TERMS)
        return AdditiveSparseTime(compute_s=variable, memory_s=fixed)


MODELS["refined"] = RefinedRoofline
