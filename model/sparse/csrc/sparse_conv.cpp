// Direct sparse convolution and sparse fully connected layers on CPU (fp32).
//
// Implements the kernel of Park et al., "Faster CNNs with Direct Sparse Convolutions and
// Guided Pruning", ICLR 2017, §2.1 (see docs/sparse-kernel.md and RESEARCH.md §2):
//
//   out[k, y, x] = bias[k] + Σ_j value[j] · in_padded[offset[j] + y·Wph + x]
//
// over the non-zeros j of CSR row k. The column index `offset[j]` of non-zero (c, r, s) is
// its offset in a padded, stride-phase-split copy of the input (layout below), so the output
// plane, flattened with row pitch Wph, is a contiguous range of input offsets: vectorise it
// with broadcast-weight FMAs and keep several output vectors in registers. No im2col.
//
// Padded layout of one unit (computed identically by model/sparse/csr.py::conv_layout): one
// image, or from batch 2 a few small images side by side (struct Layout):
//   per input channel c, sh·sw "phase planes" (one per (h mod sh, w mod sw)), each of Hph
//   rows × Wph columns. Padded element (h, w) lives at
//     c·plane + ((h % sh)·sw + w % sw)·Hph·Wph + (h / sh)·Wph + w / sw.
//   The padded row pitch Wrow = Wph·sw ≥ W + pad_w (and Wph ≥ Q): the right padding of one row doubles as
//   the left padding of the next (reads past Wrow wrap into the next row's zero left pad),
//   and each phase plane ends in one extra zero row for the same reason.
// Two storage modes use the same offsets:
//   spatial  (LANES = 1):  one unit, vectors run along the flattened output plane;
//   blocked  (LANES = VW): VW images interleaved per element, vectors run across images
//                          (all loads aligned, no wasted lanes) — used for batches ≥ VW.
// The input is packed into this layout by the thread that uses it (padding fused into the
// op: no separate torch pad or layout ops).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// Error messages are built here and handed to TORCH_CHECK as one string: numbers go through
// std::to_string, never an ostream. Where an extension's ostream insertion of an integer
// crashes the process (seen with torch 2.11.0+cu130 and GCC 13.3 on an Intel host: every
// extension, even one TORCH_CHECK with a number and default flags), a refused input would
// otherwise be a segfault instead of a RuntimeError.
inline std::string message_piece(const char* text) { return text; }
inline std::string message_piece(const std::string& text) { return text; }
inline std::string message_piece(c10::ScalarType type) { return c10::toString(type); }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
std::string message_piece(T value) {
  return std::to_string(value);
}
template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string text;
  ((text += message_piece(parts)), ...);
  return text;
}
#define SS_CHECK(cond, ...) TORCH_CHECK(cond, message(__VA_ARGS__))

