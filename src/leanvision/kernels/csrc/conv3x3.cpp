// 3x3 convolution, stride 1 or 2, padding 1, on channels-last (NHWC) fp32 maps, with the
// block epilogue fused: y = act(conv(x, w) + b (+ residual)), act = ReLU or identity. Below
// it: the Ghost module in one pass (ghost3x3_nhwc), and both in int8 (u8 x s8, VNNI).
//
// Why: oneDNN's convolution loses efficiency on the narrow layers a pruned network ends with
// (16 channels at 16x16, batch 32: ~90 GMAC/s on one AVX-512 core, against ~135 for 64
// channels), so a pruned model gains less than its MACs say. This direct kernel keeps a row
// tile of output pixels x one or two 16-channel vectors in registers and reuses each input
// broadcast for the three horizontal taps, which runs at about the same rate for every width
// (measured 120-130 GMAC/s on one core, narrow or wide, on an earlier host; on an AMD EPYC whose
// AVX-512 FMA peak is about 57 GMAC/s per core, 16-channel layers ran at about 97 GMAC/s on two
// cores, 84 % of that peak, where OpenVINO's brgemm convolutions ran the dense ResNet-56 at 98 %). Callers time it against ATen per layer
// (leanvision.deploy.optimize_for_cpu) and keep whichever is faster.
//
// Layout: x (N, C, H, W) in channels_last memory; w packed (9*C, O) as [ky][kx][ci][co];
// O a multiple of 16. Work is split over output rows with at::parallel_for (an output row
// at stride S reads padded input rows S*r .. S*r + 2).
//
// AVX-512 only: a build without it (the AVX2 or no ISA flags, other architectures) refuses,
// conv3x3_isa() says "none", and FusedConv3x3 runs F.conv2d (optimize_for_cpu then fuses
// nothing). Every argument is checked before any arithmetic.
// ATen's per-operator headers, not <ATen/ATen.h>: about a quarter less compile time per build
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

#ifdef __AVX512F__
// P output pixels x CB 16-channel vectors of one output row, from the zero-padded input rows
// starting at xp (row stride `rs` floats); for each input channel the three weight vectors of
// one kernel row stay in registers and every input value is broadcast once for all three taps.
template <int P, int CB, int S = 1>
inline void tile(const float* xp, int rs, int cin, const float* wp, int cout, const float* bias,
                 float* y, const float* res, bool relu) {
  __m512 acc[P][CB];
#pragma GCC unroll 16
  for (int c = 0; c < CB; ++c) {
    const __m512 b = _mm512_loadu_ps(bias + 16 * c);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[p][c] = b;
  }
  for (int ky = 0; ky < 3; ++ky) {
    const float* xr = xp + ky * rs;
    const float* wr = wp + ky * 3 * cin * cout;
    for (int ci = 0; ci < cin; ++ci) {
      __m512 w[3][CB];
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx)
#pragma GCC unroll 16
        for (int c = 0; c < CB; ++c)
          w[kx][c] = _mm512_loadu_ps(wr + (kx * cin + ci) * cout + 16 * c);
#pragma GCC unroll 40
      for (int j = 0; j < S * (P - 1) + 3; ++j) {
        const __m512 xv = _mm512_set1_ps(xr[j * cin + ci]);
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) {
          const int p = (j - kx) / S;  // input column j = S p + kx
          if (j >= kx && (j - kx) % S == 0 && p < P) {
#pragma GCC unroll 16
            for (int c = 0; c < CB; ++c) acc[p][c] = _mm512_fmadd_ps(xv, w[kx][c], acc[p][c]);
          }
        }
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int c = 0; c < CB; ++c) {
      __m512 v = acc[p][c];
      if (res) v = _mm512_add_ps(v, _mm512_loadu_ps(res + p * cout + 16 * c));
      if (relu) v = _mm512_max_ps(v, zero);
      _mm512_storeu_ps(y + p * cout + 16 * c, v);
    }
}

// Padded rows first..last (inclusive) of one image's zero-padded NHWC copy (row stride
// (W+2)*C floats) hold its input rows first-1..last-1: zero outside the image and in the
// left and right border columns.
inline void pad_rows(float* pad, const float* xn, int64_t first, int64_t last, int64_t h,
                     int64_t wd, int64_t c) {
  const int64_t rs = (wd + 2) * c;
  for (int64_t pr = first; pr <= last; ++pr) {
    float* dst = pad + pr * rs;
    const int64_t src = pr - 1;
    if (src < 0 || src >= h) {
      std::memset(dst, 0, sizeof(float) * rs);
    } else {
      std::memset(dst, 0, sizeof(float) * c);
      std::memcpy(dst + c, xn + src * wd * c, sizeof(float) * wd * c);
      std::memset(dst + (wd + 1) * c, 0, sizeof(float) * c);
    }
  }
}

struct Row {
  const float* xp;  // padded input, first of the three rows this output row reads
  int rs, cin, cout, width;
  const float* w;
  const float* bias;
  float* y;
  const float* res;
  bool relu;
};

// Output pixels [w, width) in tiles of P while they fit; advances w.
template <int CB, int P, int S = 1>
inline void span(const Row& r, int c0, int& w) {
  for (; w + P <= r.width; w += P)
    tile<P, CB, S>(r.xp + S * w * r.cin, r.rs, r.cin, r.w + c0, r.cout, r.bias + c0,
                r.y + w * r.cout + c0, r.res ? r.res + w * r.cout + c0 : nullptr, r.relu);
}

// One output row: 16 pixels x 16 channels or 12 pixels x 32 channels per tile (24 of the 32
// vector registers for accumulators), then smaller tiles for the rest of the row.
template <int CB, int S = 1>
void row(const Row& r) {
  for (int c0 = 0; c0 < r.cout; c0 += 16 * CB) {
    int w = 0;
    if constexpr (CB == 1) span<CB, 16, S>(r, c0, w);
    if constexpr (CB == 2) span<CB, 12, S>(r, c0, w);
    span<CB, 8, S>(r, c0, w);
    span<CB, 4, S>(r, c0, w);
    span<CB, 2, S>(r, c0, w);
    span<CB, 1, S>(r, c0, w);
  }
}
// Vector lanes of V floats (512-, 256- or 128-bit), for the Ghost module's narrow widths.
template <typename Vec, int V>
struct Lanes;
template <>
struct Lanes<__m512, 16> {
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static __m512 fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static __m512 max0(__m512 a) { return _mm512_max_ps(a, _mm512_setzero_ps()); }
  static __m512 set1(float a) { return _mm512_set1_ps(a); }
  static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  static __m512 load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // rounded to nearest even, saturated to 255 (a negative value must not reach it)
  static void store_u8(uint8_t* p, __m512 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(v)));
  }
};
template <>
struct Lanes<__m256, 8> {
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  static __m256 fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
  static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
  static __m256 max0(__m256 a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static __m256 set1(float a) { return _mm256_set1_ps(a); }
  static __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
  static __m256 load_u8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void store_u8(uint8_t* p, __m256 v) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtusepi32_epi8(_mm256_cvtps_epi32(v)));
  }
};
template <>
struct Lanes<__m128, 4> {
  static __m128 load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, __m128 v) { _mm_storeu_ps(p, v); }
  static __m128 fma(__m128 a, __m128 b, __m128 c) { return _mm_fmadd_ps(a, b, c); }
  static __m128 add(__m128 a, __m128 b) { return _mm_add_ps(a, b); }
  static __m128 max0(__m128 a) { return _mm_max_ps(a, _mm_setzero_ps()); }
  static __m128 set1(float a) { return _mm_set1_ps(a); }
  static __m128 mul(__m128 a, __m128 b) { return _mm_mul_ps(a, b); }
  static __m128 load_u8(const uint8_t* p) {
    int32_t four;
    std::memcpy(&four, p, 4);
    return _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(four)));
  }
  static void store_u8(uint8_t* p, __m128 v) {
    const int32_t four = _mm_cvtsi128_si32(_mm_cvtusepi32_epi8(_mm_cvtps_epi32(v)));
    std::memcpy(p, &four, 4);
  }
};

