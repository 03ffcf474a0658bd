// Ceiling of the sparse kernel's inner loop on this CPU (docs/sparse-kernel.md, "Why the loop
// stops"): per non-zero, one broadcast weight and T FMAs whose memory operands are T
// consecutive input vectors at the non-zero's offset — exactly tile_kernel's loop — timed with
// offsets that are (a) unaligned, (b) 64-byte aligned, over input footprints from L1 to DRAM;
// plus 256-bit vectors, (c) aligned loads realigned with valignd (an immediate shift) and (d) a
// row pair's loop, whose loads each serve two FMAs.
//
//   g++ -O3 -march=native -std=c++17 model/sparse/microbench/inner_loop.cpp -o /tmp/inner_loop
//   /tmp/inner_loop        # GF/s of FMAs, best of 15; one thread; run on an idle machine
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

template <int T>
__attribute__((noinline)) void loop512(const float* in, const float* vals, const int32_t* offs,
                                       int64_t n, float* out) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* p = in + offs[j];
    const __m512 w = _mm512_set1_ps(vals[j]);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + t * 16), acc[t]);
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + t * 16, acc[t]);
}

template <int T>
__attribute__((noinline)) void loop256(const float* in, const float* vals, const int32_t* offs,
                                       int64_t n, float* out) {
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* p = in + offs[j];
    const __m256 w = _mm256_set1_ps(vals[j]);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + t * 8), acc[t]);
  }
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + t * 8, acc[t]);
}

// Offsets are aligned; every vector is rebuilt from two aligned loads shifted by 5 floats.
template <int T>
__attribute__((noinline)) void loop_valignd(const float* in, const float* vals,
                                            const int32_t* offs, int64_t n, float* out) {
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* p = in + offs[j];
    const __m512 w = _mm512_set1_ps(vals[j]);
    __m512i prev = _mm512_load_si512(p);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      const __m512i next = _mm512_load_si512(p + (t + 1) * 16);
      acc[t] = _mm512_fmadd_ps(w, _mm512_castsi512_ps(_mm512_alignr_epi32(next, prev, 5)), acc[t]);
      prev = next;
    }
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + t * 16, acc[t]);
}

// A row pair's shared columns (docs/sparse-kernel.md, "row pairs"): per column, two broadcast
// weights and T loads, each in a register for the FMAs of both rows. Without the empty asm GCC
// folds the load into both FMAs and loads every vector twice (no faster than loop512).
template <int T>
__attribute__((noinline)) void pair512(const float* in, const float* vals, const int32_t* offs,
                                       int64_t n, float* out) {
  __m512 a[T], b[T];
  for (int t = 0; t < T; ++t) a[t] = b[t] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* p = in + offs[j];
    const __m512 wa = _mm512_set1_ps(vals[j]), wb = _mm512_set1_ps(vals[j] + 1.0f);
#pragma GCC unroll 32
    for (int t = 0; t < T; ++t) {
      __m512 x = _mm512_loadu_ps(p + t * 16);
      asm("" : "+v"(x));
      a[t] = _mm512_fmadd_ps(wa, x, a[t]);
      b[t] = _mm512_fmadd_ps(wb, x, b[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm512_storeu_ps(out + t * 16, _mm512_add_ps(a[t], b[t]));
}

using Loop = void (*)(const float*, const float*, const int32_t*, int64_t, float*);

double gflops(Loop loop, int lanes_per_nonzero, const float* in, const std::vector<float>& vals,
              const std::vector<int32_t>& offs) {
  float out[1024];
  double best = 1e30;
  for (int r = 0; r < 15; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int rep = 0; rep < 20; ++rep) loop(in, vals.data(), offs.data(), offs.size(), out);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < best) best = s;
  }
  return 2.0 * lanes_per_nonzero * offs.size() * 20 / best / 1e9;
}

std::vector<int32_t> offsets(int64_t n, int32_t footprint_floats, bool aligned, unsigned seed) {
  std::srand(seed);
  std::vector<int32_t> offs(n);
  for (auto& o : offs) {
    o = std::rand() % footprint_floats;
    if (aligned) o &= ~15;
  }
  return offs;
}

}  // namespace

int main() {
  constexpr int64_t kNonzeros = 20000;
  float* in = static_cast<float*>(std::aligned_alloc(64, 64 << 20));
  for (int64_t i = 0; i < (16 << 20); ++i) in[i] = 0.001f * (i % 100);
  const std::vector<float> vals(kNonzeros, 0.5f);
  std::printf("T=12 zmm (the kernel's tile), GF/s of FMAs\n");
  for (int32_t floats : {4096, 16384, 65536, 200000, 1000000}) {
    const double u = gflops(loop512<12>, 12 * 16, in, vals, offsets(kNonzeros, floats, false, 1));
    const double a = gflops(loop512<12>, 12 * 16, in, vals, offsets(kNonzeros, floats, true, 1));
    std::printf("  footprint %6d KiB: unaligned %6.1f  aligned %6.1f\n", floats * 4 / 1024, u, a);
  }
  const auto l1u = offsets(kNonzeros, 4096, false, 2), l1a = offsets(kNonzeros, 4096, true, 2);
  std::printf("L1 footprint (16 KiB):\n");
  std::printf("  zmm T=8  unaligned %6.1f  T=16 unaligned %6.1f\n",
              gflops(loop512<8>, 8 * 16, in, vals, l1u), gflops(loop512<16>, 16 * 16, in, vals, l1u));
  std::printf("  ymm T=24 unaligned %6.1f  aligned %6.1f\n",
              gflops(loop256<24>, 24 * 8, in, vals, l1u), gflops(loop256<24>, 24 * 8, in, vals, l1a));
  std::printf("  zmm T=12 valignd (aligned loads + shift) %6.1f\n",
              gflops(loop_valignd<12>, 12 * 16, in, vals, l1a));
  std::printf("  zmm T=12 row pair (one load, two FMAs) unaligned %6.1f\n",
              gflops(pair512<12>, 2 * 12 * 16, in, vals, l1u));
  std::free(in);
  return 0;
}