namespace {

// ---------------------------------------------------------------------------------------
// Vector abstraction: AVX-512 (16 lanes) or AVX2+FMA (8 lanes), chosen at build time by
// -march=native; a portable fallback the compiler may auto-vectorise otherwise.
#if defined(__AVX512F__) && !defined(SWEETSPOT_FORCE_AVX2)
constexpr int VW = 16;
using vec = __m512;
inline vec vset1(float x) { return _mm512_set1_ps(x); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
constexpr const char* kIsa = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int VW = 8;
using vec = __m256;
inline vec vset1(float x) { return _mm256_set1_ps(x); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
constexpr const char* kIsa = "avx2";
#else
constexpr int VW = 8;
struct vec {
  float v[VW];
};
inline vec vset1(float x) {
  vec r;
  for (int i = 0; i < VW; ++i) r.v[i] = x;
  return r;
}
inline vec vload(const float* p) {
  vec r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline void vstore(float* p, vec v) { std::memcpy(p, v.v, sizeof(v.v)); }
inline vec vfma(vec a, vec b, vec c) {
  for (int i = 0; i < VW; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
constexpr const char* kIsa = "generic";
#endif

// Keeps a loaded vector in a register: without this, GCC folds the load into each FMA that
// uses it, so a vector shared by two FMAs is loaded twice (the row-pair tile's whole point).
#if defined(__AVX512F__) || defined(__AVX2__)
inline void in_register(vec& x) { asm("" : "+v"(x)); }
#else
inline void in_register(vec&) {}
#endif

// Register tile: output vectors kept in registers while streaming one CSR row.
// TILE = 12 measured best on the Zen 5 development host (docs/sparse-kernel.md, "register tiling").
#ifndef SWEETSPOT_TILE
#define SWEETSPOT_TILE 12
#endif
constexpr int TILE = SWEETSPOT_TILE;
// A last strip of at most kTailVectors vectors joins the one before it, and a strip's last
// kMaxTile vectors or fewer are one tile: a separate short tile streams the whole CSR row
// segment for a fraction of the work (27×27 layers: 49 vectors = 4 × 12 + 1, 4% of conv2's
// time, perf; 16×16 layers: 17 vectors as one tile instead of 12 + 5, 5% faster).
// Registers bound both: AVX-512 has 32 (24 accumulators + the weight), AVX2 16 (14 + 1).
constexpr int kMaxTile = VW == 16 ? 2 * TILE : TILE + 2;
constexpr int kTailVectors = std::min(TILE / 3, kMaxTile - TILE);
// Row pairs (two output channels' shared columns, one input load for both rows' FMAs) keep
// 2·n accumulators, 2 weights and the loaded vector in registers: n <= 12 (AVX-512), 6 (AVX2).
// A wider tile is cut into the fewest pieces of near-equal size.
constexpr int kPairTile = VW == 16 ? 12 : 6;

// CSR rows ahead whose next segment is prefetched, and at most how much of it: on a batch-1
// call the CSR comes from memory, and a pass over one channel block reads every row at a
// different place, which the hardware prefetchers do not follow (2, 4 and 8 rows measured
// alike; 2 lines per array → the segment's length: 4–9% faster when the CSR is cold, 1–6% at
// 70% sparsity from 3 lines to up to 8; docs/sparse-kernel.md).
constexpr int64_t kPrefetchRows = 4;
constexpr int64_t kPrefetchFloats = 128;

// Whether batches of >= VW images use the batch-blocked layout (docs/sparse-kernel.md).
constexpr bool kBlockedByDefault = false;

// ---------------------------------------------------------------------------------------
// A unit (what one packing buffer holds) is `stack` images side by side: a unit row holds
// row h of every image, image j's `image_pitch` columns (its row pitch alone) after image
// j − 1's. The zero columns after an image are its right padding and the next image's left
// padding, as they are between one row and the next of a single image, so a unit wastes no
// more lanes per output than one image does. Small images stacked fill bigger register tiles
// (docs/sparse-kernel.md, "stacking small images").
struct Layout {
  int64_t C, H, W;         // input channels of ONE group, input height/width of one image
  int64_t R, S;            // kernel
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t P, Q;            // output height/width of one image
  int64_t stack;           // images per unit
  int64_t image_pitch;     // phase-plane columns of one image: stack·image_pitch = Wph
  int64_t Hph, Wph;        // rows (incl. one extra zero row) and columns of a phase plane
  int64_t phase_plane;     // Hph·Wph
  int64_t plane;           // sh·sw·phase_plane: elements per input channel of a unit
  int64_t M;               // P·Wph: flattened outputs per channel
};

// Ceiling of a / b for b > 0, without the overflow of (a + b − 1) / b.
int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b > 0); }

// Layout sizes come from the caller's strides, padding, dilation and stack: computed with
// overflow checks, so absurd values raise instead of wrapping around (a size that wrapped to
// 0 once divided by zero in the blocking and killed the process).
void check_no_overflow(bool overflowed) {
  SS_CHECK(!overflowed, "sparse_conv2d: the padded layout's size overflows 64 bits (stride, ",
              "padding, dilation, kernel or stack too large)");
}
int64_t mul(int64_t a, int64_t b) {
  int64_t r;
  check_no_overflow(__builtin_mul_overflow(a, b, &r));
  return r;
}
int64_t add(int64_t a, int64_t b) {
  int64_t r;
  check_no_overflow(__builtin_add_overflow(a, b, &r));
  return r;
}

Layout make_layout(int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh,
                   int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                   int64_t stack = 1) {
  Layout L{};
  L.C = C; L.H = H; L.W = W; L.R = R; L.S = S;
  L.sh = sh; L.sw = sw; L.ph = ph; L.pw = pw; L.dh = dh; L.dw = dw;
  L.P = (add(H, mul(2, ph)) - mul(dh, R - 1) - 1) / sh + 1;
  L.Q = (add(W, mul(2, pw)) - mul(dw, S - 1) - 1) / sw + 1;
  // An image's pitch shares one row's right padding with the next row's left padding (or
  // the next stacked image's), and holds at least the Q outputs of a row (1×1 kernels with
  // padding have Q > W + pad). Its outputs read its own padded columns only: the last one
  // reads up to W + 2·pw − 1, which is below the next image's first data column.
  L.stack = stack;
  L.image_pitch = std::max(ceil_div(add(W, pw), sw), L.Q);
  L.Hph = ceil_div(add(H, mul(2, ph)), sh) + 1;
  L.Wph = mul(stack, L.image_pitch);
  L.phase_plane = mul(L.Hph, L.Wph);
  L.plane = mul(mul(sh, sw), L.phase_plane);
  L.M = mul(L.P, L.Wph);
  return L;
}

// Copies n floats (optionally through ReLU). Rows here are short, and a memcpy call per row
// costs more than the copy: ≈10% of an 8×8 layer (perf), 12% of a 16×16 one. So 8–15 floats
// are two overlapping unaligned 8-float vectors, and under AVX-512 16–32 floats two 16-float
// ones (CIFAR 16×16 and 32×32 layers at batch 32 2–7% faster than with memcpy; masked stores
// were slower when the destination line is not cached). Longer rows: memcpy, as fast as a
// vector loop (56×56).
inline void copy_row(float* __restrict d, const float* __restrict s, int64_t n, bool relu) {
#if defined(__AVX2__)
  if (n >= 8 && n < 16) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 x0 = _mm256_loadu_ps(s), x1 = _mm256_loadu_ps(s + n - 8);
    _mm256_storeu_ps(d, relu ? _mm256_max_ps(x0, zero) : x0);
    _mm256_storeu_ps(d + n - 8, relu ? _mm256_max_ps(x1, zero) : x1);
    return;
  }
#endif
#if defined(__AVX512F__)
  if (n >= 16 && n <= 32) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 x0 = _mm512_loadu_ps(s), x1 = _mm512_loadu_ps(s + n - 16);
    _mm512_storeu_ps(d, relu ? _mm512_max_ps(x0, zero) : x0);
    _mm512_storeu_ps(d + n - 16, relu ? _mm512_max_ps(x1, zero) : x1);
    return;
  }
#endif
  if (relu) {
    for (int64_t i = 0; i < n; ++i) d[i] = std::max(s[i], 0.f);
  } else if (n > 0) {
    std::memcpy(d, s, sizeof(float) * n);
  }
}

// Pack channels [c0, c1) of one image (src: (C_total, H, W) contiguous) into dst (already
// zeroed) as stacked image `slot` of its unit, element stride `lanes` (1 = spatial, VW =
// blocked lane `lane`). Not inlined: inside run_conv's parallel regions its row loop spilled
// registers on every row (perf, CIFAR layers at batch 32).
__attribute__((noinline)) void pack_channels(const float* src, float* dst, const Layout& L,
                                             int64_t c0, int64_t c1, int64_t lanes,
                                             int64_t lane, int64_t slot = 0) {
  const int64_t HW = L.H * L.W;
  const int64_t left = L.pw + slot * L.image_pitch * L.sw;  // the image's first data column
  if (L.sh == 1 && L.sw == 1 && lanes == 1) {  // rows stay rows: no phase arithmetic per row
    const int64_t W = L.W, Wph = L.Wph;
    for (int64_t c = c0; c < c1; ++c) {
      const float* s = src + c * HW;
      float* d = dst + c * L.plane + L.ph * Wph + left;
      for (int64_t h = 0; h < L.H; ++h) copy_row(d + h * Wph, s + h * W, W, false);
    }
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    const float* s = src + c * HW;
    float* d = dst + c * L.plane * lanes;
    for (int64_t h = 0; h < L.H; ++h) {
      const int64_t hp = h + L.ph;
      const int64_t row = ((hp % L.sh) * L.sw) * L.phase_plane + (hp / L.sh) * L.Wph;
      const float* sr = s + h * L.W;
      if (L.sw == 1) {
        if (lanes == 1) {
          copy_row(d + row + left, sr, L.W, false);
        } else {
          float* dr = d + (row + left) * lanes + lane;
          for (int64_t w = 0; w < L.W; ++w) dr[w * lanes] = sr[w];
        }
        continue;
      }
      for (int64_t w = 0; w < L.W; ++w) {
        const int64_t wp = w + left;
        const int64_t pos = row + (wp % L.sw) * L.phase_plane + wp / L.sw;
        d[pos * lanes + lane] = sr[w];
      }
    }
  }
}

// Start T accumulators: `init` (the bias) on the first channel block, else the partial sums.
template <int T>
inline void start_tile(vec (&acc)[T], bool first, float init, const float* __restrict acc_io) {
  if (first) {
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[t] = vset1(init);
  } else {
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[t] = vload(acc_io + t * VW);
  }
}

template <int T>
inline void store_tile(const vec (&acc)[T], float* __restrict acc_io) {
#pragma GCC unroll 32
  for (int t = 0; t < T; ++t) vstore(acc_io + t * VW, acc[t]);
}

// Streams the CSR segment [begin, end) of one row into T accumulators: per non-zero one
// broadcast weight and T FMAs on consecutive input vectors at its offset, stopping early at the
// first column index >= `limit`. Returns where it stopped.
template <int T, int LANES>
__attribute__((always_inline)) inline int64_t stream_row(const float* __restrict in,
                                                         const float* __restrict vals,
                                                         const int32_t* __restrict offs,
                                                         int64_t begin, int64_t end,
                                                         uint32_t limit, vec (&acc)[T]) {
  int64_t j = begin;
  for (; j < end && static_cast<uint32_t>(offs[j]) < limit; ++j) {
    const vec w = vset1(vals[j]);
    const float* p = in + static_cast<int64_t>(offs[j]) * LANES;
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[t] = vfma(w, vload(p + t * VW), acc[t]);
  }
  return j;
}

// One register tile: T output vectors over the CSR segment [begin, end) of one row, stopping
// early at the first column index >= `limit` (the end of the current input-channel block).
// `in` points at the tile's first input element; offsets are in elements (× LANES floats).
// Accumulators start from `init` (bias) on the first channel block, else from `acc_io`.
// Returns where the segment stopped, so later tiles of the same row reuse it.
template <int T, int LANES>
inline int64_t tile_kernel(const float* __restrict in, const float* __restrict vals,
                           const int32_t* __restrict offs, int64_t begin, int64_t end,
                           uint32_t limit, bool first, float init, float* __restrict acc_io) {
  vec acc[T];
  start_tile(acc, first, init, acc_io);
  const int64_t stop = stream_row<T, LANES>(in, vals, offs, begin, end, limit, acc);
  store_tile(acc, acc_io);
  return stop;
}

template <int LANES>
using TileFn = int64_t (*)(const float*, const float*, const int32_t*, int64_t, int64_t,
                           uint32_t, bool, float, float*);

template <int LANES, int... Ts>
constexpr std::array<TileFn<LANES>, sizeof...(Ts)> make_tiles(std::integer_sequence<int, Ts...>) {
  return {&tile_kernel<Ts + 1, LANES>...};
}

// The CSR segments one row pair's register tile streams: the columns both rows use (two
// weights each, [pb, pe) of the pair CSR) and each row's own ([ab, ae), [bb, be) of the CSR).
struct PairSegments {
  int64_t pb, pe, ab, ae, bb, be;
};

// One register tile of a row pair: T output vectors of rows a and b. Each shared column loads
// its T input vectors once for 2·T FMAs; on the 45–80% dense layers this is where a row's
// FMAs stop being bound by one load each (docs/sparse-kernel.md, "row pairs"). With `find`,
// each segment stops at the first column index >= `limit` and `s`'s ends are set there.
template <int T, int LANES>
inline void pair_tile_kernel(const float* __restrict in, const float* __restrict pvals,
                             const int32_t* __restrict poffs, const float* __restrict vals,
                             const int32_t* __restrict offs, PairSegments& s, uint32_t limit,
                             bool find, bool first, float init_a, float init_b,
                             float* __restrict acc_a, float* __restrict acc_b) {
  vec a[T], b[T];
  start_tile(a, first, init_a, acc_a);
  start_tile(b, first, init_b, acc_b);
  const uint32_t lim = find ? limit : UINT32_MAX;
  int64_t j = s.pb;
  for (; j < s.pe && static_cast<uint32_t>(poffs[j]) < lim; ++j) {
    const vec wa = vset1(pvals[2 * j]), wb = vset1(pvals[2 * j + 1]);
    const float* p = in + static_cast<int64_t>(poffs[j]) * LANES;
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      vec x = vload(p + t * VW);
      in_register(x);
      a[t] = vfma(wa, x, a[t]);
      b[t] = vfma(wb, x, b[t]);
    }
  }
  const int64_t stop_a = stream_row<T, LANES>(in, vals, offs, s.ab, s.ae, lim, a);
  const int64_t stop_b = stream_row<T, LANES>(in, vals, offs, s.bb, s.be, lim, b);
  if (find) {
    s.pe = j;
    s.ae = stop_a;
    s.be = stop_b;
  }
  store_tile(a, acc_a);
  store_tile(b, acc_b);
}

template <int LANES>
using PairTileFn = void (*)(const float*, const float*, const int32_t*, const float*,
                            const int32_t*, PairSegments&, uint32_t, bool, bool, float, float,
                            float*, float*);

template <int LANES, int... Ts>
constexpr std::array<PairTileFn<LANES>, sizeof...(Ts)> make_pair_tiles(
    std::integer_sequence<int, Ts...>) {
  return {&pair_tile_kernel<Ts + 1, LANES>...};
}

struct ConvArgs {
  const float* input;   // (N, C_total, H, W)
  const float* vals;
  const int32_t* offs;
  const int32_t* rowptr;  // K_total + 1
  const float* bias;      // K_total or nullptr
  // Row pairs, or all nullptr: pair q holds rows 2q and 2q+1 (K_total and K per group even);
  // its shared columns are [pair_rowptr[q], pair_rowptr[q+1]) of pair_offs, with two values
  // each (row 2q's, row 2q+1's) in pair_vals; the CSR above holds every other non-zero.
  const float* pair_vals;
  const int32_t* pair_offs;
  const int32_t* pair_rowptr;  // K_total / 2 + 1
  float* output;          // (N, K_total, P, Q)
  int64_t groups, Ktot, Kg;
  bool relu;
  std::atomic<bool>* bad;  // set when a row holds a column index outside the padded input
  // Segment-major order, or both nullptr: the arrays above hold channel block 0's segment of
  // every row, then block 1's, ...; row k's segment in block cb is
  // [seg[cb·K_total + k], seg[cb·K_total + k + 1]), pair q's [pair_seg[cb·K_total/2 + q], ...).
  const int32_t* seg;
  const int32_t* pair_seg;
};

// Cache blocking of one unit (an image or stacked images, or VW interleaved images): the
// flattened outputs of every channel are cut into strips of `strip` vectors, the input
// channels of a group into blocks of `cblock`, so that one channel block of one strip's input
// stays in L1 while all output channels stream their CSR segments over it (RESEARCH.md §2:
// column blocks).
struct Blocking {
  int64_t nvec;    // vectors per output channel
  int64_t strip;   // vectors per strip (a multiple of TILE unless it is all of nvec)
  int64_t pitch;   // vectors of partial sums per output channel: strip + a merged short tail
  int64_t cblock;  // input channels per block
  int64_t nblocks;
};

// Budget for one channel block's input, in floats. Spatial mode: 6144 floats = 24 KiB, in
// L1 (unaligned loads want L1). Blocked mode: 65536 floats = 256 KiB, in L2 (aligned loads
// stream well from L2, and bigger blocks cut partial-sum traffic). Both measured best on the
// AlexNet layers (docs/sparse-kernel.md, "cache blocking"); env overrides are for tuning.
int64_t budget_floats(int64_t lanes) {
  static const int64_t spatial = [] {
    const char* e = std::getenv("SWEETSPOT_L1_FLOATS");
    return e ? std::max<int64_t>(256, std::atoll(e)) : int64_t{6144};
  }();
  static const int64_t blocked = [] {
    const char* e = std::getenv("SWEETSPOT_L2_FLOATS");
    return e ? std::max<int64_t>(256, std::atoll(e)) : int64_t{65536};
  }();
  return lanes == 1 ? spatial : blocked;
}

Blocking make_blocking(const Layout& L, int64_t lanes, int64_t rows) {
  Blocking b{};
  b.nvec = lanes == 1 ? ceil_div(L.M, VW) : L.M;
  const int64_t phases = std::min(L.sh * L.sw, L.R * L.S);
  const int64_t reach = ((L.R - 1) * L.dh / L.sh) * L.Wph + ((L.S - 1) * L.dw) / L.sw + 1;
  auto footprint = [&](int64_t strip) {  // floats of one channel one strip touches
    const int64_t positions = strip * VW / lanes + reach;
    return std::min(L.plane, phases * positions) * lanes;
  };
  auto round_tiles = [&](int64_t v) { return std::max<int64_t>(TILE, v / TILE * TILE); };
  const int64_t budget = budget_floats(lanes);
  // Partial sums of all `rows` output channels for one strip stay in L2: <= 256 KiB.
  constexpr int64_t kPartialFloats = 65536;
  constexpr int64_t kMinChannels = 16;  // below this, partial-sum traffic dominates
  b.strip = std::min(b.nvec, round_tiles(kPartialFloats / (std::max<int64_t>(rows, 1) * VW)));
  while (b.strip > TILE && budget / footprint(b.strip) < std::min(kMinChannels, L.C))
    b.strip = round_tiles(b.strip / 2);
  // As few blocks of equal size as fit the budget, each up to 1/8 over it: every block costs each
  // output channel one more pass (a partial-sum round trip and a loop exit), and a last block
  // of a few channels (64 = 62 + 2 on 8×8 images, 192 = 7 × 27 + 3 on 13×13) is nearly all
  // overhead. Measured against full-budget blocks: CIFAR 64@8 5% and AlexNet conv3–5 1–6% faster.
  const int64_t fit = std::max<int64_t>(1, budget / footprint(b.strip));
  b.nblocks = ceil_div(L.C, fit + fit / 8);
  // Where all channels' input fits 5/3 of the budget (40 KiB of this host's 48 KiB L1), one
  // block: one pass per output channel instead of two. CIFAR 32@16×16 (38.6 KiB, 2 blocks
  // before) 4–5% faster at batch 32; 64@8×8 stacked in pairs (45 KiB) was not faster.
  if (lanes == 1 && footprint(b.strip) * L.C <= budget * 5 / 3) b.nblocks = 1;
  b.cblock = ceil_div(L.C, b.nblocks);
  b.pitch = std::min(b.nvec, b.strip + kTailVectors);
  return b;
}

// End of the strip that starts at vector v0: `strip` vectors on, or the end when fewer than
// kTailVectors would be left over.
inline int64_t strip_end(const Blocking& b, int64_t v0) {
  const int64_t v1 = std::min(b.nvec, v0 + b.strip);
  return b.nvec - v1 <= kTailVectors ? b.nvec : v1;
}

// Vectors of the next register tile when `left` vectors of the strip remain.
inline int64_t tile_vectors(int64_t left) { return left <= kMaxTile ? left : TILE; }

// Pieces of a register tile of n vectors in a row pair: the fewest of at most kPairTile, of
// near-equal size (13 → 7 + 6), calling `f(first vector, vectors)` for each.
template <typename F>
inline void pair_pieces(int64_t n, F&& f) {
  const int64_t pieces = ceil_div(n, kPairTile);
  for (int64_t i = 0, u = 0, m; i < pieces; ++i, u += m) {
    m = n / pieces + (i < n % pieces ? 1 : 0);
    f(u, m);
  }
}

// Prefetches the lines of CSR row r's segment from `at` (the row's position in this block):
// its mean length per channel block + one line, at most kPrefetchFloats entries, not past the
// row's end. Values are `per` floats per entry: 1, or 2 for a row pair's shared columns.
inline void prefetch_segment(const float* vals, const int32_t* offs, const int32_t* rowptr,
                             int64_t r, int64_t at, int64_t nblocks, int per) {
  const int64_t end = rowptr[r + 1];
  const int64_t count = std::min({kPrefetchFloats, (end - rowptr[r]) / nblocks + 16, end - at});
  for (int64_t q = 0; q < count; q += 16) __builtin_prefetch(offs + at + q);
  for (int64_t q = 0; q < count * per; q += 16) __builtin_prefetch(vals + at * per + q);
}

// Output channels [k0, k1) of one unit whose packed input is `buf`; `partial` holds
// (k1 − k0) × pitch vectors; `cursor` has room for (k1 − k0) + (k1 − k0) / 2 + 1 positions;
// `emit(k, v0, v1, rows)` stores finished vectors [v0, v1) of k. With row pairs, k0 and k1
// are even and rows are computed two at a time.
template <int LANES, typename Emit>
void compute_unit(const ConvArgs& a, const Layout& L, const Blocking& b, const float* buf,
                  int64_t k0, int64_t k1, float* partial, int64_t* cursor, Emit&& emit) {
  static constexpr auto tiles = make_tiles<LANES>(std::make_integer_sequence<int, kMaxTile>{});
  static constexpr auto pair_tiles =
      make_pair_tiles<LANES>(std::make_integer_sequence<int, kPairTile>{});
  const bool pairs = a.pair_rowptr != nullptr;
  const int64_t step = pairs ? 2 : 1;
  int64_t* pcursor = cursor + (k1 - k0);  // row pairs: one per pair
  const bool segmented = a.seg != nullptr;
  for (int64_t v0 = 0, v1; v0 < b.nvec; v0 = v1) {
    v1 = strip_end(b, v0);
    if (!segmented) {
      for (int64_t k = k0; k < k1; ++k) cursor[k - k0] = a.rowptr[k];
      if (pairs)
        for (int64_t q = k0 / 2; q < k1 / 2; ++q) pcursor[q - k0 / 2] = a.pair_rowptr[q];
    }
    for (int64_t cb = 0; cb < b.nblocks; ++cb) {
      const bool last = cb + 1 == b.nblocks;
      // The last block ends at the end of the input, so a column index outside [0, C·plane)
      // (a negative one compares as a large unsigned number) is never read: it stops its row
      // early, which is reported below. This is the offsets' range check, fused into the loop.
      // In segment-major order every block's segment is checked against its block's end.
      const uint32_t limit = static_cast<uint32_t>((last ? L.C : (cb + 1) * b.cblock) * L.plane);
      // Segment-major: this block's segments of rows k0.. (of pairs k0/2..), in order.
      const int32_t* rseg = segmented ? a.seg + cb * a.Ktot : nullptr;
      const int32_t* pseg = segmented && pairs ? a.pair_seg + cb * (a.Ktot / 2) : nullptr;
      for (int64_t k = k0; k < k1; k += step) {
        // Row order: prefetch the rows kPrefetchRows ahead, since a cold CSR is read at a
        // different place for every row, which the hardware prefetchers do not follow.
        // Segment-major order reads each block's segments as one stream: they do.
        if (!segmented) {
          for (int64_t r = k + kPrefetchRows; r < std::min(k1, k + kPrefetchRows + step); ++r)
            prefetch_segment(a.vals, a.offs, a.rowptr, r, cursor[r - k0], b.nblocks, 1);
          if (pairs && k + kPrefetchRows < k1) {
            const int64_t q = (k + kPrefetchRows) / 2;
            prefetch_segment(a.pair_vals, a.pair_offs, a.pair_rowptr, q, pcursor[q - k0 / 2],
                             b.nblocks, 2);
          }
        }
        const float* in = buf + (k / a.Kg) * L.C * L.plane * LANES;
        float* acc = partial + (k - k0) * b.pitch * VW;
        bool find = true;
        if (pairs) {
          const int64_t q = k / 2;
          const PairSegments whole =
              segmented ? PairSegments{pseg[q], pseg[q + 1], rseg[k], rseg[k + 1], rseg[k + 1],
                                       rseg[k + 2]}
                        : PairSegments{pcursor[q - k0 / 2], a.pair_rowptr[q + 1],
                                       cursor[k - k0],      a.rowptr[k + 1],
                                       cursor[k + 1 - k0],  a.rowptr[k + 2]};
          PairSegments sg = whole;
          const float init_a = a.bias ? a.bias[k] : 0.f, init_b = a.bias ? a.bias[k + 1] : 0.f;
          float* acc_b = acc + b.pitch * VW;
          for (int64_t v = v0, n; v < v1; v += n) {
            n = tile_vectors(v1 - v);
            pair_pieces(n, [&](int64_t u, int64_t m) {
              const int64_t at = (v - v0 + u) * VW;
              const float* tin = in + (v + u) * VW;
              if (m == kPairTile)
                pair_tile_kernel<kPairTile, LANES>(tin, a.pair_vals, a.pair_offs, a.vals, a.offs,
                                                   sg, limit, find, cb == 0, init_a, init_b,
                                                   acc + at, acc_b + at);
              else
                pair_tiles[m - 1](tin, a.pair_vals, a.pair_offs, a.vals, a.offs, sg, limit,
                                  find, cb == 0, init_a, init_b, acc + at, acc_b + at);
              find = false;
            });
          }
          if (segmented) {
            if (sg.pe != whole.pe || sg.ae != whole.ae || sg.be != whole.be)
              a.bad->store(true, std::memory_order_relaxed);
          } else {
            pcursor[q - k0 / 2] = sg.pe;
            cursor[k - k0] = sg.ae;
            cursor[k + 1 - k0] = sg.be;
          }
          continue;
        }
        const int64_t begin = segmented ? rseg[k] : cursor[k - k0];
        const int64_t whole_end = segmented ? rseg[k + 1] : a.rowptr[k + 1];
        int64_t end = whole_end;
        const float init = a.bias ? a.bias[k] : 0.f;
        for (int64_t v = v0, n; v < v1; v += n) {
          n = tile_vectors(v1 - v);
          const float* tin = in + v * VW;
          float* tacc = acc + (v - v0) * VW;
          const uint32_t lim = find ? limit : UINT32_MAX;
          const int64_t stop =
              n == TILE ? tile_kernel<TILE, LANES>(tin, a.vals, a.offs, begin, end, lim, cb == 0,
                                                   init, tacc)
                        : tiles[n - 1](tin, a.vals, a.offs, begin, end, lim, cb == 0, init, tacc);
          if (find) {
            end = stop;
            find = false;
          }
        }
        if (!segmented)
          cursor[k - k0] = end;
        else if (end != whole_end)
          a.bad->store(true, std::memory_order_relaxed);
      }
    }
    if (!segmented) {
      for (int64_t k = k0; k < k1; ++k)
        if (cursor[k - k0] != a.rowptr[k + 1]) a.bad->store(true, std::memory_order_relaxed);
      if (pairs)
        for (int64_t q = k0 / 2; q < k1 / 2; ++q)
          if (pcursor[q - k0 / 2] != a.pair_rowptr[q + 1])
            a.bad->store(true, std::memory_order_relaxed);
    }
    for (int64_t k = k0; k < k1; ++k) emit(k, v0, v1, partial + (k - k0) * b.pitch * VW);
  }
}

inline float relu_if(float x, bool relu) { return (relu && x < 0.f) ? 0.f : x; }

// Spatial emit: vectors [v0, v1) of output channel k hold flattened outputs
// o = y·Wph + j·image_pitch + x (row y of stacked image j, its column x); keep x < Q (the rest
// are discarded columns) of the unit's first `images` images and write them to out_imgs,
// (images, K_total, P, Q).
void emit_spatial(const ConvArgs& a, const Layout& L, int64_t k, int64_t v0, int64_t v1,
                  const float* acc, float* out_imgs, int64_t images) {
  const int64_t o0 = v0 * VW, o1 = std::min(v1 * VW, L.M);
  const int64_t P = L.P, Q = L.Q, Wph = L.Wph, pitch = L.image_pitch;
  const bool relu = a.relu;
  const int64_t first_row = o0 / Wph;  // (divisions are dear here: one per channel and strip)
  for (int64_t j = 0; j < images; ++j) {
    float* out = out_imgs + (j * a.Ktot + k) * P * Q;
    for (int64_t y = first_row; y < P; ++y) {
      const int64_t t = y * Wph + j * pitch;  // the flattened output of image j's (y, 0)
      if (t >= o1) break;
      const int64_t x0 = std::max<int64_t>(0, o0 - t);
      const int64_t x1 = std::min<int64_t>(Q, o1 - t);
      if (x0 < x1) copy_row(out + y * Q + x0, acc + (t - o0) + x0, x1 - x0, relu);
    }
  }
}

// Blocked emit: vector v is flattened output position v of VW images starting at n0.
// Image-major loop: strided reads from the (L1-resident) strip, contiguous writes.
void emit_blocked(const ConvArgs& a, const Layout& L, int64_t k, int64_t v0, int64_t v1,
                  const float* acc, int64_t n0) {
  const int64_t PQ = L.P * L.Q;
  const int64_t img = a.Ktot * PQ;
  for (int l = 0; l < VW; ++l) {
    float* out = a.output + (n0 + l) * img + k * PQ;
    for (int64_t y = v0 / L.Wph; y * L.Wph < v1; ++y) {
      const int64_t x0 = std::max<int64_t>(0, v0 - y * L.Wph);
      const int64_t x1 = std::min<int64_t>(L.Q, v1 - y * L.Wph);
      const float* r = acc + (y * L.Wph - v0) * VW + l;
      float* o = out + y * L.Q;
      if (a.relu) {
        for (int64_t x = x0; x < x1; ++x) o[x] = std::max(r[x * VW], 0.f);
      } else {
        for (int64_t x = x0; x < x1; ++x) o[x] = r[x * VW];
      }
    }
  }
}

// Elements of a packing buffer, including slack for the over-read of the last tile.
int64_t spatial_buf_elems(const Layout& L, int64_t groups) {
  return groups * L.C * L.plane + ceil_div(L.M, VW) * VW + VW;
}
int64_t blocked_buf_elems(const Layout& L, int64_t groups) {
  return (groups * L.C * L.plane + L.M + 1) * VW;
}

// Per-thread scratch memory reused across calls: fresh buffers of a few hundred KiB each call
// cost page faults and zeroing (≈20% of a batch-1 AlexNet layer at 90% sparsity, measured).
// A packing buffer is zeroed only when the layout changes: packing writes data positions
// only, so the padding stays zero from one call to the next.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data_); }