// Where an epilogue's values go and what it adds: y fp32, or u8 on the next layer's input
// grid (y8: round(v / s_y) saturated to [0, 255], out_inv = 1 / s_y; only after a ReLU);
// the residual fp32 (res) or u8 (res8, dequantized by res_scale). The pointers address
// element 0 of the maps, or of the row an `at` copy points to.
struct Out {
  float* y = nullptr;
  uint8_t* y8 = nullptr;
  float out_inv = 0.0f;
  const float* res = nullptr;
  const uint8_t* res8 = nullptr;
  float res_scale = 0.0f;
  bool relu = false;
  Out at(int64_t off) const {
    Out o = *this;
    if (o.y) o.y += off;
    if (o.y8) o.y8 += off;
    if (o.res) o.res += off;
    if (o.res8) o.res8 += off;
    return o;
  }
};

// An Out's pointers and constants held as locals (out of reach of the stores' aliasing), and
// the epilogue of one vector v at element i: (+ residual), ReLU, stored fp32 or u8.
template <typename Vec, int V>
struct Finish {
  using L = Lanes<Vec, V>;
  float* y;
  uint8_t* y8;
  const float* res;
  const uint8_t* res8;
  Vec inv, rscale;
  bool relu;
  explicit Finish(const Out& o)
      : y(o.y), y8(o.y8), res(o.res), res8(o.res8), inv(L::set1(o.out_inv)),
        rscale(L::set1(o.res_scale)), relu(o.relu) {}
  inline void operator()(int64_t i, Vec v) const {
    if (res) v = L::add(v, L::load(res + i));
    else if (res8) v = L::fma(L::load_u8(res8 + i), rscale, v);
    if (relu) v = L::max0(v);
    if (y8) L::store_u8(y8 + i, L::mul(v, inv));
    else L::store(y + i, v);
  }
};

// P output pixels x V channels (one 256- or 128-bit vector): the primary convolution of a
// Ghost module whose m is not a multiple of 16 (e.g. Ghost-ResNet's first stage, m = 8, or 4
// once pruned), at full lane use.
template <typename Vec, int V, int P, int S = 1>
inline void tile_narrow(const float* xp, int rs, int cin, const float* wp, int cout,
                        const float* bias, float* y) {
  using L = Lanes<Vec, V>;
  Vec acc[P];
  const Vec b = L::load(bias);
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p) acc[p] = b;
  for (int ky = 0; ky < 3; ++ky) {
    const float* xr = xp + ky * rs;
    const float* wr = wp + ky * 3 * cin * cout;
    for (int ci = 0; ci < cin; ++ci) {
      Vec w[3];
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) w[kx] = L::load(wr + (kx * cin + ci) * cout);
#pragma GCC unroll 40
      for (int j = 0; j < S * (P - 1) + 3; ++j) {
        const Vec xv = L::set1(xr[j * cin + ci]);
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) {
          const int p = (j - kx) / S;  // input column j = S p + kx
          if (j >= kx && (j - kx) % S == 0 && p < P) acc[p] = L::fma(xv, w[kx], acc[p]);
        }
      }
    }
  }
#pragma GCC unroll 32
  for (int p = 0; p < P; ++p) L::store(y + p * cout, acc[p]);
}

template <typename Vec, int V, int P, int S = 1>
inline void span_narrow(const Row& r, int c0, int& w) {
  for (; w + P <= r.width; w += P)
    tile_narrow<Vec, V, P, S>(r.xp + S * w * r.cin, r.rs, r.cin, r.w + c0, r.cout, r.bias + c0,
                           r.y + w * r.cout + c0);
}

template <typename Vec, int V, int S>
inline void row_narrow(const Row& r, int c0) {
  int w = 0;
  span_narrow<Vec, V, 16, S>(r, c0, w), span_narrow<Vec, V, 8, S>(r, c0, w);
  span_narrow<Vec, V, 4, S>(r, c0, w), span_narrow<Vec, V, 2, S>(r, c0, w);
  span_narrow<Vec, V, 1, S>(r, c0, w);
}

// The last m % 16 (4, 8 or 12) channels of a Ghost primary on full 512-bit lanes. With one
// broadcast input value per 128- or 256-bit FMA (tile_narrow) they ran at about a third
// (m = 4) and two thirds (m = 8) of the 16-channel tiles' rate. Here a vector holds 4 input
// x 4 output channels: the 4 input channels, contiguous in NHWC, come in one 128-bit
// broadcast, and each output's 4 partial sums are added once per tile. Needs C % 4 == 0.
// wq: [ky][kx][C/4][CB][16], lane 4k + j = w[ky][kx][4q + j][c0 + 4cb + k]; bq: [CB][16],
// the bias in lanes 4k.
template <int P, int CB, int S = 1>
inline void tile_quads(const float* xp, int rs, int cin, const float* wq, const float* bq,
                       float* y, int cout) {
  static_assert((P * CB) % 4 == 0, "partial sums are reduced four accumulators at a time");
  __m512 acc[P][CB];
#pragma GCC unroll 4
  for (int cb = 0; cb < CB; ++cb) {
    const __m512 b = _mm512_loadu_ps(bq + 16 * cb);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[p][cb] = b;
  }
  const int nq = cin / 4;
  for (int ky = 0; ky < 3; ++ky) {
    const float* xr = xp + ky * rs;
    const float* wr = wq + ky * 3 * nq * CB * 16;
    for (int q = 0; q < nq; ++q) {
      __m512 w[3][CB];
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx)
#pragma GCC unroll 4
        for (int cb = 0; cb < CB; ++cb)
          w[kx][cb] = _mm512_loadu_ps(wr + ((kx * nq + q) * CB + cb) * 16);
#pragma GCC unroll 40
      for (int j = 0; j < S * (P - 1) + 3; ++j) {
        const __m512 xv = _mm512_broadcast_f32x4(_mm_loadu_ps(xr + j * cin + 4 * q));
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) {
          const int p = (j - kx) / S;  // input column j = S p + kx
          if (j >= kx && (j - kx) % S == 0 && p < P) {
#pragma GCC unroll 4
            for (int cb = 0; cb < CB; ++cb)
              acc[p][cb] = _mm512_fmadd_ps(xv, w[kx][cb], acc[p][cb]);
          }
        }
      }
    }
  }
  // four accumulators at a time: sum each one's 4 lanes per output, 4 outputs per 128 bits
  const __m512i tr = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
#pragma GCC unroll 8
  for (int g = 0; g < P * CB / 4; ++g) {
    const __m512 a0 = acc[(4 * g) / CB][(4 * g) % CB];
    const __m512 a1 = acc[(4 * g + 1) / CB][(4 * g + 1) % CB];
    const __m512 a2 = acc[(4 * g + 2) / CB][(4 * g + 2) % CB];
    const __m512 a3 = acc[(4 * g + 3) / CB][(4 * g + 3) % CB];
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 v = _mm512_permutexvar_ps(tr, u);  // 128-bit chunk i: accumulator 4g + i
    auto at = [&](int i) { return y + ((4 * g + i) / CB) * cout + 4 * ((4 * g + i) % CB); };
    _mm_storeu_ps(at(0), _mm512_castps512_ps128(v));
    _mm_storeu_ps(at(1), _mm512_extractf32x4_ps(v, 1));
    _mm_storeu_ps(at(2), _mm512_extractf32x4_ps(v, 2));
    _mm_storeu_ps(at(3), _mm512_extractf32x4_ps(v, 3));
  }
}

template <int P, int CB, int S = 1>
inline void span_quads(const Row& r, int c0, const float* wq, const float* bq, int& w) {
  for (; w + P <= r.width; w += P)
    tile_quads<P, CB, S>(r.xp + S * w * r.cin, r.rs, r.cin, wq, bq, r.y + w * r.cout + c0, r.cout);
}

// Channels [c0, c0 + 4 CB) of one row: quad tiles, then single pixels on the narrow tiles.
template <int CB, int S>
void row_quads(const Row& r, int c0, const float* wq, const float* bq) {
  int w = 0;
  if constexpr (CB == 1) {
    span_quads<16, 1, S>(r, c0, wq, bq, w), span_quads<8, 1, S>(r, c0, wq, bq, w);
    span_quads<4, 1, S>(r, c0, wq, bq, w);
  } else if constexpr (CB == 2) {
    span_quads<8, 2, S>(r, c0, wq, bq, w), span_quads<4, 2, S>(r, c0, wq, bq, w);
    span_quads<2, 2, S>(r, c0, wq, bq, w);
  } else {
    span_quads<4, 3, S>(r, c0, wq, bq, w);
  }
  for (; w < r.width; ++w) {
    int c = c0;
    const float* xw = r.xp + S * w * r.cin;
    if (CB >= 2) {
      tile_narrow<__m256, 8, 1, S>(xw, r.rs, r.cin, r.w + c, r.cout, r.bias + c,
                                   r.y + w * r.cout + c);
      c += 8;
    }
    if (CB % 2)
      tile_narrow<__m128, 4, 1, S>(xw, r.rs, r.cin, r.w + c, r.cout, r.bias + c,
                                   r.y + w * r.cout + c);
  }
}

