"""The direct sparse convolution against F.conv2d, native and reference, and its input checks."""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.sparse import conv_layout, conv_weight_to_csr, native, sparse_conv2d
from model.sparse.csr import linear_weight_to_csr
from model.sparse.functional import sparse_linear
from perfmodel.refined import STACK_MAX_VECTORS, images_per_unit

RTOL, ATOL = 1e-4, 1e-5
IMPLEMENTATIONS = ["reference", pytest.param("native", marks=pytest.mark.native)]

# (batch, in_channels, height, width, out_channels, kernel, stride, padding, dilation, groups)
CASES = {
    "1x1": (3, 8, 9, 9, 6, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "3x3": (1, 5, 12, 12, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "5x5-pad2": (3, 6, 13, 11, 8, (5, 5), (1, 1), (2, 2), (1, 1), 1),
    "11x11-stride4": (1, 3, 39, 39, 8, (11, 11), (4, 4), (0, 0), (1, 1), 1),
    "stride2": (3, 4, 15, 14, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    "dilation2": (1, 4, 14, 13, 4, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    "groups": (3, 8, 10, 10, 12, (3, 3), (1, 1), (1, 1), (1, 1), 4),
    "odd": (3, 5, 7, 17, 3, (3, 2), (2, 3), (1, 2), (2, 1), 1),
    "batch32": (32, 6, 8, 8, 10, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "batch35": (35, 4, 6, 9, 5, (3, 3), (2, 1), (1, 0), (1, 1), 1),
    # Rows of 16–32 floats: the native kernel copies them with two vectors (AVX-512).
    "rows16": (3, 3, 9, 16, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "rows29": (2, 5, 11, 29, 6, (3, 3), (1, 1), (0, 1), (1, 1), 1),
    # Small images the native kernel stacks (perfmodel.refined.images_per_unit).
    "stacked": (7, 8, 4, 4, 10, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    "stacked-1x1-pad": (5, 4, 3, 3, 6, (1, 1), (1, 1), (1, 1), (1, 1), 1),
    "stacked-strided": (6, 4, 7, 6, 4, (3, 3), (2, 2), (2, 1), (2, 1), 1),
}
SPARSITIES = [0.0, 0.5, 0.99, 1.0]


def _problem(case: tuple, sparsity: float, seed: int, bias: bool):
    N, C, H, W, K, kernel, stride, padding, dilation, groups = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=generator)
    weight = torch.randn(K, C // groups, *kernel, generator=generator)
    weight[torch.rand(weight.shape, generator=generator) < sparsity] = 0.0
    if sparsity == 1.0:
        weight.zero_()  # all-zero filters
    b = torch.randn(K, generator=generator) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation)


@pytest.fixture(scope="module")
def native_kernel():
    if not native.native_available():
        pytest.skip(f"native kernel unavailable: {native.kernel_info().reason}")
    return native.load()


def _run(implementation: str, request: pytest.FixtureRequest, *args, **kwargs) -> torch.Tensor:
    if implementation == "native":
        request.getfixturevalue("native_kernel")
    return sparse_conv2d(*args, implementation=implementation, **kwargs)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("name", list(CASES))
def test_conv_matches_f_conv2d(name, sparsity, implementation, request):
    index = list(CASES).index(name)
    x, weight, bias, geometry = _problem(CASES[name], sparsity, seed=index, bias=index % 2 == 0)
    groups = CASES[name][-1]
    csr = conv_weight_to_csr(weight, groups)
    expected = F.conv2d(x, weight, bias, groups=groups, **geometry)
    # Row pairs (native only; an even number of output channels per group) and one rows.
    pairs = (None, False, True) if csr.row_pairs() is not None else (None, False)
    for relu in (False, True):
        for row_pairs in pairs:
            out = _run(
                implementation, request, x, csr, bias, fuse_relu=relu, row_pairs=row_pairs,
                **geometry,
            )  # fmt: skip
            torch.testing.assert_close(
                out, expected.relu() if relu else expected, rtol=RTOL, atol=ATOL
            )


@pytest.mark.native
@pytest.mark.parametrize("row_pairs", [False, True])
@pytest.mark.parametrize("batch_layout", ["spatial", "blocked"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2, 3, 16, 35])
def test_native_batch_layouts_and_threads(batch, threads, batch_layout, row_pairs, native_kernel):
    """Every scheduling path: per-image or per-block units, unit- or channel-parallel (row
    pairs split over the threads whole), rows one or two at a time."""
    case = (batch, 6, 9, 10, 9 if not row_pairs else 12, (3, 3), (1, 1), (1, 1), (1, 1), 3)
    x, weight, bias, geometry = _problem(case, 0.5, seed=batch, bias=True)
    csr = conv_weight_to_csr(weight, 3)
    expected = F.conv2d(x, weight, bias, groups=3, **geometry)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = sparse_conv2d(
            x, csr, bias, **geometry, batch_layout=batch_layout, row_pairs=row_pairs
        )
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


def _stack(batch, threads, *geometry):
    """Images per unit the op gives the native kernel for this problem (``geometry``: as
    :func:`conv_layout` takes it)."""
    layout = conv_layout(*geometry)
    return images_per_unit(
        batch, layout.out_height, layout.image_pitch, native.load().vector_width(), threads
    )  # fmt: skip


# (channels, height, width, out_channels, kernel, stride, padding, dilation, groups): small
# images, stacked from batch 2 (3×3 on 4×4: 2 vectors each, 2×2, 1×1 with padding (outputs on
# the padding rows), stride 2 with dilation, 5×5 on 3×3 (the kernel wider than the image).
STACKED_LAYERS = [
    (16, 4, 4, 12, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (8, 2, 2, 8, (3, 3), (1, 1), (1, 1), (1, 1), 2),
    (6, 3, 3, 6, (1, 1), (1, 1), (2, 1), (1, 1), 1),
    (5, 7, 6, 4, (3, 3), (2, 2), (2, 1), (2, 1), 1),
    (4, 3, 3, 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),
]


@pytest.mark.native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [2, 3, 4, 9, 32, 33])
def test_native_stacked_small_images(batch, threads, native_kernel):
    """Small images stacked into units (a last unit short of images included): every image's
    output matches F.conv2d, one and two rows at a time, with ReLU, and again after calls
    with other stacks have left their data in the thread's packing buffer."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    stacked = 0
    try:
        for seed, (C, H, W, K, kernel, stride, padding, dilation, groups) in enumerate(
            STACKED_LAYERS * 2  # twice: each layout again after the others
        ):
            case = (batch, C, H, W, K, kernel, stride, padding, dilation, groups)
            x, weight, bias, geometry = _problem(case, 0.5, seed=seed, bias=True)
            csr = conv_weight_to_csr(weight, groups)
            expected = F.conv2d(x, weight, bias, groups=groups, **geometry)
            stacked += _stack(batch, threads, C // groups, H, W, kernel, stride, padding,
                              dilation) > 1  # fmt: skip
            for relu, row_pairs in ((False, False), (True, None), (False, True)):
                if row_pairs and (K // groups) % 2:
                    continue
                out = sparse_conv2d(
                    x, csr, bias, fuse_relu=relu, row_pairs=row_pairs, **geometry
                )
                torch.testing.assert_close(
                    out, expected.relu() if relu else expected, rtol=RTOL, atol=ATOL
                )
    finally:
        torch.set_num_threads(previous)
    # Two images on two threads stay apart (one each); otherwise every layer stacks.
    assert stacked == (0 if (batch, threads) == (2, 2) else 2 * len(STACKED_LAYERS))


@pytest.mark.parametrize(
    ("batch", "threads", "expected"),
    [
        (1, 1, 1),  # nothing to stack
        (2, 1, 2),
        (2, 2, 1),  # one image per thread beats one stacked unit split by channels
        (3, 2, 3),  # 3 images on 2 threads are split by channels anyway: stack them
        (4, 2, 2),  # two units of two, one per thread (not 3 + 1)
        (32, 1, 8),  # 4 units of 10 vectors: less work than 8 of 5 (costed as 6, the floor)
        (32, 2, 8),
        (9, 2, 5),  # 2 units of 7 vectors (one per thread), not 3 + 3 + 3 on 2 threads
    ],
)
def test_images_per_unit_on_4x4_images(batch, threads, expected):
    """512→512 3×3 on 4×4 (VGG-16 CIFAR's conv4): 4 rows of 5 floats an image (2 vectors),
    side by side in a unit."""
    assert images_per_unit(batch, 4, 5, 16, threads) == expected


def test_images_per_unit_thresholds():
    # 8×8 images (5 vectors) go in pairs, 16×16 (17 vectors) alone; 2×2 (1 vector) stack to
    # the most that pay.
    assert images_per_unit(32, 8, 9, 16, 1) == 2
    assert images_per_unit(32, 16, 17, 16, 1) == 1
    assert images_per_unit(32, 2, 3, 16, 1) == 32  # 12 vectors, one unit
    assert images_per_unit(32, 2, 3, 16, 2) == 16  # one unit per thread
    # No stack exceeds STACK_MAX_VECTORS or the batch.
    for batch in range(2, 70):
        stack = images_per_unit(batch, 2, 3, 16, 1)
        assert -(-stack * 2 * 3 // 16) <= STACK_MAX_VECTORS
        assert stack <= batch


# Two layers (geometry, a middle row, sparsity): 96→32 5×5 on 27×27 in 2 groups (3 channel
# blocks, strips of 12–13 vectors: one tile each) and 4→8 3×3 on 40×40 (strips of 48 vectors
# as tiles of 12, 12 and 24: the tiles after a strip's first one stop where the first did).
@contextlib.contextmanager
def _num_threads(threads: int):
    """torch's intra-op thread count set to ``threads`` inside, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _refuses_each(call, target: torch.Tensor, j: int, values) -> torch.Tensor:
    """``call(spoilt)`` raises the op's range error for ``target`` with entry ``j`` set to
    each of ``values``; returns the last spoilt copy."""
    for value in values:
        bad = target.clone()
        bad[j] = value
        with pytest.raises(RuntimeError, match=r"column index out of range \[0, "):
            call(bad)
    return bad


OFFSET_CHECK_LAYERS = {
    "blocks": ((96, 27, 27, 32, (5, 5), (1, 1), (2, 2), (1, 1), 2), 17, 0.9),
    "tiles": ((4, 40, 40, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1), 5, 0.5),
}


@pytest.mark.native
@pytest.mark.parametrize(
    ("batch", "threads", "mode"), [(1, 1, 1), (1, 2, 1), (4, 2, 1), (16, 1, 2), (16, 2, 2)]
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("layer", sorted(OFFSET_CHECK_LAYERS))
def test_native_conv_rejects_any_out_of_range_offset(batch, threads, mode, where, layer,
                                                     native_kernel):  # fmt: skip
    """The offsets' range check runs inside the kernel: one bad index anywhere (first, middle
    or last non-zero) raises on every scheduling path (per-image or blocked units, unit- or
    channel-parallel), and the same arguments with valid offsets still give F.conv2d's result."""
    geometry, middle_row, sparsity = OFFSET_CHECK_LAYERS[layer]
    C, H, W, K, kernel, stride, padding, dilation, groups = geometry
    case = (batch, C, H, W, K, kernel, stride, padding, dilation, groups)
    x, weight, bias, conv_args = _problem(case, sparsity, seed=3, bias=True)
    csr = conv_weight_to_csr(weight, groups)
    layout = conv_layout(C // groups, H, W, kernel, stride, padding, dilation)
    offsets = csr.input_offsets(layout)
    j = {"first": 0, "middle": int(csr.row_ptr[middle_row]) - 1, "last": csr.nnz - 1}[where]
    op = native_kernel.sparse_conv2d_forward
    args = dict(
        out_channels=K, kernel=list(kernel), stride=list(stride), padding=list(padding),
        dilation=list(dilation), groups=groups, relu=False, mode=mode,
    )  # fmt: skip
    with _num_threads(threads):
        bad = _refuses_each(
            lambda spoilt: op(x, csr.values, spoilt, csr.row_ptr, bias, **args), offsets, j,
            (layout.channels * layout.plane, 2**31 - 1, -1, -(2**31)),
        )  # fmt: skip
        good = op(x, csr.values, offsets, csr.row_ptr, bias, **args)
    expected = F.conv2d(x, weight, bias, groups=groups, **conv_args)
    torch.testing.assert_close(good, expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(RuntimeError, match="column index out of range"):  # an empty batch too
        op(x[:0], csr.values, bad, csr.row_ptr, bias, **args)


@pytest.mark.native
@pytest.mark.parametrize(
    ("batch", "threads", "mode"), [(1, 1, 1), (1, 2, 1), (4, 2, 1), (16, 2, 2)]
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("array", ["shared", "own"])
@pytest.mark.parametrize("layer", sorted(OFFSET_CHECK_LAYERS))
def test_native_row_pairs_reject_any_out_of_range_offset(batch, threads, mode, where, array,
                                                         layer, native_kernel):  # fmt: skip
    """With row pairs, a bad index in the shared columns or in a row's own non-zeros raises
    on every scheduling path, and valid ones give F.conv2d's result."""
    geometry, middle_row, sparsity = OFFSET_CHECK_LAYERS[layer]
    C, H, W, K, kernel, stride, padding, dilation, groups = geometry
    case = (batch, C, H, W, K, kernel, stride, padding, dilation, groups)
    x, weight, bias, conv_args = _problem(case, sparsity, seed=4, bias=True)
    pairs = conv_weight_to_csr(weight, groups).row_pairs()
    layout = conv_layout(C // groups, H, W, kernel, stride, padding, dilation)
    own, shared = pairs.input_offsets(layout)
    assert own.numel() and shared.numel()
    row_ptr = pairs.pair_row_ptr if array == "shared" else pairs.row_ptr
    target = shared if array == "shared" else own
    middle = int(row_ptr[middle_row // 2 if array == "shared" else middle_row]) - 1
    j = {"first": 0, "middle": middle, "last": target.numel() - 1}[where]
    op = native_kernel.sparse_conv2d_forward
    args = dict(
        out_channels=K, kernel=list(kernel), stride=list(stride), padding=list(padding),
        dilation=list(dilation), groups=groups, relu=False, mode=mode,
    )  # fmt: skip

    def call(own_offsets, shared_offsets, images=x):
        return op(
            images, pairs.values, own_offsets, pairs.row_ptr, bias, **args,
            pair_values=pairs.pair_values, pair_offsets=shared_offsets,
            pair_row_ptr=pairs.pair_row_ptr,
        )  # fmt: skip

    with _num_threads(threads):
        bad = _refuses_each(
            lambda spoilt: call(*((own, spoilt) if array == "shared" else (spoilt, shared))),
            target, j, (layout.channels * layout.plane, 2**31 - 1, -1),
        )  # fmt: skip
        good = call(own, shared)
    expected = F.conv2d(x, weight, bias, groups=groups, **conv_args)
    torch.testing.assert_close(good, expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(RuntimeError, match="column index out of range"):  # an empty batch too
        call(*((own, bad) if array == "shared" else (bad, shared)), images=x[:0])


def _segment_major_call(native_kernel, layer: str, batch: int, pairs: bool, seed: int):
    """A layer of OFFSET_CHECK_LAYERS with its CSR in segment-major order: (call(offsets,
    images=x) -> output, the offsets array to spoil, x, F.conv2d's result, the layout)."""
    geometry, _, sparsity = OFFSET_CHECK_LAYERS[layer]
    C, H, W, K, kernel, stride, padding, dilation, groups = geometry
    case = (batch, C, H, W, K, kernel, stride, padding, dilation, groups)
    x, weight, bias, conv_args = _problem(case, sparsity, seed=seed, bias=True)
    csr = conv_weight_to_csr(weight, groups)
    layout = conv_layout(C // groups, H, W, kernel, stride, padding, dilation)
    blocks, block_channels = native_kernel.conv_blocking(
        C // groups, H, W, list(kernel), list(stride), list(padding), list(dilation), K
    )[:2]  # fmt: skip
    args = dict(
        out_channels=K, kernel=list(kernel), stride=list(stride), padding=list(padding),
        dilation=list(dilation), groups=groups, relu=False, mode=1,
    )  # fmt: skip
    if pairs:
        split = csr.row_pairs()
        values, own, segments, pair_values, shared, pair_segments = split.segment_major(
            layout, blocks, block_channels
        )
        assert own.numel() and shared.numel()

        def call(offsets, images=x):  # spoils the shared columns' offsets
            return native_kernel.sparse_conv2d_forward(
                images, values, own, split.row_ptr, bias, **args, pair_values=pair_values,
                pair_offsets=offsets, pair_row_ptr=split.pair_row_ptr, segments=segments,
                pair_segments=pair_segments,
            )  # fmt: skip

        target = shared
    else:
        values, target, segments = csr.segment_major(layout, blocks, block_channels)

        def call(offsets, images=x):
            return native_kernel.sparse_conv2d_forward(
                images, values, offsets, csr.row_ptr, bias, **args, segments=segments
            )

    assert blocks > 1 or layer == "tiles"
    return call, target, x, F.conv2d(x, weight, bias, groups=groups, **conv_args), layout


@pytest.mark.native
@pytest.mark.parametrize(("batch", "threads"), [(1, 1), (1, 2), (4, 2)])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("layer", sorted(OFFSET_CHECK_LAYERS))
def test_native_segment_major_rejects_any_out_of_range_offset(batch, threads, where, pairs,
                                                              layer, native_kernel):  # fmt: skip
    """In segment-major order (what sparse_conv2d passes for spatial units) each block's
    segments are checked against the block's end: one bad index anywhere raises, on every
    scheduling path, and valid ones give F.conv2d's result."""
    call, target, x, expected, layout = _segment_major_call(native_kernel, layer, batch, pairs, 5)
    j = {"first": 0, "middle": target.numel() // 2, "last": target.numel() - 1}[where]
    with _num_threads(threads):
        bad = _refuses_each(call, target, j, (layout.channels * layout.plane, 2**31 - 1, -1))
        good = call(target)
    torch.testing.assert_close(good, expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(RuntimeError, match="column index out of range"):  # an empty batch too
        call(bad, images=x[:0])


@pytest.mark.native
@pytest.mark.parametrize(("batch", "threads"), [(1, 1), (1, 2), (3, 2)])
@pytest.mark.parametrize(("in_channels", "sparsity", "pairs"), [(256, 0.9, False),
                                                                 (128, 0.5, True)])
def test_sparse_conv2d_passes_large_weights_in_segment_major_order(batch, threads, in_channels,
                                                                   sparsity, pairs):  # fmt: skip
    """A CSR of SEGMENT_MAJOR_MIN_BYTES or more over several channel blocks goes to the kernel
    in segment-major order (row pairs too) and gives F.conv2d's result; a small one keeps row
    order."""
    from model.sparse.functional import SEGMENT_MAJOR_MIN_BYTES

    case = (batch, in_channels, 13, 13, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, weight, bias, conv_args = _problem(case, sparsity, seed=8, bias=True)
    csr = conv_weight_to_csr(weight)
    assert csr.nnz * 8 >= SEGMENT_MAJOR_MIN_BYTES and csr.pairs_pay() == pairs
    with _num_threads(threads):
        out = sparse_conv2d(x, csr, bias, fuse_relu=True, **conv_args)
        (_, _, tail, _), = csr._plans.values()
        small = conv_weight_to_csr(weight[:4])
        sparse_conv2d(x, small, **conv_args)
        (_, _, small_tail, _), = small._plans.values()
    assert tail[-2] is not None and (tail[-1] is not None) == pairs  # segments, pair segments
    assert small_tail[-2:] == (None, None)
    expected = F.relu(F.conv2d(x, weight, bias, **conv_args))
    # Sums of up to 1,152 products of N(0, 1) numbers (|out| ≈ 30): summed in another order,
    # fp32 differs by up to ≈3e-5 absolute, which ATOL (1e-5) is too tight for.
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=1e-4)


@pytest.mark.native
def test_segment_pointers_are_checked(native_kernel):
    """Segment pointers that would read outside the CSR arrays, or do not fit the kernel's
    blocking, are refused before the kernel runs; so are half a pair of segment arrays and
    segments with the batch-blocked layout."""
    geometry, _, sparsity = OFFSET_CHECK_LAYERS["blocks"]
    C, H, W, K, kernel, stride, padding, dilation, groups = geometry
    x, weight, bias, conv_args = _problem((1, *geometry), sparsity, seed=6, bias=True)
    csr = conv_weight_to_csr(weight, groups)
    layout = conv_layout(C // groups, H, W, kernel, stride, padding, dilation)
    blocks, block_channels = native_kernel.conv_blocking(
        C // groups, H, W, list(kernel), list(stride), list(padding), list(dilation), K
    )[:2]  # fmt: skip
    values, offsets, segments = csr.segment_major(layout, blocks, block_channels)
    args = dict(
        out_channels=K, kernel=list(kernel), stride=list(stride), padding=list(padding),
        dilation=list(dilation), groups=groups, relu=False,
    )  # fmt: skip

    def call(segments, mode=1, **extra):
        return native_kernel.sparse_conv2d_forward(
            x, values, offsets, csr.row_ptr, bias, **args, mode=mode, segments=segments, **extra
        )  # fmt: skip

    expected = F.conv2d(x, weight, bias, groups=groups, **conv_args)
    torch.testing.assert_close(call(segments), expected, rtol=RTOL, atol=ATOL)
    swapped = segments.clone()
    swapped[1], swapped[2] = segments[2], segments[1]
    spoilt = {
        f"{blocks * K + 1} entries": segments[:-1].clone(),
        "int32": segments.to(torch.int64),
        "must start at 0 and end at the number of non-zeros": segments + 1,
        "must be non-decreasing": swapped,
    }
    assert segments[2] > segments[1]  # row 1 has non-zeros in block 0: the swap is out of order
    for message, bad in spoilt.items():
        with pytest.raises(RuntimeError, match=message):
            call(bad)
    with pytest.raises(RuntimeError, match="segment-major order is for the spatial layout"):
        call(segments, mode=2)
    with pytest.raises(RuntimeError, match="need both segments and pair_segments"):
        call(segments, pair_segments=segments)


@pytest.mark.native
def test_native_large_layer_uses_channel_blocks(native_kernel):
    """A layer big enough for several input-channel blocks and output strips."""
    case = (2, 96, 27, 27, 32, (5, 5), (1, 1), (2, 2), (1, 1), 2)
    x, weight, bias, geometry = _problem(case, 0.9, seed=7, bias=True)
    csr = conv_weight_to_csr(weight, 2)
    expected = F.conv2d(x, weight, bias, groups=2, **geometry)
    torch.testing.assert_close(
        sparse_conv2d(x, csr, bias, **geometry), expected, rtol=RTOL, atol=ATOL
    )


@pytest.mark.native
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 5),
    groups=st.sampled_from([1, 2, 3]),
    channels_per_group=st.integers(1, 5),
    out_per_group=st.integers(1, 4),
    height=st.integers(1, 16),
    width=st.integers(1, 16),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    sparsity=st.sampled_from(SPARSITIES),
    relu=st.booleans(),
    bias=st.booleans(),
    row_pairs=st.sampled_from([None, False, True]),
    seed=st.integers(0, 2**16),
)
def test_native_random_geometry(
    native_kernel,
    batch,
    groups,
    channels_per_group,
    out_per_group,
    height,
    width,
    kernel,
    stride,
    padding,
    dilation,
    sparsity,
    relu,
    bias,
    row_pairs,
    seed,
):
    if row_pairs and out_per_group % 2:
        row_pairs = None  # pairs need an even number of output channels per group
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    if height + 2 * padding[0] < extent[0] or width + 2 * padding[1] < extent[1]:
        return  # the kernel does not fit: covered by test_kernel_larger_than_input_raises
    case = (
        batch,
        groups * channels_per_group,
        height,
        width,
        groups * out_per_group,
        kernel,
        stride,
        padding,
        dilation,
        groups,
    )
    x, weight, b, geometry = _problem(case, sparsity, seed=seed, bias=bias)
    csr = conv_weight_to_csr(weight, groups)
    expected = F.conv2d(x, weight, b, groups=groups, **geometry)
    if relu:
        expected = expected.relu()
    out = sparse_conv2d(x, csr, b, fuse_relu=relu, row_pairs=row_pairs, **geometry)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.native
@pytest.mark.parametrize(
    "geometry",
    [
        (4, 13, 13, (3, 3), (1, 1), (1, 1), (1, 1)),
        (3, 227, 227, (11, 11), (4, 4), (0, 0), (1, 1)),
        (5, 7, 12, (3, 2), (2, 3), (1, 2), (2, 1)),
        (2, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),
        (3, 3, 3, (1, 1), (1, 1), (2, 1), (1, 1)),
        (4, 3, 3, (5, 5), (1, 1), (2, 2), (1, 1)),
    ],
)
@pytest.mark.parametrize("stack", [1, 2, 5])
def test_python_layout_agrees_with_native(geometry, stack, native_kernel):
    C, H, W, kernel, stride, padding, dilation = geometry
    layout = conv_layout(C, H, W, kernel, stride, padding, dilation, stack)
    native_numbers = native_kernel.conv_layout(C, H, W, kernel, stride, padding, dilation, stack)
    assert list(native_numbers) == [
        layout.out_height,
        layout.out_width,
        layout.phase_rows,
        layout.row_pitch,
        layout.plane,
        layout.flat_outputs,
        layout.image_pitch,
    ]
    # Stacked images sit side by side, their outputs never overlap, and the columns between
    # them are at least the padding (so each image's outputs see zeros).
    assert layout.row_pitch == stack * layout.image_pitch
    assert layout.image_pitch >= layout.out_width
    assert layout.image_pitch * stride[1] >= W + padding[1]


@pytest.mark.native
def test_performance_model_mirrors_the_kernels_blocking(native_kernel):
    """perfmodel's refined model counts the kernel's register tiles and channel blocks from the
    shapes alone (sparse_conv_geometry); it must see the blocking the kernel really uses, for
    the calibration and validation layers and a seeded sweep of odd shapes."""
    from model.calibration import CALIBRATION_LAYERS
    from model.validation import VALIDATION_LAYERS
    from perfmodel.layers import Conv2dSpec
    from perfmodel.refined import (
        PAIR_TILE_VECTORS,
        layer_images_per_unit,
        sparse_conv_geometry,
    )

    if os.environ.get("SWEETSPOT_L1_FLOATS"):
        pytest.skip("SWEETSPOT_L1_FLOATS retunes the kernel's blocking; the mirror has the default")
    rng = random.Random(5)
    sweep = []
    while len(sweep) < 60:
        size, kernel, padding = rng.randint(1, 60), rng.choice([1, 3, 5]), rng.choice([0, 1, 2])
        if size + 2 * padding >= kernel:
            sweep.append(Conv2dSpec(
                name="sweep", in_channels=rng.choice([3, 16, 24, 64, 96, 200, 512]),
                out_channels=rng.choice([8, 16, 48, 128, 384, 1000]), in_height=size,
                in_width=rng.randint(max(1, kernel - 2 * padding), 60), kernel=kernel,
                padding=padding,
            ))  # fmt: skip
    layers = [s for s in (*CALIBRATION_LAYERS, *VALIDATION_LAYERS, *sweep) if s.kind == "conv2d"]
    assert len(layers) > 80
    width = native_kernel.vector_width()
    assert PAIR_TILE_VECTORS[width] == native_kernel.pair_tile()  # a row pair's widest tile
    stacked = 0
    for spec in layers:
        C = spec.in_channels // spec.groups
        # One image, and the units of small images stacked at batch 32 (1 and 2 threads).
        stacks = {1, *(layer_images_per_unit(spec.with_batch(32), width, t) for t in (1, 2))}
        stacked += max(stacks) > 1
        for stack in sorted(stacks):
            numbers = native_kernel.conv_blocking(
                C, spec.in_height, spec.in_width, list(spec.kernel), list(spec.stride),
                list(spec.padding), list(spec.dilation), spec.out_channels, stack,
            )  # fmt: skip
            geometry = sparse_conv_geometry(spec, width, stack)
            assert (geometry.channel_blocks, geometry.tile_vectors) == (
                numbers[0],
                tuple(numbers[2:]),
            ), (spec, stack)
    assert stacked > 10


def test_csr_round_trip_and_offsets():
    weight = torch.randn(6, 2, 3, 3)
    weight[weight.abs() < 0.8] = 0
    csr = conv_weight_to_csr(weight, groups=2)
    assert csr.in_channels == 4 and csr.groups == 2
    assert csr.nnz == int((weight != 0).sum())
    torch.testing.assert_close(csr.to_dense(), weight)
    layout = conv_layout(2, 10, 10, (3, 3), padding=(1, 1))
    offsets = csr.input_offsets(layout)
    assert offsets.dtype == torch.int32
    assert csr.input_offsets(layout) is offsets  # cached per layout
    assert int(offsets.max()) < 2 * layout.plane
    stacked = conv_layout(2, 10, 10, (3, 3), padding=(1, 1), stack=3)
    assert csr.input_offsets(stacked) is not offsets  # a stack is a layout of its own
    with pytest.raises(ValueError, match="stack must be at least 1"):
        conv_layout(2, 10, 10, (3, 3), stack=0)


def test_segment_major_order_holds_every_non_zero_once_in_its_block():
    """Segment-major arrays are the row-order non-zeros regrouped: block b's segment of row k
    holds exactly row k's non-zeros whose input channel is in block b, in the row's order."""
    weight = torch.randn(6, 5, 3, 3)
    weight[torch.rand(weight.shape) < 0.6] = 0
    csr = conv_weight_to_csr(weight)
    layout = conv_layout(5, 9, 9, (3, 3), padding=(1, 1))
    values, offsets, segments = csr.segment_major(layout, 3, 2)  # channels 0–1, 2–3, 4
    assert csr.segment_major(layout, 3, 2)[0] is values  # cached per layout and blocking
    assert segments.dtype == torch.int32 and segments.numel() == 3 * 6 + 1
    rows, own = csr.input_offsets(layout), csr.row_ptr
    for block in range(3):
        for k in range(6):
            a, b = int(segments[block * 6 + k]), int(segments[block * 6 + k + 1])
            row = slice(int(own[k]), int(own[k + 1]))
            mine = (rows[row] // (2 * layout.plane)).clamp(max=2) == block
            assert offsets[a:b].tolist() == rows[row][mine].tolist()
            assert values[a:b].tolist() == csr.values[row][mine].tolist()
    pairs = csr.row_pairs()
    *_, pair_values, pair_offsets, pair_segments = pairs.segment_major(layout, 3, 2)
    shared = pairs.input_offsets(layout)[1]
    first = slice(int(pair_segments[0]), int(pair_segments[1]))  # pair 0's block-0 segment
    in_block = shared[: int(pairs.pair_row_ptr[1])] < 2 * layout.plane
    assert pair_offsets[first].tolist() == shared[: int(pairs.pair_row_ptr[1])][in_block].tolist()
    assert pair_values.numel() == 2 * pair_offsets.numel()


def test_row_pairs_split_the_weight_exactly():
    """Row pairs hold every non-zero once: the columns rows 2q and 2q+1 both use (two values
    each) and each row's others; shared is their fraction, ≈ the density for random weights."""
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 6, 3, 3, generator=generator)
    weight[torch.rand(weight.shape, generator=generator) < 0.6] = 0.0
    weight[3] = 0.0  # an empty row: its pair (rows 2 and 3) shares no column
    csr = conv_weight_to_csr(weight, groups=2)
    pairs = csr.row_pairs()
    assert pairs is not None and csr.row_pairs() is pairs  # cached
    rows = weight.reshape(4, 2, -1)
    both = (rows[:, 0] != 0) & (rows[:, 1] != 0)
    assert pairs.pair_row_ptr.tolist()[1:] == torch.cumsum(both.sum(1), 0).tolist()
    rebuilt = torch.zeros(8, 6 * 9)
    counts = (pairs.row_ptr[1:] - pairs.row_ptr[:-1]).long()
    own_rows = torch.repeat_interleave(torch.arange(8), counts)
    rebuilt[own_rows, pairs.kernel_index.long()] = pairs.values
    pair_counts = (pairs.pair_row_ptr[1:] - pairs.pair_row_ptr[:-1]).long()
    pair_rows = torch.repeat_interleave(torch.arange(4), pair_counts)
    values = pairs.pair_values.view(-1, 2)
    rebuilt[2 * pair_rows, pairs.pair_index.long()] = values[:, 0]
    rebuilt[2 * pair_rows + 1, pairs.pair_index.long()] = values[:, 1]
    torch.testing.assert_close(rebuilt.view_as(weight), weight, rtol=0, atol=0)
    assert pairs.values.numel() + pairs.pair_values.numel() == csr.nnz
    assert pairs.shared == pytest.approx(2 * int(both.sum()) / csr.nnz)
    # The share counted from the indices alone (what pairs_pay decides on) is the split's.
    assert conv_weight_to_csr(weight, groups=2).shared_fraction() == pairs.shared
    for odd, groups in ((torch.randn(1, 1, 3, 3), 1), (torch.randn(6, 2, 3, 3), 2)):
        odd_csr = conv_weight_to_csr(odd, groups)  # nothing to pair; 3 channels a group
        assert odd_csr.row_pairs() is None and odd_csr.shared_fraction() is None
        assert not odd_csr.pairs_pay()
    dense = conv_weight_to_csr(torch.randn(16, 8, 3, 3))
    assert dense.shared_fraction() == 1.0 and dense.pairs_pay()
    assert dense.row_pairs().shared == 1.0
    sparse = torch.randn(64, 64, 3, 3, generator=generator)
    sparse[torch.rand(sparse.shape, generator=generator) < 0.9] = 0.0
    sparse_csr = conv_weight_to_csr(sparse)
    assert not sparse_csr.pairs_pay()
    assert "pairs" not in sparse_csr._cache  # deciding against pairs built no split
    assert sparse_csr.shared_fraction() == pytest.approx(0.1, abs=0.02)
    assert sparse_csr.row_pairs().shared == sparse_csr.shared_fraction()


# ---------------------------------------------------------------------------------------
# Bad inputs: a clear Python error, never a crash.


def _small():
    weight = torch.randn(4, 3, 3, 3)
    return torch.randn(2, 3, 8, 8), conv_weight_to_csr(weight)


@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bad_inputs_raise_clear_errors(implementation, warm, request):
    """Typed errors, also once a good call has cached its plan for this weight and shape (the
    native op's own checks then stand in, and the Python ones name the error)."""
    x, csr = _small()
    if warm:
        _run(implementation, request, x, csr, stride=1)
    with pytest.raises(TypeError, match="stride"):  # True == 1, but is no stride
        _run(implementation, request, x, csr, stride=True)
    with pytest.raises(TypeError, match="float32"):
        _run(implementation, request, x.double(), csr)
    with pytest.raises(ValueError, match="contiguous"):
        _run(implementation, request, x.transpose(2, 3), csr)
    with pytest.raises(ValueError, match="4-D"):
        _run(implementation, request, x[0], csr)
    with pytest.raises(ValueError, match="channels"):
        _run(implementation, request, torch.randn(2, 5, 8, 8), csr)
    with pytest.raises(ValueError, match="bias"):
        _run(implementation, request, x, csr, torch.zeros(3))
    with pytest.raises(TypeError, match="ConvCSR"):
        _run(implementation, request, x, torch.randn(4, 3, 3, 3))
    with pytest.raises(TypeError, match="stride"):
        _run(implementation, request, x, csr, stride="2")
    with pytest.raises(ValueError, match="stride"):
        _run(implementation, request, x, csr, stride=0)
    with pytest.raises(TypeError, match="Tensor"):
        _run(implementation, request, [[1.0]], csr)


def test_call_plans_are_cached_per_shape_and_bounded():
    """sparse_conv2d caches its plan per input shape, options and threads: the second call
    reuses it, and a weight seeing many shapes keeps at most 64."""
    _, csr = _small()
    x = torch.randn(2, 3, 8, 8)
    out = sparse_conv2d(x, csr, padding=1)
    assert len(csr._plans) == 1
    torch.testing.assert_close(sparse_conv2d(x, csr, padding=1), out)
    torch.testing.assert_close(out, F.conv2d(x, csr.to_dense(), padding=1), rtol=RTOL, atol=ATOL)
    assert len(csr._plans) == 1
    for size in range(3, 80):
        y = torch.randn(1, 3, size, 5)
        torch.testing.assert_close(
            sparse_conv2d(y, csr), F.conv2d(y, csr.to_dense()), rtol=RTOL, atol=ATOL
        )
    assert 1 <= len(csr._plans) <= 64


def test_fast_path_follows_the_shape_threads_and_options(native_kernel):
    """The last native plan is reused only for the same input shape, thread count and option
    objects: other shapes, a thread count with its own plan (stacking and blocking depend on
    it) and equal-but-other options (1.0, True) take the slow path and its checks."""
    _, csr = _small()
    dense = csr.to_dense()
    x, y = torch.randn(2, 3, 8, 8), torch.randn(3, 3, 11, 7)
    for _ in range(3):  # alternating shapes: each call leaves the other's plan in the fast slot
        for inp in (x, y):
            torch.testing.assert_close(
                sparse_conv2d(inp, csr, padding=1), F.conv2d(inp, dense, padding=1),
                rtol=RTOL, atol=ATOL,
            )  # fmt: skip
    assert len(csr._plans) == 2
    default = torch.get_num_threads()
    for threads in (1, 2, 3):
        with _num_threads(threads):
            sparse_conv2d(x, csr, padding=1)
    # a plan per thread count (the key's last item): the fast slot did not stand in
    assert {key[-1] for key in csr._plans if key[0] == x.shape} == {1, 2, 3, default}
    with pytest.raises(TypeError, match="padding"):  # 1.0 == 1, but is no padding
        sparse_conv2d(x, csr, padding=1.0)
    with pytest.raises(ValueError, match="bias"):  # the op refuses, the slow path names it
        sparse_conv2d(x, csr, torch.zeros(3), padding=1)
    torch.testing.assert_close(
        sparse_conv2d(x, csr, padding=1, fuse_relu=True),
        F.conv2d(x, dense, padding=1).relu(), rtol=RTOL, atol=ATOL,
    )  # fmt: skip


def test_fast_path_sees_in_place_writes(native_kernel):
    """The plan checks the CSR's version counters in C++: a write through torch after a call
    (values scaled, indices moved) is computed, for convolutions and linear layers."""
    _, csr = _small()
    x = torch.randn(2, 3, 8, 8)
    sparse_conv2d(x, csr)
    csr.values.mul_(2)
    torch.testing.assert_close(sparse_conv2d(x, csr), F.conv2d(x, csr.to_dense()),
                               rtol=RTOL, atol=ATOL)  # fmt: skip
    weight = torch.zeros(4, 6)
    weight[:, 0] = 1.0
    linear = linear_weight_to_csr(weight)
    v = torch.randn(2, 6)
    sparse_linear(v, linear)
    linear.cols.fill_(5)  # every non-zero moved to column 5
    torch.testing.assert_close(sparse_linear(v, linear), v[:, 5:6].expand(2, 4))
    with pytest.raises(ValueError, match="in_features"):
        sparse_linear(torch.randn(2, 7), linear)


def test_weights_with_cached_plans_copy_and_pickle():
    """A plan holds the extension module, which does not pickle: copies start without plans."""
    x, csr = _small()
    expected = sparse_conv2d(x, csr)
    linear = linear_weight_to_csr(torch.randn(4, 6))
    y = torch.randn(2, 6)
    linear_out = sparse_linear(y, linear)
    for copied, copied_linear in (
        (copy.deepcopy(csr), copy.deepcopy(linear)),
        (pickle.loads(pickle.dumps(csr)), pickle.loads(pickle.dumps(linear))),
    ):
        assert copied._plans == {} and copied_linear._plans == {}
        torch.testing.assert_close(sparse_conv2d(x, copied), expected)
        torch.testing.assert_close(sparse_linear(y, copied_linear), linear_out)
    assert csr._plans  # the original keeps its plans


def test_weights_pickled_before_the_call_caches_existed_still_load_and_run(monkeypatch):
    """A pickle from a version without ``_plans``, ``_fast`` or ``_segments`` (the caches came
    later) loads with them empty, and the weight computes as the original."""
    from model.sparse.csr import ConvCSR, LinearCSR

    x, csr = _small()
    expected = sparse_conv2d(x, csr, row_pairs=True)
    linear = linear_weight_to_csr(torch.randn(4, 6))
    y = torch.randn(2, 6)
    linear_out = sparse_linear(y, linear)
    old_csr, old_linear = copy.deepcopy(csr), copy.deepcopy(linear)
    for name in ("_plans", "_fast", "_segments"):
        del old_csr.__dict__[name]
    for name in ("_plans", "_fast"):
        del old_linear.__dict__[name]
    assert old_csr._cache, "row pairs were not cached: nothing to check for them"
    for pairs in old_csr._cache.values():  # RowPairs without its segment-major copies
        del pairs.__dict__["_segments"]
    for cls in (ConvCSR, LinearCSR):  # pickled as an old version did: the whole __dict__
        monkeypatch.setattr(cls, "__getstate__", lambda self: dict(self.__dict__))
    pickled, pickled_linear = pickle.dumps(old_csr), pickle.dumps(old_linear)
    monkeypatch.undo()
    loaded, loaded_linear = pickle.loads(pickled), pickle.loads(pickled_linear)
    assert loaded._plans == {} and loaded._fast == [] and loaded._segments == {}
    assert loaded_linear._plans == {} and loaded_linear._fast == []
    assert all(pairs._segments == {} for pairs in loaded._cache.values())
    torch.testing.assert_close(sparse_conv2d(x, loaded, row_pairs=True), expected)
    torch.testing.assert_close(sparse_linear(y, loaded_linear), linear_out)


def test_kernel_larger_than_input_raises():
    x, csr = _small()
    with pytest.raises(ValueError, match="does not fit"):
        sparse_conv2d(x[:, :, :2, :2].contiguous(), csr, implementation="reference")


def test_row_pairs_argument_is_checked():
    x = torch.randn(1, 2, 6, 6)
    odd = conv_weight_to_csr(torch.randn(6, 1, 3, 3), groups=2)  # 3 output channels a group
    with pytest.raises(ValueError, match="even number of output channels per group, got 3"):
        sparse_conv2d(x, odd, row_pairs=True, implementation="reference")
    with pytest.raises(TypeError, match="row_pairs"):
        sparse_conv2d(x, odd, row_pairs="yes", implementation="reference")
    for row_pairs in (None, False):  # both run the one-row kernel
        torch.testing.assert_close(
            sparse_conv2d(x, odd, row_pairs=row_pairs),
            F.conv2d(x, odd.to_dense(), groups=2),
            rtol=RTOL,
            atol=ATOL,
        )


def test_unknown_implementation_raises():
    x, csr = _small()
    with pytest.raises(ValueError, match="implementation"):
        sparse_conv2d(x, csr, implementation="cuda")
    with pytest.raises(ValueError, match="batch_layout"):
        sparse_conv2d(x, csr, batch_layout="nhwc")


@pytest.mark.native
def test_native_op_checks_its_arguments(native_kernel):
    """The raw extension op validates everything itself (TORCH_CHECK → RuntimeError)."""
    x, csr = _small()
    layout = conv_layout(3, 8, 8, (3, 3))
    offsets = csr.input_offsets(layout)
    args = dict(
        out_channels=4, kernel=[3, 3], stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1
    )
    op = native_kernel.sparse_conv2d_forward
    ok = op(x, csr.values, offsets, csr.row_ptr, None, relu=False, **args)
    torch.testing.assert_close(ok, F.conv2d(x, csr.to_dense()), rtol=RTOL, atol=ATOL)
    bad_offsets = offsets.clone()
    bad_offsets[0] = 10**8
    with pytest.raises(RuntimeError, match="column index out of range"):
        op(x, csr.values, bad_offsets, csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="out of range"):
        op(x, csr.values, -offsets - 1, csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="float32"):
        op(x.double(), csr.values, offsets, csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x.transpose(2, 3), csr.values, offsets, csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="4-D"):
        op(x[0], csr.values, offsets, csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="int32"):
        op(x, csr.values, offsets.long(), csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="row pointers"):
        op(x, csr.values, offsets, csr.row_ptr[:-1], None, relu=False, **args)
    shuffled = csr.row_ptr.clone()
    shuffled[1], shuffled[2] = int(csr.row_ptr[2]), int(csr.row_ptr[1]) - 1
    with pytest.raises(RuntimeError, match="non-decreasing"):
        op(x, csr.values, offsets, shuffled, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="values but"):
        op(x, csr.values[:-1], offsets, csr.row_ptr, None, relu=False, **args)
    with pytest.raises(RuntimeError, match="bias"):
        op(x, csr.values, offsets, csr.row_ptr, torch.zeros(5), relu=False, **args)
    with pytest.raises(RuntimeError, match="groups"):
        op(x, csr.values, offsets, csr.row_ptr, None, relu=False, **{**args, "groups": 2})
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        op(x[:, :, :2, :2].contiguous(), csr.values, offsets, csr.row_ptr, None, relu=False, **args)
    for stack in (0, -1, 3, 2**61):  # x holds 2 images
        with pytest.raises(RuntimeError, match="stack must be from 1 to the batch size"):
            op(x, csr.values, offsets, csr.row_ptr, None, relu=False, **args, stack=stack)
    for stack in (0, 2**21, 2**61):  # the test helpers say so too, rather than overflow
        with pytest.raises(RuntimeError, match="stack must be from 1 to 2"):
            native_kernel.conv_layout(3, 8, 8, [3, 3], [1, 1], [0, 0], [1, 1], stack)
        with pytest.raises(RuntimeError, match="stack must be from 1 to 2"):
            native_kernel.conv_blocking(3, 8, 8, [3, 3], [1, 1], [0, 0], [1, 1], 4, stack)
    with pytest.raises(RuntimeError, match="batch-blocked layout does not stack"):
        op(x, csr.values, offsets, csr.row_ptr, None, relu=False, mode=2, **args, stack=2)
    # A stack is a layout of its own: with its offsets, a stack of 2 is right; the offsets of
    # the wider unit reach past one image's input and are refused there.
    wide = csr.input_offsets(conv_layout(3, 8, 8, (3, 3), stack=2))
    stacked = op(x, csr.values, wide, csr.row_ptr, None, relu=False, **args, stack=2)
    torch.testing.assert_close(stacked, F.conv2d(x, csr.to_dense()), rtol=RTOL, atol=ATOL)
    with pytest.raises(RuntimeError, match="out of range"):
        op(x, csr.values, wide, csr.row_ptr, None, relu=False, **args, stack=1)
    # Layout sizes that overflow 64 bits raise (they once wrapped to 0 and divided by zero).
    with pytest.raises(RuntimeError, match="overflows 64 bits"):
        op(x, csr.values, offsets, csr.row_ptr, None, relu=False,
           **{**args, "stride": [2**32, 2**32]})  # fmt: skip
    with pytest.raises(RuntimeError, match="overflows 64 bits"):
        native_kernel.conv_layout(3, 8, 8, [3, 3], [2**32, 2**32], [0, 0], [1, 1], 1)
    tiny = torch.zeros(2**21, 1, 1, 1)  # 2^21 one-pixel images stacked in one unit
    empty = conv_weight_to_csr(torch.zeros(1, 1, 1, 1))
    with pytest.raises(RuntimeError, match="overflows 64 bits"):
        op(tiny, empty.values, empty.kernel_index, empty.row_ptr, None, relu=False,
           **{**args, "out_channels": 1, "kernel": [1, 1], "stride": [2**20] * 2,
              "padding": [2**20] * 2},
           stack=2**21)  # fmt: skip
    # Row pairs: all three arrays or none, two values per shared column, one pointer per pair.
    pairs = csr.row_pairs()
    own, shared = pairs.input_offsets(layout)
    pair = dict(
        pair_values=pairs.pair_values, pair_offsets=shared, pair_row_ptr=pairs.pair_row_ptr
    )
    ok = op(x, pairs.values, own, pairs.row_ptr, None, relu=False, **args, **pair)
    torch.testing.assert_close(ok, F.conv2d(x, csr.to_dense()), rtol=RTOL, atol=ATOL)
    for wrong, message in (
        ({"pair_values": None}, "need pair_values, pair_offsets and pair_row_ptr"),
        ({"pair_values": pairs.pair_values[:-1]}, "two values per column index"),
        ({"pair_row_ptr": pairs.pair_row_ptr[:-1]}, "row-pair pointers must have 3 entries"),
        ({"pair_offsets": shared.long()}, "int32"),
    ):
        with pytest.raises(RuntimeError, match=message):
            op(x, pairs.values, own, pairs.row_ptr, None, relu=False, **args, **{**pair, **wrong})
    odd = conv_weight_to_csr(torch.randn(5, 3, 3, 3), groups=1)
    odd_offsets = odd.input_offsets(layout)
    with pytest.raises(RuntimeError, match="even number of output channels per group"):
        op(x, odd.values, odd_offsets, odd.row_ptr, None, relu=False,
           **{**args, "out_channels": 5}, **pair)  # fmt: skip


@pytest.mark.native
@pytest.mark.parametrize("batch", [1, 3, 20])
@pytest.mark.parametrize("features", [(70, 33), (40000, 9)])
def test_native_linear_int16_and_int32_columns(native_kernel, batch, features):
    """The linear op takes int32 or (unsigned) 16-bit column indices, rows of any length
    (masked tails), and rejects out-of-range indices with an error instead of reading them."""
    from model.sparse import linear_weight_to_csr, sparse_linear

    F_in, K = features
    generator = torch.Generator().manual_seed(batch)
    weight = torch.randn(K, F_in, generator=generator)
    weight[torch.rand(weight.shape, generator=generator) < 0.7] = 0.0
    weight[0] = 0.0  # an empty row
    weight[1, -40:] = 1.5  # indices >= 32768 when F_in = 40000 (negative as int16)
    csr = linear_weight_to_csr(weight)
    x = torch.randn(batch, F_in, generator=generator)
    bias = torch.randn(K, generator=generator)
    expected = F.linear(x, weight, bias)
    torch.testing.assert_close(sparse_linear(x, csr, bias), expected, rtol=RTOL, atol=ATOL)
    cols16 = torch.where(csr.cols >= 32768, csr.cols - 65536, csr.cols).to(torch.int16)
    op = native_kernel.sparse_linear_forward
    for cols in (csr.cols, cols16):
        out = op(x, csr.values, cols, csr.row_ptr, bias, K, False)
        torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)
        bad = cols.clone()
        # F_in itself, or 65535 (int16 -1) when F_in does not fit in int16
        bad[-1] = F_in if cols.dtype == torch.int32 or F_in < 32768 else -1
        with pytest.raises(RuntimeError, match="column index out of range"):
            op(x, csr.values, bad, csr.row_ptr, bias, K, False)
    with pytest.raises(RuntimeError, match="column index out of range"):
        op(x, csr.values, -csr.cols - 1, csr.row_ptr, bias, K, False)


def test_native_op_lets_other_python_threads_run(native_kernel):
    """The op held the GIL for its whole run: a service's other threads stalled meanwhile."""
    import threading
    import time

    weight = torch.randn(128, 128, 3, 3)
    weight[torch.rand(weight.shape) < 0.5] = 0
    csr = conv_weight_to_csr(weight)
    x = torch.randn(4, 128, 56, 56)
    sparse_conv2d(x, csr, padding=1)  # plan built
    for _ in range(3):  # a few tries: the ticks need the scheduler's help on a busy machine
        ticks: list[float] = []
        done = threading.Event()

        def tick(ticks: list[float] = ticks, done: threading.Event = done) -> None:
            while not done.is_set():
                ticks.append(time.perf_counter())
                time.sleep(0.002)

        ticker = threading.Thread(target=tick)
        ticker.start()
        time.sleep(0.02)
        start = time.perf_counter()
        sparse_conv2d(x, csr, padding=1)
        end = time.perf_counter()
        done.set()
        ticker.join()
        if sum(start < t < end for t in ticks) >= 3:
            break
    assert sum(start < t < end for t in ticks) >= 3, f"{end - start:.3f} s with no other thread"


def test_huge_padding_is_refused_before_any_work(native_kernel):
    """Padding 100000 made gigabytes of layout numbers before the op's size check."""
    _, csr = _small()
    x = torch.randn(1, 3, 9, 9)
    with pytest.raises(ValueError, match="too large for the sparse kernel's 32-bit offsets"):
        sparse_conv2d(x, csr, padding=100_000)
    with pytest.raises(ValueError, match="too large"):
        sparse_conv2d(x, csr, padding=3000)


def test_per_size_caches_stay_bounded(native_kernel):
    """Plans were capped at 64 but offsets and segment-major copies grew with every new input
    size (≈700 KiB a size on AlexNet conv3 at 90%)."""
    weight = torch.randn(64, 64, 3, 3)
    weight[torch.rand(weight.shape) < 0.5] = 0  # row pairs, segment-major (CSR ≥ 64 KiB)
    csr = conv_weight_to_csr(weight)
    for size in range(4, 84):
        x = torch.randn(1, 64, size, 7)
        out = sparse_conv2d(x, csr, padding=1)
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=1), rtol=RTOL, atol=1e-4)
    pairs = csr._cache.get("pairs")
    sizes = [len(csr._plans), len(csr._offsets), len(pairs._offsets), len(pairs._segments),
             len(csr._segments)]
    assert max(sizes) <= 64, sizes


def test_flags_and_corrupt_indices_raise_typed_errors(native_kernel):
    """fuse_relu=[0] gave pybind's dump of 19 parameters; row_pairs=1 passed as True; a
    negative index in a hand-made CSR wrapped around in the row-pair split (a wrong result)."""
    x, csr = _small()
    for value in ([0], "", None):
        with pytest.raises(TypeError, match="fuse_relu must be True or False"):
            sparse_conv2d(x, csr, fuse_relu=value)
        with pytest.raises(TypeError, match="fuse_relu must be True or False"):
            sparse_linear(torch.randn(2, 6), linear_weight_to_csr(torch.randn(4, 6)),
                          fuse_relu=value)  # fmt: skip
    for value in (1, 0.0):
        with pytest.raises(TypeError, match="row_pairs"):
            sparse_conv2d(x, csr, row_pairs=value)
    weight = torch.randn(8, 3, 3, 3)
    corrupt = conv_weight_to_csr(weight)
    corrupt.kernel_index[-1] = -1
    for row_pairs in (True, False):
        with pytest.raises((ValueError, RuntimeError), match="out of range"):
            sparse_conv2d(x, corrupt, row_pairs=row_pairs)


def test_typed_errors_on_a_cached_plan_are_not_chained(native_kernel):
    """The typed error came "during handling of" the op's RuntimeError in the traceback."""
    x, csr = _small()
    sparse_conv2d(x, csr)  # cached plan
    with pytest.raises(TypeError, match="float32") as raised:
        sparse_conv2d(x.double(), csr)
    assert raised.value.__context__ is None and raised.value.__cause__ is None