  float* get(int64_t n) {
    if (n > size_) {
      std::free(data_);
      const size_t bytes = static_cast<size_t>((n * sizeof(float) + 63) / 64 * 64);
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      SS_CHECK(data_ != nullptr, "sparse_conv2d: out of memory for ", bytes, " bytes");
      size_ = n;
      key_.clear();
    }
    return data_;
  }

  // Gives a buffer above `floats` back to the system: kept, one huge input would hold its
  // memory for the life of the thread (4 × 64 × 512 × 512 floats: ≈140 MiB on two threads).
  void release_above(int64_t floats) {
    if (size_ <= floats) return;
    std::free(data_);
    data_ = nullptr;
    size_ = used_ = 0;
    key_.clear();
  }

  // n floats whose padding is zero for the layout `key`.
  float* packing(int64_t n, const std::vector<int64_t>& key) {
    float* d = get(n);
    if (key != key_ || n != used_) {
      std::memset(d, 0, sizeof(float) * n);
      key_ = key;
      used_ = n;
    }
    return d;
  }

 private:
  float* data_ = nullptr;
  int64_t size_ = 0, used_ = 0;
  std::vector<int64_t> key_;
};

thread_local Scratch tl_pack;     // packed input of the unit this thread works on
thread_local Scratch tl_partial;  // partial sums of the current strip
thread_local std::vector<int64_t> tl_cursor;