// The quad tiles' weights and biases for channels [c0, m) (see tile_quads).
std::vector<float> quad_weights(const float* wp, const float* bias, int c, int m, int c0) {
  const int cb_n = (m - c0) / 4, nq = c / 4;
  std::vector<float> out(static_cast<size_t>(9 * nq * cb_n + cb_n) * 16, 0.0f);
  for (int kk = 0; kk < 9; ++kk)
    for (int q = 0; q < nq; ++q)
      for (int cb = 0; cb < cb_n; ++cb)
        for (int k = 0; k < 4; ++k)
          for (int j = 0; j < 4; ++j)
            out[((static_cast<size_t>(kk) * nq + q) * cb_n + cb) * 16 + 4 * k + j] =
                wp[(static_cast<int64_t>(kk) * c + 4 * q + j) * m + c0 + 4 * cb + k];
  float* bq = out.data() + static_cast<size_t>(9 * nq * cb_n) * 16;
  for (int cb = 0; cb < cb_n; ++cb)
    for (int k = 0; k < 4; ++k) bq[cb * 16 + 4 * k] = bias[c0 + 4 * cb + k];
  return out;
}

// One output row, any multiple of 4 channels: 32- and 16-channel tiles, then the last m % 16
// on the quad tiles (wq: quad_weights, when C % 4 == 0) or the narrow ones (no epilogue).
// S: the convolution's stride (1, or 2 for a Ghost module that halves the map); r.xp is the
// first padded input row of the output row, r.width the output's.
template <int S>
void row_mixed(const Row& r, const float* wq) {
  int c0 = 0;
  for (; c0 + 32 <= r.cout; c0 += 32) {
    int w = 0;
    span<2, 12, S>(r, c0, w), span<2, 8, S>(r, c0, w), span<2, 4, S>(r, c0, w);
    span<2, 2, S>(r, c0, w), span<2, 1, S>(r, c0, w);
  }
  for (; c0 + 16 <= r.cout; c0 += 16) {
    int w = 0;
    span<1, 16, S>(r, c0, w), span<1, 8, S>(r, c0, w), span<1, 4, S>(r, c0, w);
    span<1, 2, S>(r, c0, w), span<1, 1, S>(r, c0, w);
  }
  const int cb_n = (r.cout - c0) / 4;
  if (wq && cb_n) {
    const float* bq = wq + static_cast<size_t>(9 * (r.cin / 4) * cb_n) * 16;
    if (cb_n == 1) row_quads<1, S>(r, c0, wq, bq);
    else if (cb_n == 2) row_quads<2, S>(r, c0, wq, bq);
    else row_quads<3, S>(r, c0, wq, bq);
    return;
  }
  if (c0 + 8 <= r.cout) row_narrow<__m256, 8, S>(r, c0), c0 += 8;
  if (c0 + 4 <= r.cout) row_narrow<__m128, 4, S>(r, c0);
}

// The Ghost module's epilogue for one output row, channels [c, c + V) with V = 16, 8 or 4:
// the cheap op's nine taps, the scales and biases stay in registers over the row's pixels.
template <typename Vec, int V>
inline void ghost_chunk(const float* const* rows, int width, int m, int c, const float* scale1,
                        const float* bias1, const float* wd, const float* bias2, const Out& out,
                        int x0 = 0) {
  using L = Lanes<Vec, V>;
  const Finish<Vec, V> finish(out);
  Vec w[9];
#pragma GCC unroll 9
  for (int k = 0; k < 9; ++k) w[k] = L::load(wd + k * m + c);
  const Vec s1 = L::load(scale1 + c), b1 = L::load(bias1 + c), b2 = L::load(bias2 + c);
  const float* up = rows[0] + c;
  const float* mid = rows[1] + c;
  const float* down = rows[2] + c;
  for (int x = x0; x < width; ++x) {
    const int64_t yo = static_cast<int64_t>(x) * 2 * m + c;
    const int64_t o = static_cast<int64_t>(x) * m;
    Vec v = L::fma(s1, L::load(mid + o + m), b1);
    Vec g = b2;
#pragma GCC unroll 3
    for (int kx = 0; kx < 3; ++kx) {
      g = L::fma(w[kx], L::load(up + o + kx * m), g);
      g = L::fma(w[3 + kx], L::load(mid + o + kx * m), g);
      g = L::fma(w[6 + kx], L::load(down + o + kx * m), g);
    }
    finish(yo, v);
    finish(yo + m, g);
  }
}

// The epilogue of a Ghost module with m = M = 4 or 8 on 512-bit vectors: a vector holds the
// M channels of 16 / M neighbouring pixels (contiguous in the primary's scratch row), the
// scales and the cheap op's taps repeated per pixel; the two halves are interleaved back to
// y's [pixel][2M] order for the stores. Returns the first pixel it left (width % (16 / M)).
template <int M>
inline int ghost_packed(const float* const* rows, int width, const float* scale1,
                        const float* bias1, const float* wd, const float* bias2,
                        const Out& out) {
  static_assert(M == 4 || M == 8, "16 / M pixels per vector");
  using L = Lanes<__m512, 16>;
  const Finish<__m512, 16> finish(out);
  auto rep = [](const float* p) {  // M floats, repeated 16 / M times
    if constexpr (M == 8) return _mm512_broadcast_f32x8(_mm256_loadu_ps(p));
    else return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
  };
  __m512 w[9];
#pragma GCC unroll 9
  for (int k = 0; k < 9; ++k) w[k] = rep(wd + k * M);
  const __m512 s1 = rep(scale1), b1 = rep(bias1), b2 = rep(bias2);
  // y order from v = [v_0 .. v_n), g = [g_0 .. g_n): [v_0 g_0 v_1 g_1 ...]
  const __m512i lo4 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i hi4 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29,
                                        30, 31);
  constexpr int PX = 16 / M;
  int x = 0;
  for (; x + PX <= width; x += PX) {
    const int64_t o = static_cast<int64_t>(x) * M;
    const __m512 v = L::fma(s1, L::load(rows[1] + o + M), b1);
    __m512 g = b2;
#pragma GCC unroll 3
    for (int kx = 0; kx < 3; ++kx) {
      g = L::fma(w[kx], L::load(rows[0] + o + kx * M), g);
      g = L::fma(w[3 + kx], L::load(rows[1] + o + kx * M), g);
      g = L::fma(w[6 + kx], L::load(rows[2] + o + kx * M), g);
    }
    __m512 a, b;
    if constexpr (M == 8) {
      a = _mm512_shuffle_f32x4(v, g, _MM_SHUFFLE(1, 0, 1, 0));
      b = _mm512_shuffle_f32x4(v, g, _MM_SHUFFLE(3, 2, 3, 2));
    } else {
      a = _mm512_permutex2var_ps(v, lo4, g);
      b = _mm512_permutex2var_ps(v, hi4, g);
    }
    finish(2 * o, a);
    finish(2 * o + 16, b);
  }
  return x;
}

void ghost_row(const float* s_up, const float* s_mid, const float* s_down, int width, int m,
               const float* scale1, const float* bias1, const float* wd, const float* bias2,
               const Out& out) {
  const float* rows[3] = {s_up, s_mid, s_down};
  if (m == 8 || m == 4) {
    const int x = m == 8 ? ghost_packed<8>(rows, width, scale1, bias1, wd, bias2, out)
                         : ghost_packed<4>(rows, width, scale1, bias1, wd, bias2, out);
    if (m == 8) ghost_chunk<__m256, 8>(rows, width, m, 0, scale1, bias1, wd, bias2, out, x);
    else ghost_chunk<__m128, 4>(rows, width, m, 0, scale1, bias1, wd, bias2, out, x);
    return;
  }
  int c = 0;
  for (; c + 16 <= m; c += 16)
    ghost_chunk<__m512, 16>(rows, width, m, c, scale1, bias1, wd, bias2, out);
  if (c + 8 <= m)  // m is a multiple of 4: an 8- and a 4-channel chunk may be left
    ghost_chunk<__m256, 8>(rows, width, m, c, scale1, bias1, wd, bias2, out), c += 8;
  if (c < m) ghost_chunk<__m128, 4>(rows, width, m, c, scale1, bias1, wd, bias2, out);
}
#endif