// Scratch kept between calls up to 32 MiB a buffer (VGG's 224×224 conv1_2 packs 13 MB); a
// larger one is allocated again on the next call, a small cost next to such a layer's work.
constexpr int64_t kKeepScratchFloats = int64_t{8} << 20;

void release_large_scratch() {
  tl_pack.release_above(kKeepScratchFloats);
  tl_partial.release_above(kKeepScratchFloats);
}

// Cursors for n output channels: one per row, and one per row pair.
int64_t* cursors(int64_t n) {
  const int64_t size = n + n / 2 + 1;
  if (static_cast<int64_t>(tl_cursor.size()) < size) tl_cursor.resize(size);
  return tl_cursor.data();
}

// Splits output channels [0, K) over the threads, keeping row pairs together.
template <typename F>
void parallel_channels(const ConvArgs& a, F&& f) {
  const int64_t step = a.pair_rowptr ? 2 : 1;
  at::parallel_for(0, a.Ktot / step, 1,
                   [&](int64_t r0, int64_t r1) { f(r0 * step, r1 * step); });
}

// mode: 0 = choose, 1 = spatial only, 2 = blocked for every full block of VW images.
void run_conv(const ConvArgs& a, const Layout& L, int64_t N, int64_t mode) {
  const int64_t nthreads = at::get_num_threads();
  const int64_t Ctot = a.groups * L.C;
  const int64_t in_img = Ctot * L.H * L.W;
  const int64_t out_img = a.Ktot * L.P * L.Q;
  const std::vector<int64_t> key{Ctot, L.H, L.W, L.sh, L.sw, L.ph, L.pw, L.Hph, L.Wph, L.stack};
  const Blocking bs = make_blocking(L, 1, a.Ktot);
  const Blocking bb = make_blocking(L, VW, a.Ktot);

  // Batch-blocked mode for full blocks of VW images (threshold: docs/sparse-kernel.md); its
  // units interleave images, so they are never stacked.
  const bool use_blocked = L.stack == 1 && (mode == 2 || (mode == 0 && kBlockedByDefault));
  const int64_t nblocks = use_blocked ? N / VW : 0;
  const int64_t nspatial = N - nblocks * VW;

  // Unit-parallel (whole images/blocks per thread) when units divide well among threads;
  // otherwise channel-parallel per unit (pack once, split the output channels).
  auto unit_parallel = [&](int64_t units) {
    return units >= nthreads && (units % nthreads == 0 || units >= 4 * nthreads);
  };

  // ---- blocked units ----
  if (nblocks > 0) {
    auto pack_block = [&](float* buf, int64_t n0, int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)  // channel-major: one channel's plane stays in L1
        for (int l = 0; l < VW; ++l)
          pack_channels(a.input + (n0 + l) * in_img, buf, L, c, c + 1, VW, l);
    };
    const int64_t elems = blocked_buf_elems(L, a.groups);
    if (unit_parallel(nblocks)) {
      at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
        float* partial = tl_partial.get(a.Ktot * bb.pitch * VW);
        int64_t* cursor = cursors(a.Ktot);
        float* buf = tl_pack.packing(elems, key);
        for (int64_t blk = b0; blk < b1; ++blk) {
          pack_block(buf, blk * VW, 0, Ctot);
          compute_unit<VW>(a, L, bb, buf, 0, a.Ktot, partial, cursor,
                           [&](int64_t k, int64_t v0, int64_t v1, const float* acc) {
                             emit_blocked(a, L, k, v0, v1, acc, blk * VW);
                           });
        }
        release_large_scratch();
      });
    } else {
      float* buf = tl_pack.packing(elems, key);
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        at::parallel_for(0, Ctot, 1, [&](int64_t c0, int64_t c1) {
          pack_block(buf, blk * VW, c0, c1);
        });
        parallel_channels(a, [&](int64_t k0, int64_t k1) {
          float* partial = tl_partial.get((k1 - k0) * bb.pitch * VW);
          int64_t* cursor = cursors(k1 - k0);
          compute_unit<VW>(a, L, bb, buf, k0, k1, partial, cursor,
                           [&](int64_t k, int64_t v0, int64_t v1, const float* acc) {
                             emit_blocked(a, L, k, v0, v1, acc, blk * VW);
                           });
        });
      }
      release_large_scratch();
    }
  }

  // ---- spatial units (L.stack images each, the last one possibly fewer) ----
  if (nspatial > 0) {
    const int64_t first = nblocks * VW;
    const int64_t units = ceil_div(nspatial, L.stack);
    const int64_t elems = spatial_buf_elems(L, a.groups);
    // Images of unit u: [n0, n0 + count). A unit short of images computes the stale data a
    // previous unit left in the missing slots, which no output of its images reads (the zero
    // columns between images are never written), and emits nothing for them.
    auto unit_images = [&](int64_t u, int64_t& n0) {
      n0 = first + u * L.stack;
      return std::min(L.stack, first + nspatial - n0);
    };
    if (unit_parallel(units)) {
      at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
        float* partial = tl_partial.get(a.Ktot * bs.pitch * VW);
        int64_t* cursor = cursors(a.Ktot);
        float* buf = tl_pack.packing(elems, key);  // pads stay zero across images
        for (int64_t u = u0; u < u1; ++u) {
          int64_t n0;
          const int64_t count = unit_images(u, n0);
          for (int64_t j = 0; j < count; ++j)
            pack_channels(a.input + (n0 + j) * in_img, buf, L, 0, Ctot, 1, 0, j);
          float* out = a.output + n0 * out_img;
          compute_unit<1>(a, L, bs, buf, 0, a.Ktot, partial, cursor,
                          [&](int64_t k, int64_t v0, int64_t v1, const float* acc) {
                            emit_spatial(a, L, k, v0, v1, acc, out, count);
                          });
        }
        release_large_scratch();
      });
    } else {
      float* buf = tl_pack.packing(elems, key);
      for (int64_t u = 0; u < units; ++u) {
        int64_t n0;
        const int64_t count = unit_images(u, n0);
        at::parallel_for(0, Ctot, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t j = 0; j < count; ++j)
            pack_channels(a.input + (n0 + j) * in_img, buf, L, c0, c1, 1, 0, j);
        });
        float* out = a.output + n0 * out_img;
        parallel_channels(a, [&](int64_t k0, int64_t k1) {
          float* partial = tl_partial.get((k1 - k0) * bs.pitch * VW);
          int64_t* cursor = cursors(k1 - k0);
          compute_unit<1>(a, L, bs, buf, k0, k1, partial, cursor,
                          [&](int64_t k, int64_t v0, int64_t v1, const float* acc) {
                            emit_spatial(a, L, k, v0, v1, acc, out, count);
                          });
        });
      }
      release_large_scratch();  // the calling thread's packing buffer (partials are small)
    }
  }
}


// Pointers into `total` entries (row pointers, segment pointers): `count` + 1 of them, from 0
// to `total`, non-decreasing, so every range they give lies inside the arrays.
void check_pointers(const int32_t* p, int64_t count, int64_t total, const char* what,
                    const char* name) {
  SS_CHECK(p[0] == 0 && p[count] == total, what, ": ", name,
              " must start at 0 and end at the number of non-zeros");
  for (int64_t i = 0; i < count; ++i)
    SS_CHECK(p[i] <= p[i + 1], what, ": ", name, " must be non-decreasing");
}

// Validates the CSR arrays. Column indices are int32, or (when `allow_u16`, sparse_linear)
// int16 read as unsigned 16-bit; their range is checked here unless `check_cols` is false
// (the small-batch linear kernel checks them on the fly, saving a pass over memory). With
// `pairs`, they are a row pair's shared columns (ConvArgs::pair_vals): `rows` pairs of output
// rows, two values per column index.
void check_csr(const at::Tensor& values, const at::Tensor& offsets, const at::Tensor& row_ptr,
               int64_t rows, int64_t max_offset, const char* what, bool allow_u16 = false,
               bool check_cols = true, bool pairs = false) {
  const char* csr = pairs ? "row-pair" : "CSR";
  SS_CHECK(values.dim() == 1 && offsets.dim() == 1 && row_ptr.dim() == 1, what, ": ", csr,
              " values, column indices and row pointers must be 1-D tensors");
  SS_CHECK(values.scalar_type() == at::kFloat, what, ": ", csr,
              " values must be float32, got ", values.scalar_type());
  SS_CHECK((offsets.scalar_type() == at::kInt ||
               (allow_u16 && offsets.scalar_type() == at::kShort)) &&
                  row_ptr.scalar_type() == at::kInt,
              what, ": ", csr, " column indices and row pointers must be int32",
              allow_u16 ? " (or int16 holding unsigned 16-bit column indices)" : "");
  SS_CHECK(values.device().is_cpu() && offsets.device().is_cpu() && row_ptr.device().is_cpu(),
              what, ": ", csr, " tensors must be on the CPU");
  SS_CHECK(values.is_contiguous() && offsets.is_contiguous() && row_ptr.is_contiguous(), what,
              ": ", csr, " tensors must be contiguous");
  SS_CHECK(values.numel() == (pairs ? 2 : 1) * offsets.numel(), what, ": ", values.numel(),
              " values but ", offsets.numel(), " column indices",
              pairs ? " (row pairs need two values per column index)" : "");
  SS_CHECK(row_ptr.numel() == rows + 1, what, ": ", pairs ? "row-pair" : "row",
              " pointers must have ", rows + 1, " entries (one per ",
              pairs ? "pair of output rows" : "output row", " + 1), got ", row_ptr.numel());
  check_pointers(row_ptr.data_ptr<int32_t>(), rows, offsets.numel(), what, "row pointers");
  if (!check_cols) return;
  int64_t lo = 0, hi = 0;
  if (offsets.scalar_type() == at::kShort) {
    const uint16_t* o = reinterpret_cast<const uint16_t*>(offsets.data_ptr<int16_t>());
    uint16_t h = 0;
    for (int64_t j = 0; j < offsets.numel(); ++j) h = std::max(h, o[j]);
    hi = h;
  } else {
    const int32_t* o = offsets.data_ptr<int32_t>();
    const int64_t n = offsets.numel();
    int32_t l = 0, h = 0;
    int64_t j = 0;
#if defined(__AVX512F__) && !defined(SWEETSPOT_FORCE_AVX2)
    // Vectorised: GCC leaves this reduction scalar (≈10% of a batch-1 conv at 90%, perf).
    __m512i vl = _mm512_setzero_si512(), vh = _mm512_setzero_si512();
    for (; j + 16 <= n; j += 16) {
      const __m512i x = _mm512_loadu_si512(o + j);
      vl = _mm512_min_epi32(vl, x);
      vh = _mm512_max_epi32(vh, x);
    }
    l = _mm512_reduce_min_epi32(vl);
    h = _mm512_reduce_max_epi32(vh);
#endif
    for (; j < n; ++j) {
      l = std::min(l, o[j]);
      h = std::max(h, o[j]);
    }
    lo = l;
    hi = h;
  }
  SS_CHECK(lo >= 0 && hi < max_offset, what, ": column index out of range [0, ", max_offset,
              ") — were the offsets computed for this input size (and stack)?");
}