std::string conv3x3_isa() {
#ifdef __AVX512F__
  return "avx512";
#else
  return "none";
#endif
}

at::Tensor conv3x3_nhwc(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& b_in,
                        const c10::optional<at::Tensor>& res_in, bool relu, int64_t stride) {
#ifndef __AVX512F__
  TORCH_CHECK(false, "conv3x3_nhwc: this build has no AVX-512 (use torch's convolution)");
#else
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "conv3x3_nhwc: x must be a 4-D float32 CPU tensor, got ", x_in.sizes(), " ",
              x_in.scalar_type());
  TORCH_CHECK(w_in.device().is_cpu() && b_in.device().is_cpu(),
              "conv3x3_nhwc: packed weight and bias must be CPU tensors");
  const int64_t n = x_in.size(0), c = x_in.size(1), hi = x_in.size(2), wi = x_in.size(3);
  TORCH_CHECK(c >= 1, "conv3x3_nhwc: x has no channels");
  TORCH_CHECK(stride == 1 || stride == 2, "conv3x3_nhwc: stride must be 1 or 2, got ", stride);
  const int64_t h = (hi - 1) / stride + 1, wd = (wi - 1) / stride + 1;  // padding 1
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) == 9 * c && w_in.size(1) % 16 == 0 &&
                  w_in.scalar_type() == at::kFloat,
              "conv3x3_nhwc: packed weight must be float32 (9*C, O) with O a multiple of 16; "
              "got ", w_in.sizes(), " for C = ", c);
  const int64_t o = w_in.size(1);
  TORCH_CHECK(o >= 16, "conv3x3_nhwc: packed weight has no output channels");
  TORCH_CHECK(b_in.dim() == 1 && b_in.numel() == o && b_in.scalar_type() == at::kFloat,
              "conv3x3_nhwc: bias must be float32 with ", o, " values");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl);
  const at::Tensor w = w_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  at::Tensor res;
  if (res_in.has_value()) {
    TORCH_CHECK(res_in->sizes() == at::IntArrayRef({n, o, h, wd}) &&
                    res_in->scalar_type() == at::kFloat && res_in->device().is_cpu(),
                "conv3x3_nhwc: residual must be float32 of shape ", at::IntArrayRef({n, o, h, wd}),
                ", got ", res_in->sizes());
    res = res_in->contiguous(cl);
  }
  at::Tensor y = at::empty({n, o, h, wd}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  const float* xd = x.data_ptr<float>();
  const float* rd = res.defined() ? res.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  const int rs = static_cast<int>((wi + 2) * c);
  // output rows of all images, split over threads; a chunk pads the input rows it reads
  at::parallel_for(0, n * h, std::max<int64_t>(1, h / 4), [&](int64_t r0, int64_t r1) {
    // per-thread scratch, reused across calls (pad_rows writes every row it hands out whole)
    thread_local std::vector<float> pad;
    if (pad.size() < static_cast<size_t>(hi + 2) * rs) pad.resize(static_cast<size_t>(hi + 2) * rs);
    for (int64_t r = r0; r < r1;) {
      const int64_t img = r / h, h0 = r % h, h1 = std::min<int64_t>(h, h0 + (r1 - r));
      const float* xn = xd + img * hi * wi * c;
      pad_rows(pad.data(), xn, stride * h0, stride * (h1 - 1) + 2, hi, wi, c);
      for (int64_t hh = h0; hh < h1; ++hh) {
        const int64_t off = ((img * h) + hh) * wd * o;
        const Row rw{pad.data() + stride * hh * rs, rs, static_cast<int>(c), static_cast<int>(o),
                     static_cast<int>(wd), w.data_ptr<float>(), b.data_ptr<float>(), yd + off,
                     rd ? rd + off : nullptr, relu};
        if (stride == 2) {
          if (o % 32 == 0) row<2, 2>(rw); else row<1, 2>(rw);
        } else {
          if (o % 32 == 0) row<2>(rw); else row<1>(rw);
        }
      }
      r += h1 - h0;
    }
  });
  return y;
#endif
}

#ifdef __AVX512F__
// Per-thread float scratch, one buffer per Slot, grown as needed and reused across calls.
template <int Slot>
std::vector<float>& scratch(size_t size) {
  thread_local std::vector<float> buf;  // per thread, reused across calls
  if (buf.size() < size) buf.resize(size);
  return buf;
}

// The Out of an op's output y and optional residual, by their dtypes (u8 or fp32).
Out out_of(const at::Tensor& y, const at::Tensor& res, bool relu, double out_inv = 0.0,
           double res_scale = 0.0) {
  Out o;
  if (y.scalar_type() == at::kByte) o.y8 = y.data_ptr<uint8_t>(), o.out_inv = out_inv;
  else o.y = y.data_ptr<float>();
  if (res.defined()) {
    if (res.scalar_type() == at::kByte) o.res8 = res.data_ptr<uint8_t>(), o.res_scale = res_scale;
    else o.res = res.data_ptr<float>();
  }
  o.relu = relu;
  return o;
}

// Primary rows r0 .. r1-1 of one image into its padded scratch map sp (rows r+1, edge
// columns zero; rows 0 and h+1 zeroed by the parts that touch them: the cheap op's padding).
template <typename Prepare, typename Primary>
void primary_rows(float* sp, int64_t img, int64_t r0, int64_t r1, int64_t h, int64_t wd,
                  int64_t m, int64_t stride, Prepare& prepare, Primary& primary) {
  const int64_t ss = (wd + 2) * m;
  prepare(img, stride * r0, stride * (r1 - 1) + 2);
  for (int64_t r = r0; r < r1; ++r) {
    float* srow = sp + (r + 1) * ss;
    std::memset(srow, 0, sizeof(float) * m);
    std::memset(srow + (wd + 1) * m, 0, sizeof(float) * m);
    primary(r, srow + m);
  }
  if (r0 == 0) std::memset(sp, 0, sizeof(float) * ss);
  if (r1 == h) std::memset(sp + (h + 1) * ss, 0, sizeof(float) * ss);
}

// The band loop of a Ghost op over n images of h x wd (the output's; stride: the primary's),
// m intrinsic channels: `prepare(img, first, last)` readies this thread's padded input rows
// first..last, `primary(r, out)` writes primary row r (m floats per pixel) to `out`, then the
// cheap op and epilogue write y's rows. As many images as threads or more: one image per task,
// its primary map in the thread's scratch. Fewer (batch 1 on 2 threads): each image's primary
// rows are split over the threads into one shared map, then its epilogue rows (one OpenMP
// region with a barrier between the phases, else two parallel_for regions; no thread
// recomputes its neighbour's edge rows, which cost 6-25 % at 32x32-8x8).
template <typename Prepare, typename Primary>
void ghost_bands(int64_t n, int64_t h, int64_t wd, int64_t m, int64_t stride, const float* s1,
                 const float* b1, const float* wdw, const float* b2, const Out& out,
                 Prepare prepare, Primary primary) {
  const int64_t ss = (wd + 2) * m;  // padded primary row
  const int64_t threads = at::get_num_threads();
  auto epilogue = [&](const float* sp, int64_t img, int64_t h0, int64_t h1) {
    for (int64_t hh = h0; hh < h1; ++hh)
      ghost_row(sp + hh * ss, sp + (hh + 1) * ss, sp + (hh + 2) * ss, static_cast<int>(wd),
                static_cast<int>(m), s1, b1, wdw, b2, out.at(((img * h) + hh) * wd * 2 * m));
  };
  if (n >= threads || h < 2) {
    at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
      float* sp = scratch<1>(static_cast<size_t>(h + 2) * ss).data();
      for (int64_t img = i0; img < i1; ++img) {
        primary_rows(sp, img, 0, h, h, wd, m, stride, prepare, primary);
        epilogue(sp, img, 0, h);
      }
    });
    return;
  }
  const int64_t parts = std::min<int64_t>(h, (threads + n - 1) / n);
  const int64_t part_h = (h + parts - 1) / parts;
  // the calling thread's scratch, shared by the workers for this call
  float* shared = scratch<2>(static_cast<size_t>(n * (h + 2) * ss)).data();
  auto each_part = [&](auto body) {
    at::parallel_for(0, n * parts, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t img = t / parts, h0 = (t % parts) * part_h;
        const int64_t h1 = std::min<int64_t>(h, h0 + part_h);
        if (h0 < h1) body(shared + img * (h + 2) * ss, img, h0, h1);
      }
    });
  };
  auto primary_part = [&](float* sp, int64_t img, int64_t h0, int64_t h1) {
    primary_rows(sp, img, h0, h1, h, wd, m, stride, prepare, primary);
  };
  auto epilogue_part = [&](float* sp, int64_t img, int64_t h0, int64_t h1) {
    epilogue(sp, img, h0, h1);
  };