// ---------------------------------------------------------------------------------------
at::Tensor sparse_conv2d_forward(const at::Tensor& input, const at::Tensor& values,
                                 const at::Tensor& offsets, const at::Tensor& row_ptr,
                                 const c10::optional<at::Tensor>& bias, int64_t out_channels,
                                 std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                 std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                 int64_t groups, bool relu, int64_t mode,
                                 const c10::optional<at::Tensor>& pair_values,
                                 const c10::optional<at::Tensor>& pair_offsets,
                                 const c10::optional<at::Tensor>& pair_row_ptr,
                                 int64_t stack, const c10::optional<at::Tensor>& segments,
                                 const c10::optional<at::Tensor>& pair_segments) {
  SS_CHECK(input.dim() == 4, "sparse_conv2d: input must be 4-D (N, C, H, W), got ",
              input.dim(), "-D");
  SS_CHECK(input.scalar_type() == at::kFloat, "sparse_conv2d: input must be float32, got ",
              input.scalar_type());
  SS_CHECK(input.device().is_cpu(), "sparse_conv2d: input must be on the CPU");
  SS_CHECK(input.is_contiguous(), "sparse_conv2d: input must be contiguous (NCHW)");
  SS_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "sparse_conv2d: kernel, stride, padding and dilation must have 2 entries");
  SS_CHECK(kernel[0] >= 1 && kernel[1] >= 1 && stride[0] >= 1 && stride[1] >= 1 &&
                  dilation[0] >= 1 && dilation[1] >= 1 && padding[0] >= 0 && padding[1] >= 0,
              "sparse_conv2d: kernel, stride and dilation must be >= 1 and padding >= 0");
  SS_CHECK(groups >= 1 && out_channels >= 1 && out_channels % groups == 0,
              "sparse_conv2d: groups must be >= 1 and divide out_channels");
  const int64_t N = input.size(0), Ctot = input.size(1), H = input.size(2), W = input.size(3);
  SS_CHECK(Ctot % groups == 0, "sparse_conv2d: groups=", groups,
              " must divide the input channels (", Ctot, ")");
  SS_CHECK(stack >= 1 && stack <= std::max<int64_t>(input.size(0), 1),
              "sparse_conv2d: stack must be from 1 to the batch size (", input.size(0),
              ") images per unit, got ", stack);
  SS_CHECK(stack == 1 || mode != 2,
              "sparse_conv2d: the batch-blocked layout does not stack images (stack must be 1)");
  const Layout L = make_layout(Ctot / groups, H, W, kernel[0], kernel[1], stride[0], stride[1],
                               padding[0], padding[1], dilation[0], dilation[1], stack);
  SS_CHECK(L.P >= 1 && L.Q >= 1, "sparse_conv2d: kernel larger than the padded input ", H,
              "x", W);
  SS_CHECK(add(mul(L.C, L.plane), L.M) < (int64_t{1} << 31) / VW,
              "sparse_conv2d: input too large for 32-bit offsets");
  // The column indices' range is checked inside the kernel (compute_unit), without a pass of
  // its own over them: that pass was ≈2% of a 2-thread batch-1 call (it ran serially). An
  // empty batch never runs the kernel, so it is checked here.
  check_csr(values, offsets, row_ptr, out_channels, L.C * L.plane, "sparse_conv2d",
            /*allow_u16=*/false, /*check_cols=*/N == 0);
  const bool pairs = pair_row_ptr.has_value() && pair_row_ptr->defined();
  SS_CHECK(pairs == (pair_values.has_value() && pair_values->defined()) &&
                  pairs == (pair_offsets.has_value() && pair_offsets->defined()),
              "sparse_conv2d: row pairs need pair_values, pair_offsets and pair_row_ptr");
  if (pairs) {
    SS_CHECK((out_channels / groups) % 2 == 0, "sparse_conv2d: row pairs need an even number",
                " of output channels per group, got ", out_channels / groups);
    check_csr(*pair_values, *pair_offsets, *pair_row_ptr, out_channels / 2, L.C * L.plane,
              "sparse_conv2d", /*allow_u16=*/false, /*check_cols=*/N == 0, /*pairs=*/true);
  }
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    SS_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 &&
                    bias->numel() == out_channels && bias->is_contiguous() &&
                    bias->device().is_cpu(),
                "sparse_conv2d: bias must be a contiguous float32 CPU tensor of ", out_channels,
                " elements");
    bias_ptr = bias->data_ptr<float>();
  }
  at::Tensor output = at::empty({N, out_channels, L.P, L.Q}, input.options());
  if (N == 0) return output;
  std::atomic<bool> bad{false};
  ConvArgs a{input.data_ptr<float>(), values.data_ptr<float>(), offsets.data_ptr<int32_t>(),
             row_ptr.data_ptr<int32_t>(), bias_ptr,
             pairs ? pair_values->data_ptr<float>() : nullptr,
             pairs ? pair_offsets->data_ptr<int32_t>() : nullptr,
             pairs ? pair_row_ptr->data_ptr<int32_t>() : nullptr,
             output.data_ptr<float>(), groups, out_channels, out_channels / groups, relu, &bad,
             nullptr, nullptr};
  const bool segmented = segments.has_value() && segments->defined();
  SS_CHECK((pairs && segmented) == (pair_segments.has_value() && pair_segments->defined()),
              "sparse_conv2d: segment-major row pairs need both segments and pair_segments");
  if (segmented) {
    SS_CHECK(mode != 2, "sparse_conv2d: segment-major order is for the spatial layout");
    const int64_t nblocks = make_blocking(L, 1, out_channels).nblocks;
    auto check = [&](const at::Tensor& t, int64_t rows, int64_t total, const char* name) {
      SS_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.is_contiguous() &&
                      t.device().is_cpu() && t.numel() == nblocks * rows + 1,
                  "sparse_conv2d: ", name, " must be a contiguous int32 CPU tensor of ",
                  nblocks * rows + 1, " entries (", nblocks, " channel blocks × ", rows,
                  " + 1), got ", t.numel());
      check_pointers(t.data_ptr<int32_t>(), nblocks * rows, total, "sparse_conv2d", name);
      return t.data_ptr<int32_t>();
    };
    a.seg = check(*segments, out_channels, offsets.numel(), "segments");
    if (pairs) a.pair_seg = check(*pair_segments, out_channels / 2, pair_offsets->numel(),
                                  "pair_segments");
  }
  run_conv(a, L, N, mode);
  SS_CHECK(!bad.load(), "sparse_conv2d: column index out of range [0, ", L.C * L.plane,
              ") — were the offsets computed for this input size (and stack)?");
  return output;
}

// The test helpers below take stacks up to 2^20 (the op: up to the batch size); sizes that
// still overflow raise in make_layout.
void check_stack(int64_t stack) {
  SS_CHECK(stack >= 1 && stack <= (int64_t{1} << 20), "stack must be from 1 to 2^20, got ",
              stack);
}