#if defined(_OPENMP)
  // One parallel region, the two phases split by a barrier (at::parallel_for has none): one
  // region start and join fewer per Ghost module (Ghost-ResNet-56 at batch 1, 2 threads: about
  // 2 % faster, interleaved A/B in one process).
  const int64_t tasks = n * parts;
  if (!at::in_parallel_region() && !omp_in_parallel()) {
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, tasks)))
    {
      const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
      auto run = [&](auto& body) {
        for (int64_t t = tid; t < tasks; t += nth) {
          const int64_t img = t / parts, h0 = (t % parts) * part_h;
          const int64_t h1 = std::min<int64_t>(h, h0 + part_h);
          if (h0 < h1) body(shared + img * (h + 2) * ss, img, h0, h1);
        }
      };
      run(primary_part);
#pragma omp barrier
      run(epilogue_part);
    }
    return;
  }
#endif
  each_part(primary_part);
  each_part(epilogue_part);
}
#endif

// Ghost module (GhostNet, arXiv 1911.11907) with ratio 2 and a 3x3 cheap operation, and the
// host's folded BN, residual add and ReLU, in one pass over NHWC:
//   P = conv3x3(x, w_primary) + b_primary                     (m channels, kept in a scratch)
//   y[:, :m] = act(scale1 * P + bias1 (+ res[:, :m]))
//   y[:, m:] = act(depthwise3x3(P, w_cheap) + bias2 (+ res[:, m:]))
// y is written once, both halves in place: no concatenation copy. w_primary packed (9*C, m)
// as [ky][kx][ci][co]; w_cheap (9, m) as [ky][kx][c]; m a multiple of 4. Work is split over
// whole images, or over row bands of one image when there are fewer images than threads (a
// band recomputes the primary rows at its edges).
at::Tensor ghost3x3_nhwc(const at::Tensor& x_in, const at::Tensor& wp_in, const at::Tensor& bp_in,
                         const at::Tensor& s1_in, const at::Tensor& b1_in,
                         const at::Tensor& wd_in, const at::Tensor& b2_in,
                         const c10::optional<at::Tensor>& res_in, bool relu, int64_t stride) {
#ifndef __AVX512F__
  TORCH_CHECK(false, "ghost3x3_nhwc: this build has no AVX-512 (use torch's convolution)");
#else
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "ghost3x3_nhwc: x must be a 4-D float32 CPU tensor, got ", x_in.sizes(), " ",
              x_in.scalar_type());
  const int64_t n = x_in.size(0), c = x_in.size(1), hi = x_in.size(2), wi = x_in.size(3);
  TORCH_CHECK(c >= 1, "ghost3x3_nhwc: x has no channels");
  TORCH_CHECK(stride == 1 || stride == 2, "ghost3x3_nhwc: stride must be 1 or 2, got ", stride);
  const int64_t h = (hi - 1) / stride + 1, wd = (wi - 1) / stride + 1;  // padding 1
  TORCH_CHECK(wp_in.dim() == 2 && wp_in.size(0) == 9 * c && wp_in.size(1) >= 4 &&
                  wp_in.size(1) % 4 == 0 && wp_in.scalar_type() == at::kFloat &&
                  wp_in.device().is_cpu(),
              "ghost3x3_nhwc: packed primary weight must be float32 CPU (9*C, m) with m a "
              "multiple of 4; got ", wp_in.sizes(), " for C = ", c);
  const int64_t m = wp_in.size(1);
  for (const at::Tensor* v : {&bp_in, &s1_in, &b1_in, &b2_in})
    TORCH_CHECK(v->dim() == 1 && v->numel() == m && v->scalar_type() == at::kFloat &&
                    v->device().is_cpu(),
                "ghost3x3_nhwc: bias and scale vectors must be float32 CPU with ", m,
                " values, got ", v->sizes());
  TORCH_CHECK(wd_in.dim() == 2 && wd_in.size(0) == 9 && wd_in.size(1) == m &&
                  wd_in.scalar_type() == at::kFloat && wd_in.device().is_cpu(),
              "ghost3x3_nhwc: cheap weight must be float32 CPU (9, ", m, "), got ",
              wd_in.sizes());
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor res;
  if (res_in.has_value()) {
    TORCH_CHECK(res_in->sizes() == at::IntArrayRef({n, 2 * m, h, wd}) &&
                    res_in->scalar_type() == at::kFloat && res_in->device().is_cpu(),
                "ghost3x3_nhwc: residual must be float32 CPU of shape ",
                at::IntArrayRef({n, 2 * m, h, wd}), ", got ", res_in->sizes());
    res = res_in->contiguous(cl);
  }
  const at::Tensor x = x_in.contiguous(cl);
  const at::Tensor wp = wp_in.contiguous(), bp = bp_in.contiguous(), s1 = s1_in.contiguous();
  const at::Tensor b1 = b1_in.contiguous(), wdw = wd_in.contiguous(), b2 = b2_in.contiguous();
  at::Tensor y = at::empty({n, 2 * m, h, wd}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  const float* xd = x.data_ptr<float>();
  const int rs = static_cast<int>((wi + 2) * c);  // padded input row
  const std::vector<float> quads =
      m % 16 && c % 4 == 0
          ? quad_weights(wp.data_ptr<float>(), bp.data_ptr<float>(), static_cast<int>(c),
                         static_cast<int>(m), static_cast<int>(m / 16 * 16))
          : std::vector<float>();
  const float* wpp = wp.data_ptr<float>();
  const float* bpp = bp.data_ptr<float>();
  ghost_bands(
      n, h, wd, m, stride, s1.data_ptr<float>(), b1.data_ptr<float>(), wdw.data_ptr<float>(),
      b2.data_ptr<float>(), out_of(y, res, relu),
      [&](int64_t img, int64_t first, int64_t last) {
        float* pad = scratch<0>(static_cast<size_t>(hi + 2) * rs).data();
        pad_rows(pad, xd + img * hi * wi * c, first, last, hi, wi, c);
      },
      [&](int64_t r, float* out) {
        const Row rw{scratch<0>(0).data() + stride * r * rs, rs, static_cast<int>(c),
                     static_cast<int>(m), static_cast<int>(wd), wpp, bpp, out, nullptr, false};
        const float* wq = quads.empty() ? nullptr : quads.data();
        if (stride == 2) row_mixed<2>(rw, wq);
        else row_mixed<1>(rw, wq);
      });
  return y;
#endif
}


#ifdef __AVX512F__
// This thread's quantized padded rows, for the Ghost int8 op's primary.
inline const uint8_t*& u8_pad() {
  thread_local const uint8_t* p = nullptr;
  return p;
}
#endif

// ---- W8A8: the same layers with int8 products (AVX512-VNNI) ------------------------------
// Activations are quantized on the way in (per tensor, zero point 0: these layers read ReLU
// outputs, u8 = clamp(round(x / s_x), 0, 255)), weights per output channel (s8, symmetric),
// products summed exactly in int32 by VPDPBUSD (4 u8 x s8 pairs per 32-bit lane: four times
// the fp32 FMA's multiply-adds per instruction), then y = acc * s_x * s_w + bias in fp32 and
// the epilogue as above. Maps between layers are fp32 NHWC, or u8 NHWC on the reader's grid
// (x uint8: already quantized; out_inv > 0: y written as u8 after the ReLU; a uint8 residual
// dequantized by res_scale as it is added). Weights packed (9, C4/4, O, 4)
// as [ky][kx][ci/4][co][ci%4], C4 = C rounded up to 4 (zero weights for the extra channels).