// Cache blocking of the spatial layout for `out_channels` output channels in all:
// (channel blocks, input channels per block, then the vectors of every register tile of one
// output channel in order), for tests that check perfmodel's mirror
// (perfmodel.refined.sparse_conv_geometry) agrees.
std::vector<int64_t> conv_blocking(int64_t C, int64_t H, int64_t W, std::vector<int64_t> kernel,
                                   std::vector<int64_t> stride, std::vector<int64_t> padding,
                                   std::vector<int64_t> dilation, int64_t out_channels,
                                   int64_t stack, bool tiles) {
  check_stack(stack);
  const Layout L = make_layout(C, H, W, kernel[0], kernel[1], stride[0], stride[1], padding[0],
                               padding[1], dilation[0], dilation[1], stack);
  const Blocking b = make_blocking(L, 1, out_channels);
  std::vector<int64_t> numbers{b.nblocks, b.cblock};
  if (!tiles) return numbers;  // the op's plan needs only the blocks (a huge image has millions)
  for (int64_t v0 = 0, v1; v0 < b.nvec; v0 = v1) {
    v1 = strip_end(b, v0);
    for (int64_t v = v0, n; v < v1; v += n) numbers.push_back(n = tile_vectors(v1 - v));
  }
  return numbers;
}

// Layout numbers, for tests that check the Python layout (csr.conv_layout) agrees.
std::vector<int64_t> conv_layout(int64_t C, int64_t H, int64_t W, std::vector<int64_t> kernel,
                                 std::vector<int64_t> stride, std::vector<int64_t> padding,
                                 std::vector<int64_t> dilation, int64_t stack) {
  check_stack(stack);
  const Layout L = make_layout(C, H, W, kernel[0], kernel[1], stride[0], stride[1], padding[0],
                               padding[1], dilation[0], dilation[1], stack);
  return {L.P, L.Q, L.Hph, L.Wph, L.plane, L.M, L.image_pitch};
}


// Loads 16 column indices as int32 (int32 or unsigned 16-bit storage).
#if defined(__AVX512F__) && !defined(SWEETSPOT_FORCE_AVX2)
inline __m512i load_cols16(const int32_t* c) { return _mm512_loadu_si512(c); }
inline __m512i load_cols16(const uint16_t* c) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
}
#endif

// y (N, K) = x (N, F) · Wᵀ + b, W in CSR with column indices of type Idx (int32 or uint16).
// Batch < VW: each row is walked with vector loads of values and indices and a masked gather
// of x; indices out of [0, F) are never dereferenced and raise an error afterwards. Batch 1
// is bound by streaming the CSR arrays (docs/sparse-kernel.md, "fully connected layers").
template <typename Idx>
void linear_kernel(const float* x, const float* v, const Idx* c, const int32_t* rp,
                   const float* bias_ptr, float* y, int64_t N, int64_t F, int64_t K, int64_t nnz,
                   bool relu) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, nnz / K));
  if (N < VW) {
    std::atomic<bool> bad{false};
    at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
      bool chunk_bad = false;
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t b = rp[k], e = rp[k + 1];
        for (int64_t n = 0; n < N; ++n) {
          const float* xn = x + n * F;
          float s0 = 0.f;
          int64_t j = b;
#if defined(__AVX512F__) && !defined(SWEETSPOT_FORCE_AVX2)
          const __m512i fv = _mm512_set1_epi32(static_cast<int32_t>(F));
          __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
          __mmask16 ok = 0xFFFF;
          for (; j + 32 <= e; j += 32) {
            _mm_prefetch(reinterpret_cast<const char*>(v + j + 512), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(v + j + 528), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(c + j + 512), _MM_HINT_T0);
            if (sizeof(Idx) == 4)
              _mm_prefetch(reinterpret_cast<const char*>(c + j + 528), _MM_HINT_T0);
            const __m512i c0 = load_cols16(c + j);
            const __m512i c1 = load_cols16(c + j + 16);
            const __mmask16 m0 = _mm512_cmplt_epu32_mask(c0, fv);
            const __mmask16 m1 = _mm512_cmplt_epu32_mask(c1, fv);
            ok &= m0 & m1;
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j),
                                   _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, c0, xn, 4),
                                   acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j + 16),
                                   _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, c1, xn, 4),
                                   acc1);
          }
          if (j + 16 <= e) {
            const __m512i c0 = load_cols16(c + j);
            const __mmask16 m0 = _mm512_cmplt_epu32_mask(c0, fv);
            ok &= m0;
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j),
                                   _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, c0, xn, 4),
                                   acc0);
            j += 16;
          }
#if defined(__AVX512BW__) && defined(__AVX512VL__)
          if (j < e) {  // masked tail: lanes past the row end load nothing
            const __mmask16 live = static_cast<__mmask16>((1u << (e - j)) - 1);
            __m512i c0;
            if (sizeof(Idx) == 4)
              c0 = _mm512_maskz_loadu_epi32(live, c + j);
            else
              c0 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, c + j));
            const __mmask16 m0 = _mm512_cmplt_epu32_mask(c0, fv) & live;
            ok &= static_cast<__mmask16>(m0 | ~live);
            acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, v + j),
                                   _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, c0, xn, 4),
                                   acc1);
            j = e;
          }
#endif
          if (ok != 0xFFFF) chunk_bad = true;
          s0 = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#endif
          for (; j < e; ++j) {
            const uint32_t col = static_cast<uint32_t>(c[j]);
            if (col < static_cast<uint32_t>(F))
              s0 += v[j] * xn[col];
            else
              chunk_bad = true;
          }
          const float r = s0 + (bias_ptr ? bias_ptr[k] : 0.f);
          y[n * K + k] = relu_if(r, relu);
        }
      }
      if (chunk_bad) bad.store(true);
    });
    SS_CHECK(!bad.load(), "sparse_linear: column index out of range [0, ", F, ")");
    return;
  }
  // Larger batch (indices checked by check_csr): transpose x to (F, Npad) once, then
  // broadcast-weight FMAs across images.
  const int64_t Np = ceil_div(N, VW) * VW;
  std::vector<float> xt_v(static_cast<size_t>(F * Np), 0.f);
  float* xt = xt_v.data();
  at::parallel_for(0, F, 64, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f)
      for (int64_t n = 0; n < N; ++n) xt[f * Np + n] = x[n * F + f];
  });
  at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
    std::vector<float> acc(Np);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t b = rp[k], e = rp[k + 1];
      const float bk = bias_ptr ? bias_ptr[k] : 0.f;
      for (int64_t n0 = 0; n0 < Np; n0 += 4 * VW) {
        const int64_t nv = std::min<int64_t>(4, (Np - n0) / VW);
        vec a0 = vset1(bk), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = b; j < e; ++j) {
          const vec w = vset1(v[j]);
          const float* p = xt + static_cast<int64_t>(c[j]) * Np + n0;
          a0 = vfma(w, vload(p), a0);
          if (nv > 1) a1 = vfma(w, vload(p + VW), a1);
          if (nv > 2) a2 = vfma(w, vload(p + 2 * VW), a2);
          if (nv > 3) a3 = vfma(w, vload(p + 3 * VW), a3);
        }
        vstore(acc.data() + n0, a0);
        if (nv > 1) vstore(acc.data() + n0 + VW, a1);
        if (nv > 2) vstore(acc.data() + n0 + 2 * VW, a2);
        if (nv > 3) vstore(acc.data() + n0 + 3 * VW, a3);
      }
      for (int64_t n = 0; n < N; ++n) y[n * K + k] = relu_if(acc[n], relu);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Sparse fully connected layer: out (N, K) = x (N, F) · Wᵀ + b with W in CSR (K rows).
at::Tensor sparse_linear_forward(const at::Tensor& input, const at::Tensor& values,
                                 const at::Tensor& cols, const at::Tensor& row_ptr,
                                 const c10::optional<at::Tensor>& bias, int64_t out_features,
                                 bool relu) {
  SS_CHECK(input.dim() == 2, "sparse_linear: input must be 2-D (N, in_features), got ",
              input.dim(), "-D");
  SS_CHECK(input.scalar_type() == at::kFloat, "sparse_linear: input must be float32, got ",
              input.scalar_type());
  SS_CHECK(input.device().is_cpu(), "sparse_linear: input must be on the CPU");
  SS_CHECK(input.is_contiguous(), "sparse_linear: input must be contiguous");
  const int64_t N = input.size(0), F = input.size(1), K = out_features;
  // Batch < VW checks column indices inside the kernel (one pass over memory, not two).
  check_csr(values, cols, row_ptr, K, F, "sparse_linear", /*allow_u16=*/true,
            /*check_cols=*/N >= VW || N == 0);
  SS_CHECK(cols.scalar_type() != at::kShort || F <= 65536,
              "sparse_linear: 16-bit column indices need in_features <= 65536");
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    SS_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->numel() == K &&
                    bias->is_contiguous() && bias->device().is_cpu(),
                "sparse_linear: bias must be a contiguous float32 CPU tensor of ", K,
                " elements");
    bias_ptr = bias->data_ptr<float>();
  }
  at::Tensor output = at::empty({N, K}, input.options());
  if (N == 0) return output;
  const float* x = input.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  float* y = output.data_ptr<float>();
  if (cols.scalar_type() == at::kShort) {
    linear_kernel(x, v, reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()), rp, bias_ptr,
                  y, N, F, K, values.numel(), relu);
  } else {
    linear_kernel(x, v, cols.data_ptr<int32_t>(), rp, bias_ptr, y, N, F, K, values.numel(), relu);
  }
  return output;
}