bool has_vnni() {
#ifdef __AVX512F__
  static const bool ok = __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

#ifdef __AVX512F__
#define LV_VNNI __attribute__((target("avx512vnni")))

// The int8 side of V lanes (VPDPBUSD, int32 to float); the float side is Lanes'.
template <int V>
struct Q8;
template <>
struct Q8<16> : Lanes<__m512, 16> {
  using I = __m512i;
  using F = __m512;
  LV_VNNI static I zero() { return _mm512_setzero_si512(); }
  LV_VNNI static I set1(int32_t a) { return _mm512_set1_epi32(a); }
  LV_VNNI static I loadw(const int8_t* p) { return _mm512_loadu_si512(p); }
  LV_VNNI static I dp(I acc, I x, I w) { return _mm512_dpbusd_epi32(acc, x, w); }
  LV_VNNI static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
};
template <>
struct Q8<8> : Lanes<__m256, 8> {
  using I = __m256i;
  using F = __m256;
  LV_VNNI static I zero() { return _mm256_setzero_si256(); }
  LV_VNNI static I set1(int32_t a) { return _mm256_set1_epi32(a); }
  LV_VNNI static I loadw(const int8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  LV_VNNI static I dp(I acc, I x, I w) { return _mm256_dpbusd_epi32(acc, x, w); }
  LV_VNNI static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
};
template <>
struct Q8<4> : Lanes<__m128, 4> {
  using I = __m128i;
  using F = __m128;
  LV_VNNI static I zero() { return _mm_setzero_si128(); }
  LV_VNNI static I set1(int32_t a) { return _mm_set1_epi32(a); }
  LV_VNNI static I loadw(const int8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  LV_VNNI static I dp(I acc, I x, I w) { return _mm_dpbusd_epi32(acc, x, w); }
  LV_VNNI static F cvt(I a) { return _mm_cvtepi32_ps(a); }
};

// Padded rows first..last of one image's u8 copy (row stride (W+2)*C4 bytes), quantized
// from its fp32 NHWC rows as pad_rows copies them: zero outside the image, in the border
// columns and in the channels past C.
// A u8 source is already on the grid: its rows are copied.
template <typename Src>
void pad_rows_u8(uint8_t* pad, const Src* xn, int64_t first, int64_t last, int64_t h,
                 int64_t wd, int64_t c, int64_t c4, float inv) {
  const int64_t rs = (wd + 2) * c4;
  const __m512 vinv = _mm512_set1_ps(inv), top = _mm512_set1_ps(255.0f);
  for (int64_t pr = first; pr <= last; ++pr) {
    uint8_t* dst = pad + pr * rs;
    const int64_t src = pr - 1;
    if (src < 0 || src >= h) {
      std::memset(dst, 0, rs);
      continue;
    }
    std::memset(dst, 0, c4);
    std::memset(dst + (wd + 1) * c4, 0, c4);
    const Src* row = xn + src * wd * c;
    if constexpr (std::is_same_v<Src, uint8_t>) {
      if (c == c4) {
        std::memcpy(dst + c4, row, wd * c);
      } else {
        for (int64_t x = 0; x < wd; ++x) {
          std::memcpy(dst + (x + 1) * c4, row + x * c, c);
          std::memset(dst + (x + 1) * c4 + c, 0, c4 - c);
        }
      }
      continue;
    }
    for (int64_t x = 0; x < wd; ++x) {
      uint8_t* d = dst + (x + 1) * c4;
      const Src* v = row + x * c;
      for (int64_t ci = 0; ci < c; ci += 16) {
        const int64_t k = std::min<int64_t>(16, c - ci);
        const __mmask16 mk = k == 16 ? 0xFFFF : static_cast<__mmask16>((1u << k) - 1);
        const __m512 f = _mm512_min_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, v + ci), vinv), top);
        const __m512i q = _mm512_max_epi32(_mm512_cvtps_epi32(f), _mm512_setzero_si512());
        _mm_mask_storeu_epi8(d + ci, mk, _mm512_cvtusepi32_epi8(q));
      }
      for (int64_t ci = c; ci < c4; ++ci) d[ci] = 0;
    }
  }
}

struct RowQ {
  const uint8_t* xp;  // padded u8 input, first of the three rows this output row reads
  int rs, c4, cout, width;
  const int8_t* w;     // (9, C4/4, cout, 4)
  const float* scale;  // per output channel: s_x * s_w
  const float* bias;
  Out out;  // at the row
  const int8_t* w4 = nullptr;  // the last 4 channels' quad weights (quad_weights_q), or none
};

// P output pixels x CB vectors of V channels from c0: every 4 input channels of a pixel come
// as one 32-bit broadcast, each weight vector holds V outputs x 4 inputs.
template <int V, int P, int CB, int S = 1>
LV_VNNI inline void tile_q(const RowQ& r, int c0, int w0) {
  using T = Q8<V>;
  typename T::I acc[P][CB];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 2
    for (int c = 0; c < CB; ++c) acc[p][c] = T::zero();
  const int cq = r.c4 / 4;
  for (int ky = 0; ky < 3; ++ky) {
    const uint8_t* xr =
        r.xp + static_cast<int64_t>(ky) * r.rs + static_cast<int64_t>(S) * w0 * r.c4;
    const int8_t* wr = r.w + static_cast<int64_t>(ky) * 3 * cq * r.cout * 4;
    for (int q = 0; q < cq; ++q) {
      typename T::I w[3][CB];
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx)
#pragma GCC unroll 2
        for (int c = 0; c < CB; ++c)
          w[kx][c] = T::loadw(wr + (static_cast<int64_t>(kx * cq + q) * r.cout + c0 + V * c) * 4);
#pragma GCC unroll 40
      for (int j = 0; j < S * (P - 1) + 3; ++j) {
        int32_t four;
        std::memcpy(&four, xr + j * r.c4 + 4 * q, 4);
        const typename T::I xv = T::set1(four);
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) {
          const int p = (j - kx) / S;  // input column j = S p + kx
          if (j >= kx && (j - kx) % S == 0 && p < P) {
#pragma GCC unroll 2
            for (int c = 0; c < CB; ++c) acc[p][c] = T::dp(acc[p][c], xv, w[kx][c]);
          }
        }
      }
    }
  }
  const Finish<typename T::F, V> finish(r.out);
#pragma GCC unroll 2
  for (int c = 0; c < CB; ++c) {
    const typename T::F s = T::load(r.scale + c0 + V * c), b = T::load(r.bias + c0 + V * c);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p)
      finish(static_cast<int64_t>(w0 + p) * r.cout + c0 + V * c,
             T::fma(T::cvt(acc[p][c]), s, b));
  }
}

template <int V, int CB, int P, int S>
LV_VNNI inline void span_q(const RowQ& r, int c0, int& w) {
  for (; w + P <= r.width; w += P) tile_q<V, P, CB, S>(r, c0, w);
}

template <int V, int CB, int S>
LV_VNNI inline void row_q_chunk(const RowQ& r, int c0) {
  int w = 0;
  if constexpr (CB == 2) {
    span_q<V, 2, 12, S>(r, c0, w), span_q<V, 2, 8, S>(r, c0, w), span_q<V, 2, 4, S>(r, c0, w);
    span_q<V, 2, 2, S>(r, c0, w), span_q<V, 2, 1, S>(r, c0, w);
  } else {
    span_q<V, 1, 16, S>(r, c0, w), span_q<V, 1, 8, S>(r, c0, w), span_q<V, 1, 4, S>(r, c0, w);
    span_q<V, 1, 2, S>(r, c0, w), span_q<V, 1, 1, S>(r, c0, w);
  }
}