// ---------------------------------------------------------------------------------------
// Call plans: the op's arguments for one input shape and thread count, held in C++. Right
// after another layer has run, every Python step of a call costs microseconds (its code and
// objects are out of cache): the plan key, the version check, the tracing check and the
// lookup cost 25–40 µs a call, and converting the op's 19 arguments more; that was 15–20% of
// an AlexNet layer at 95% sparsity and batch 1. A plan object takes three arguments and
// checks in C++ what the Python caller would (docs/sparse-kernel.md, "The Python call").
// `run` returns nothing when the plan does not apply (another input shape or thread count,
// the CSR arrays written in place, tracing): the caller then takes its slow path, which
// rebuilds the plan or raises the typed error. Errors the op raises (dtype, bias, offsets)
// propagate the same way.

// The CSR's own arrays and their version counters when the plan was made: a write through
// torch (copy_, mul_, ...) bumps a counter, and what was derived from the arrays is stale.
// Tensors made under inference mode have no counter and are not watched (as in Python).
class Watched {
 public:
  explicit Watched(std::vector<at::Tensor> tensors) : tensors_(std::move(tensors)) {
    for (const auto& t : tensors_) versions_.push_back(t.is_inference() ? -1 : t._version());
  }
  bool unchanged() const {
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (versions_[i] >= 0 && tensors_[i]._version() != versions_[i]) return false;
    return true;
  }

 private:
  std::vector<at::Tensor> tensors_;
  std::vector<int64_t> versions_;
};

class ConvCall {
 public:
  ConvCall(std::vector<int64_t> shape, int64_t threads, std::vector<at::Tensor> watched,
           at::Tensor values, at::Tensor offsets, at::Tensor row_ptr, int64_t out_channels,
           std::vector<int64_t> kernel, std::vector<int64_t> stride,
           std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
           int64_t mode, c10::optional<at::Tensor> pair_values,
           c10::optional<at::Tensor> pair_offsets, c10::optional<at::Tensor> pair_row_ptr,
           int64_t stack, c10::optional<at::Tensor> segments,
           c10::optional<at::Tensor> pair_segments)
      : shape_(std::move(shape)), threads_(threads), watched_(std::move(watched)),
        values_(std::move(values)), offsets_(std::move(offsets)), row_ptr_(std::move(row_ptr)),
        out_channels_(out_channels), kernel_(std::move(kernel)), stride_(std::move(stride)),
        padding_(std::move(padding)), dilation_(std::move(dilation)), groups_(groups),
        mode_(mode), pair_values_(std::move(pair_values)),
        pair_offsets_(std::move(pair_offsets)), pair_row_ptr_(std::move(pair_row_ptr)),
        stack_(stack), segments_(std::move(segments)), pair_segments_(std::move(pair_segments)) {}

  c10::optional<at::Tensor> run(const at::Tensor& input, const c10::optional<at::Tensor>& bias,
                                bool relu) const {
    if (!input.defined() || input.sizes() != c10::IntArrayRef(shape_) ||
        at::get_num_threads() != threads_ || torch::jit::tracer::isTracing() ||
        !watched_.unchanged())
      return c10::nullopt;
    return sparse_conv2d_forward(input, values_, offsets_, row_ptr_, bias, out_channels_,
                                 kernel_, stride_, padding_, dilation_, groups_, relu, mode_,
                                 pair_values_, pair_offsets_, pair_row_ptr_, stack_, segments_,
                                 pair_segments_);
  }

 private:
  std::vector<int64_t> shape_;
  int64_t threads_;
  Watched watched_;
  at::Tensor values_, offsets_, row_ptr_;
  int64_t out_channels_;
  std::vector<int64_t> kernel_, stride_, padding_, dilation_;
  int64_t groups_, mode_;
  c10::optional<at::Tensor> pair_values_, pair_offsets_, pair_row_ptr_;
  int64_t stack_;
  c10::optional<at::Tensor> segments_, pair_segments_;
};

// The sparse linear op's plan: a 2-D input of in_features columns (any batch).
class LinearCall {
 public:
  LinearCall(int64_t in_features, std::vector<at::Tensor> watched, at::Tensor values,
             at::Tensor cols, at::Tensor row_ptr, int64_t out_features)
      : in_features_(in_features), watched_(std::move(watched)), values_(std::move(values)),
        cols_(std::move(cols)), row_ptr_(std::move(row_ptr)), out_features_(out_features) {}

  c10::optional<at::Tensor> run(const at::Tensor& input, const c10::optional<at::Tensor>& bias,
                                bool relu) const {
    if (!input.defined() || input.dim() != 2 || input.size(1) != in_features_ ||
        torch::jit::tracer::isTracing() || !watched_.unchanged())
      return c10::nullopt;
    return sparse_linear_forward(input, values_, cols_, row_ptr_, bias, out_features_, relu);
  }

 private:
  int64_t in_features_;
  Watched watched_;
  at::Tensor values_, cols_, row_ptr_;
  int64_t out_features_;
};

std::string isa() { return kIsa; }
int64_t vector_width() { return VW; }
int64_t pair_tile() { return kPairTile; }
int64_t num_threads() { return at::get_num_threads(); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Sweetspot direct sparse convolution (Park et al., ICLR 2017) and sparse linear";
  // The ops release the GIL while they run (they touch no Python object): other Python
  // threads go on meanwhile, e.g. a service's request handlers.
  m.def("sparse_conv2d_forward", &sparse_conv2d_forward, "Direct sparse conv2d (fp32, CSR)",
        py::call_guard<py::gil_scoped_release>(),
        py::arg("input"), py::arg("values"), py::arg("offsets"), py::arg("row_ptr"),
        py::arg("bias"), py::arg("out_channels"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("relu"),
        py::arg("mode") = 0, py::arg("pair_values") = py::none(),
        py::arg("pair_offsets") = py::none(), py::arg("pair_row_ptr") = py::none(),
        py::arg("stack") = 1, py::arg("segments") = py::none(),
        py::arg("pair_segments") = py::none());
  m.def("sparse_linear_forward", &sparse_linear_forward, "CSR × dense linear (fp32)",
        py::call_guard<py::gil_scoped_release>(),
        py::arg("input"), py::arg("values"), py::arg("cols"), py::arg("row_ptr"),
        py::arg("bias"), py::arg("out_features"), py::arg("relu"));
  m.def("conv_layout", &conv_layout,
        "Padded layout numbers (P, Q, Hph, Wph, plane, M, image_pitch)", py::arg("C"),
        py::arg("H"), py::arg("W"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("stack") = 1);
  m.def("conv_blocking", &conv_blocking,
        "Cache blocking (channel blocks, channels per block, vectors of every register tile)",
        py::arg("C"), py::arg("H"), py::arg("W"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("out_channels"), py::arg("stack") = 1,
        py::arg("tiles") = true);
  py::class_<ConvCall>(m, "ConvCall", "sparse_conv2d_forward's arguments for one input shape")
      .def(py::init<std::vector<int64_t>, int64_t, std::vector<at::Tensor>, at::Tensor,
                    at::Tensor, at::Tensor, int64_t, std::vector<int64_t>,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, int64_t,
                    int64_t, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                    c10::optional<at::Tensor>, int64_t, c10::optional<at::Tensor>,
                    c10::optional<at::Tensor>>(),
           py::arg("shape"), py::arg("threads"), py::arg("watched"), py::arg("values"),
           py::arg("offsets"), py::arg("row_ptr"), py::arg("out_channels"), py::arg("kernel"),
           py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"),
           py::arg("mode"), py::arg("pair_values"), py::arg("pair_offsets"),
           py::arg("pair_row_ptr"), py::arg("stack"), py::arg("segments"),
           py::arg("pair_segments"))
      .def("__call__", &ConvCall::run, "The op's output, or None where the plan does not apply",
           py::call_guard<py::gil_scoped_release>(),
           py::arg("input"), py::arg("bias"), py::arg("relu"));
  py::class_<LinearCall>(m, "LinearCall", "sparse_linear_forward's arguments")
      .def(py::init<int64_t, std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor,
                    int64_t>(),
           py::arg("in_features"), py::arg("watched"), py::arg("values"), py::arg("cols"),
           py::arg("row_ptr"), py::arg("out_features"))
      .def("__call__", &LinearCall::run, "The op's output, or None where the plan does not apply",
           py::call_guard<py::gil_scoped_release>(),
           py::arg("input"), py::arg("bias"), py::arg("relu"));
  m.def("isa", &isa, "Instruction set the kernel was compiled for");
  m.def("vector_width", &vector_width, "Floats per vector register");
  m.def("pair_tile", &pair_tile, "Most output vectors of a row pair's register tile");
  m.def("num_threads", &num_threads, "Threads at::parallel_for uses in this extension");
}