// The last 4 output channels of a Ghost primary (m % 8 == 4, e.g. a pruned first stage's
// m = 4) on 512-bit VPDPBUSD instead of 128-bit: lane 4k + j holds output c0 + k x input quad
// 4g + j, so one 128-bit broadcast brings 16 input channels (C4 % 16 == 0) and each output's
// four partial sums are added once per tile (exact, int32). P pixels, P % 4 == 0; fp32 output
// with the scale and bias, no epilogue (the primary's). w4: [ky][kx][C4/16][16 lanes][4].
template <int P, int S>
LV_VNNI inline void tile_q4(const RowQ& r, int c0, int w0) {
  static_assert(P % 4 == 0, "partial sums are reduced four pixels at a time");
  __m512i acc[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_si512();
  const int ng = r.c4 / 16;
  for (int ky = 0; ky < 3; ++ky) {
    const uint8_t* xr =
        r.xp + static_cast<int64_t>(ky) * r.rs + static_cast<int64_t>(S) * w0 * r.c4;
    const int8_t* wr = r.w4 + static_cast<int64_t>(ky) * 3 * ng * 64;
    for (int g = 0; g < ng; ++g) {
      __m512i w[3];
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) w[kx] = _mm512_loadu_si512(wr + (kx * ng + g) * 64);
#pragma GCC unroll 40
      for (int j = 0; j < S * (P - 1) + 3; ++j) {
        const __m512i xv = _mm512_broadcast_i32x4(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(xr + j * r.c4 + 16 * g)));
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx) {
          const int p = (j - kx) / S;  // input column j = S p + kx
          if (j >= kx && (j - kx) % S == 0 && p < P) acc[p] = _mm512_dpbusd_epi32(acc[p], xv, w[kx]);
        }
      }
    }
  }
  const __m512 sc = _mm512_broadcast_f32x4(_mm_loadu_ps(r.scale + c0));
  const __m512 bi = _mm512_broadcast_f32x4(_mm_loadu_ps(r.bias + c0));
  const __m512i tr = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  auto pick = [](__m512i a, __m512i b, int imm) {  // shuffle_ps's lane moves, on int32
    return imm == 0x44 ? _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(a),
                                                                _mm512_castsi512_ps(b), 0x44))
                       : _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(a),
                                                                _mm512_castsi512_ps(b), 0xEE));
  };
#pragma GCC unroll 4
  for (int q = 0; q < P / 4; ++q) {
    const __m512i* a = acc + 4 * q;
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]),
                                        _mm512_unpackhi_epi32(a[0], a[1]));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]),
                                        _mm512_unpackhi_epi32(a[2], a[3]));
    // 128-bit block k: output c0 + k of the four pixels; then chunk i: pixel i's 4 outputs
    const __m512i u = _mm512_add_epi32(pick(t0, t1, 0x44), pick(t0, t1, 0xEE));
    const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_permutexvar_epi32(tr, u)), sc, bi);
    float* y = r.out.y + static_cast<int64_t>(w0 + 4 * q) * r.cout + c0;
    _mm_storeu_ps(y, _mm512_castps512_ps128(v));
    _mm_storeu_ps(y + r.cout, _mm512_extractf32x4_ps(v, 1));
    _mm_storeu_ps(y + 2 * r.cout, _mm512_extractf32x4_ps(v, 2));
    _mm_storeu_ps(y + 3 * r.cout, _mm512_extractf32x4_ps(v, 3));
  }
}

// One output row, any multiple of 4 channels: 32-, 16-, 8- then 4-channel tiles (the last 4
// on tile_q4 where r.w4 is given, its last pixels on the 128-bit tiles).
template <int S>
LV_VNNI void row_q(const RowQ& r) {
  int c0 = 0;
  for (; c0 + 32 <= r.cout; c0 += 32) row_q_chunk<16, 2, S>(r, c0);
  for (; c0 + 16 <= r.cout; c0 += 16) row_q_chunk<16, 1, S>(r, c0);
  if (c0 + 8 <= r.cout) row_q_chunk<8, 1, S>(r, c0), c0 += 8;
  if (c0 + 4 > r.cout) return;
  if (!r.w4) return row_q_chunk<4, 1, S>(r, c0);
  int w = 0;
  for (; w + 16 <= r.width; w += 16) tile_q4<16, S>(r, c0, w);
  for (; w + 8 <= r.width; w += 8) tile_q4<8, S>(r, c0, w);
  for (; w + 4 <= r.width; w += 4) tile_q4<4, S>(r, c0, w);
  span_q<4, 1, 2, S>(r, c0, w), span_q<4, 1, 1, S>(r, c0, w);
}

// tile_q4's weights for output channels [c0, c0 + 4) from the packed (9, C4/4, O, 4) ones.
std::vector<int8_t> quad_weights_q(const int8_t* wq, int64_t c4, int64_t o, int64_t c0) {
  const int64_t cq = c4 / 4, ng = c4 / 16;
  std::vector<int8_t> out(static_cast<size_t>(9 * ng * 64));
  for (int64_t kk = 0; kk < 9; ++kk)
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t k = 0; k < 4; ++k)
        for (int64_t j = 0; j < 4; ++j)
          std::memcpy(out.data() + ((kk * ng + g) * 16 + 4 * k + j) * 4,
                      wq + ((kk * cq + 4 * g + j) * o + c0 + k) * 4, 4);
  return out;
}
#endif

// The checks both int8 ops make on the packed weight, scale and input scale.
void check_q(const char* op, const at::Tensor& x, const at::Tensor& wq, const at::Tensor& sc,
             double inv_sx, bool relu, double out_inv, double res_scale,
             const c10::optional<at::Tensor>& res, int64_t* c4, int64_t* o) {
  TORCH_CHECK(has_vnni(), op, ": this CPU has no AVX512-VNNI (use the fp32 layer)");
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kByte) &&
                  x.device().is_cpu(),
              op, ": x must be a 4-D float32 or uint8 (on the input's grid) CPU tensor, got ",
              x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(std::isfinite(out_inv) && out_inv >= 0, op,
              ": out_inv must be finite and >= 0 (0: fp32 output), got ", out_inv);
  TORCH_CHECK(out_inv == 0 || relu, op, ": a uint8 output (out_inv > 0) needs relu");
  TORCH_CHECK(!res.has_value() || res->scalar_type() == at::kFloat ||
                  (res->scalar_type() == at::kByte && std::isfinite(res_scale) && res_scale > 0),
              op, ": residual must be float32, or uint8 with a finite res_scale > 0; got ",
              res.has_value() ? res->scalar_type() : at::kFloat, " and res_scale ", res_scale);
  const int64_t c = x.size(1);
  TORCH_CHECK(c >= 1, op, ": x has no channels");
  *c4 = (c + 3) / 4 * 4;
  TORCH_CHECK(wq.dim() == 4 && wq.size(0) == 9 && wq.size(1) == *c4 / 4 && wq.size(3) == 4 &&
                  wq.size(2) >= 4 && wq.size(2) % 4 == 0 && wq.scalar_type() == at::kChar &&
                  wq.device().is_cpu(),
              op, ": packed weight must be int8 CPU (9, ", *c4 / 4, ", O, 4) with O a multiple "
              "of 4 for C = ", c, "; got ", wq.sizes(), " ", wq.scalar_type());
  *o = wq.size(2);
  TORCH_CHECK(sc.dim() == 1 && sc.numel() == *o && sc.scalar_type() == at::kFloat &&
                  sc.device().is_cpu(),
              op, ": scale must be float32 CPU with ", *o, " values, got ", sc.sizes());
  TORCH_CHECK(std::isfinite(inv_sx) && inv_sx > 0, op,
              ": the input's inverse scale must be finite and > 0, got ", inv_sx);
}

// The residual check of both int8 ops: (n, o, h, wd), float32 or uint8, channels-last.
at::Tensor q_residual(const char* op, const c10::optional<at::Tensor>& res_in,
                      at::IntArrayRef shape) {
  if (!res_in.has_value()) return at::Tensor();
  TORCH_CHECK(res_in->sizes() == shape && res_in->device().is_cpu(), op,
              ": residual must be a CPU tensor of shape ", shape, ", got ", res_in->sizes());
  return res_in->contiguous(at::MemoryFormat::ChannelsLast);
}

// The output map: uint8 on the next layer's grid when out_inv > 0, else float32.
at::Tensor q_output(const at::Tensor& x, at::IntArrayRef shape, double out_inv) {
  return at::empty(shape, x.options()
                              .dtype(out_inv > 0 ? at::kByte : at::kFloat)
                              .memory_format(at::MemoryFormat::ChannelsLast));
}

#ifdef __AVX512F__
// One image's padded u8 rows first..last, from x's float32 or uint8 data.
void pad_image_u8(uint8_t* pad, const at::Tensor& x, int64_t img, int64_t first, int64_t last,
                  int64_t c4, float inv) {
  const int64_t c = x.size(1), h = x.size(2), wd = x.size(3), off = img * h * wd * c;
  if (x.scalar_type() == at::kByte)
    pad_rows_u8(pad, x.data_ptr<uint8_t>() + off, first, last, h, wd, c, c4, inv);
  else
    pad_rows_u8(pad, x.data_ptr<float>() + off, first, last, h, wd, c, c4, inv);
}
#endif

at::Tensor conv3x3_u8s8_nhwc(const at::Tensor& x_in, const at::Tensor& wq_in,
                             const at::Tensor& sc_in, const at::Tensor& b_in,
                             const c10::optional<at::Tensor>& res_in, bool relu, double inv_sx,
                             int64_t stride, double out_inv, double res_scale) {
#ifndef __AVX512F__
  TORCH_CHECK(false, "conv3x3_u8s8_nhwc: this build has no AVX-512 (use the fp32 layer)");
#else
  const char* op = "conv3x3_u8s8_nhwc";
  int64_t c4 = 0, o = 0;
  check_q(op, x_in, wq_in, sc_in, inv_sx, relu, out_inv, res_scale, res_in, &c4, &o);
  TORCH_CHECK(o % 16 == 0, op, ": O must be a multiple of 16, got ", o);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  const int64_t n = x_in.size(0), hi = x_in.size(2), wi = x_in.size(3);
  const int64_t h = (hi - 1) / stride + 1, wd = (wi - 1) / stride + 1;  // padding 1
  TORCH_CHECK(b_in.dim() == 1 && b_in.numel() == o && b_in.scalar_type() == at::kFloat &&
                  b_in.device().is_cpu(),
              op, ": bias must be float32 CPU with ", o, " values");
  const std::vector<int64_t> shape{n, o, h, wd};
  const at::Tensor res = q_residual(op, res_in, shape);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast), wq = wq_in.contiguous();
  const at::Tensor sc = sc_in.contiguous(), b = b_in.contiguous();
  at::Tensor y = q_output(x, shape, out_inv);
  if (y.numel() == 0) return y;
  const Out out = out_of(y, res, relu, out_inv, res_scale);
  const int rs = static_cast<int>((wi + 2) * c4);
  const float inv = static_cast<float>(inv_sx);
  at::parallel_for(0, n * h, std::max<int64_t>(1, h / 4), [&](int64_t r0, int64_t r1) {
    thread_local std::vector<uint8_t> pad;
    if (pad.size() < static_cast<size_t>(hi + 2) * rs) pad.resize(static_cast<size_t>(hi + 2) * rs);
    for (int64_t r = r0; r < r1;) {
      const int64_t img = r / h, h0 = r % h, h1 = std::min<int64_t>(h, h0 + (r1 - r));
      pad_image_u8(pad.data(), x, img, stride * h0, stride * (h1 - 1) + 2, c4, inv);
      for (int64_t hh = h0; hh < h1; ++hh) {
        const RowQ rw{pad.data() + stride * hh * rs, rs, static_cast<int>(c4), static_cast<int>(o),
                      static_cast<int>(wd), wq.data_ptr<int8_t>(), sc.data_ptr<float>(),
                      b.data_ptr<float>(), out.at(((img * h) + hh) * wd * o)};
        if (stride == 2) row_q<2>(rw);
        else row_q<1>(rw);
      }
      r += h1 - h0;
    }
  });
  return y;
#endif
}

// ghost3x3_nhwc with the primary convolution in int8 (the cheap op and epilogue fp32, on the
// primary's dequantized output). sp: the primary's per-channel s_x * s_w.
at::Tensor ghost3x3_u8s8_nhwc(const at::Tensor& x_in, const at::Tensor& wq_in,
                              const at::Tensor& sp_in, const at::Tensor& bp_in,
                              const at::Tensor& s1_in, const at::Tensor& b1_in,
                              const at::Tensor& wd_in, const at::Tensor& b2_in,
                              const c10::optional<at::Tensor>& res_in, bool relu,
                              double inv_sx, int64_t stride, double out_inv, double res_scale) {
#ifndef __AVX512F__
  TORCH_CHECK(false, "ghost3x3_u8s8_nhwc: this build has no AVX-512 (use the fp32 layer)");
#else
  const char* op = "ghost3x3_u8s8_nhwc";
  int64_t c4 = 0, m = 0;
  check_q(op, x_in, wq_in, sp_in, inv_sx, relu, out_inv, res_scale, res_in, &c4, &m);
  const int64_t n = x_in.size(0), hi = x_in.size(2), wi = x_in.size(3);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  const int64_t h = (hi - 1) / stride + 1, wd = (wi - 1) / stride + 1;  // padding 1
  for (const at::Tensor* v : {&bp_in, &s1_in, &b1_in, &b2_in})
    TORCH_CHECK(v->dim() == 1 && v->numel() == m && v->scalar_type() == at::kFloat &&
                    v->device().is_cpu(),
                op, ": bias and scale vectors must be float32 CPU with ", m, " values, got ",
                v->sizes());
  TORCH_CHECK(wd_in.dim() == 2 && wd_in.size(0) == 9 && wd_in.size(1) == m &&
                  wd_in.scalar_type() == at::kFloat && wd_in.device().is_cpu(),
              op, ": cheap weight must be float32 CPU (9, ", m, "), got ", wd_in.sizes());
  const std::vector<int64_t> shape{n, 2 * m, h, wd};
  const at::Tensor res = q_residual(op, res_in, shape);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast), wq = wq_in.contiguous();
  const at::Tensor sp = sp_in.contiguous(), bp = bp_in.contiguous(), s1 = s1_in.contiguous();
  const at::Tensor b1 = b1_in.contiguous(), wdw = wd_in.contiguous(), b2 = b2_in.contiguous();
  at::Tensor y = q_output(x, shape, out_inv);
  if (y.numel() == 0) return y;
  const int rs = static_cast<int>((wi + 2) * c4);
  const float inv = static_cast<float>(inv_sx);
  const int8_t* wqp = wq.data_ptr<int8_t>();
  const float* spp = sp.data_ptr<float>();
  const float* bpp = bp.data_ptr<float>();
  const std::vector<int8_t> w4 =
      m % 8 == 4 && c4 % 16 == 0 ? quad_weights_q(wqp, c4, m, m - 4) : std::vector<int8_t>();
  ghost_bands(
      n, h, wd, m, stride, s1.data_ptr<float>(), b1.data_ptr<float>(), wdw.data_ptr<float>(),
      b2.data_ptr<float>(), out_of(y, res, relu, out_inv, res_scale),
      [&](int64_t img, int64_t first, int64_t last) {
        thread_local std::vector<uint8_t> pad;
        if (pad.size() < static_cast<size_t>(hi + 2) * rs) pad.resize((hi + 2) * rs);
        pad_image_u8(pad.data(), x, img, first, last, c4, inv);
        u8_pad() = pad.data();
      },
      [&](int64_t r, float* o) {
        const RowQ rw{u8_pad() + stride * r * rs, rs, static_cast<int>(c4), static_cast<int>(m),
                      static_cast<int>(wd), wqp, spp, bpp, Out{o},
                      w4.empty() ? nullptr : w4.data()};
        if (stride == 2) row_q<2>(rw);
        else row_q<1>(rw);
      });
  return y;
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leanvision, m) {
  m.def("conv3x3_isa() -> str", &conv3x3_isa);
  m.def("conv3x3_nhwc(Tensor x, Tensor w_packed, Tensor bias, Tensor? residual, bool relu, "
        "int stride=1) -> Tensor");
  m.impl("conv3x3_nhwc", c10::DispatchKey::CPU, &conv3x3_nhwc);
  m.def("ghost3x3_nhwc(Tensor x, Tensor w_primary, Tensor b_primary, Tensor scale1, "
        "Tensor bias1, Tensor w_cheap, Tensor bias2, Tensor? residual, bool relu, int stride=1) "
        "-> Tensor");
  m.impl("ghost3x3_nhwc", c10::DispatchKey::CPU, &ghost3x3_nhwc);
  m.def("conv3x3_vnni() -> bool", &has_vnni);
  m.def("conv3x3_u8s8_nhwc(Tensor x, Tensor w_q, Tensor scale, Tensor bias, Tensor? residual, "
        "bool relu, float inv_sx, int stride=1, float out_inv=0., float res_scale=0.) -> Tensor");
  m.impl("conv3x3_u8s8_nhwc", c10::DispatchKey::CPU, &conv3x3_u8s8_nhwc);
  m.def("ghost3x3_u8s8_nhwc(Tensor x, Tensor w_q, Tensor scale_primary, Tensor b_primary, "
        "Tensor scale1, Tensor bias1, Tensor w_cheap, Tensor bias2, Tensor? residual, bool relu, "
        "float inv_sx, int stride=1, float out_inv=0., float res_scale=0.) -> Tensor");
  m.impl("ghost3x3_u8s8_nhwc", c10::DispatchKey::CPU, &ghost3x3_u8s8_nhwc);
}
