// Bit-packed binary convolution and linear layers: XNOR-popcount inference for 1-bit weights
// and 1-bit activations (XNOR-Net, Rastegari et al., ECCV 2016).
//
// A value t is the bit (t < 0): +1 is 0, -1 is 1 (0 counts as +1, as in training). For
// C channels in one word group, sum_c a_c * w_c = C - 2 * popcount(a XOR w) over the used
// bits; unused bits are 0 in both operands. Zero padding contributes 0 in the float layer,
// so taps outside the input are skipped and only valid taps count.
//
// Layouts: activations packed per pixel, (N, H, W, CW) uint64 with CW = ceil(C / 64);
// conv weights (k, k, CW, Op) uint64 with Op = O rounded up to 8 (output channel fastest,
// so 8 of them fill one 512-bit vector); linear weights (CW, Op); grouped conv weights
// (O / groups, kh, kw, CW) bit-planes (binary_gconv2d, below: word operations in every build).
//
// Paths: a build for AVX-512 (LEANVISION_ISA_AVX512, see leanvision/kernels/__init__.py)
// carries a VPOPCNTDQ vector path, taken at run time where the CPU has that extension; every
// build (AVX2, no ISA flags, other architectures) has the scalar __builtin_popcountll path,
// which computes the same integers. binary_isa() names the path this process takes.
//
// Every op checks its arguments (shapes, dtypes, device, stride >= 1, ...) before any
// arithmetic; the packed layouts lose the channel count, so the callers pass it and the ops
// check it against the word counts.
// ATen's per-operator headers, not <ATen/ATen.h>: about a quarter less compile time per build
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

// The vector path exists only in AVX-512 builds on x86-64.
#if defined(__x86_64__) && defined(LEANVISION_ISA_AVX512)
#define LV_BINARY_VECTOR 1
#endif

bool has_vpopcnt() {
#if defined(LV_BINARY_VECTOR)
  static const bool ok = __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vpopcntdq");
  return ok;
#else
  return false;
#endif
}

std::string binary_isa() { return has_vpopcnt() ? "avx512-vpopcntdq" : "scalar"; }

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

// bias: absent, or float32 CPU with one value per output
void check_bias(const c10::optional<at::Tensor>& bias, int64_t o, const char* op) {
  if (!bias.has_value()) return;
  check_cpu(*bias, op, "bias");
  TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->numel() == o, op,
              ": bias must be a float32 vector of ", o, " values (one per output), got ",
              bias->sizes(), " ", bias->scalar_type());
}

void check_scale(const at::Tensor& scale, int64_t o, const char* op) {
  check_cpu(scale, op, "scale");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.numel() == o, op,
              ": scale must be a float32 vector of ", o, " values (one per output), got ",
              scale.sizes(), " ", scale.scalar_type());
}

// The contiguous operands and the channels-last float output of a packed conv, as pointers.
struct PackedConvIO {
  at::Tensor xp, wp, sc, bias_t, y;
  const uint64_t* x;
  const uint64_t* w;
  const float* scale;
  const float* bias;
  float* out;
  PackedConvIO(const at::Tensor& xp_in, const at::Tensor& wp_in, const at::Tensor& scale_in,
               const c10::optional<at::Tensor>& bias_in, at::IntArrayRef out_shape)
      : xp(xp_in.contiguous()), wp(wp_in.contiguous()), sc(scale_in.contiguous()),
        bias_t(bias_in.has_value() ? bias_in->contiguous() : at::Tensor()),
        y(at::empty(out_shape, at::TensorOptions().dtype(at::kFloat).memory_format(
                                   at::MemoryFormat::ChannelsLast))),
        x(reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>())),
        w(reinterpret_cast<const uint64_t*>(wp.data_ptr<int64_t>())),
        scale(sc.data_ptr<float>()),
        bias(bias_t.defined() ? bias_t.data_ptr<float>() : nullptr),
        out(y.data_ptr<float>()) {}
};

// Calls f(tap, pixel) for every tap (ky * kw + kx) of output (oy, ox) of image img that falls
// inside the (h, wd) input, pixel being that input pixel's index; returns how many did.
template <typename F>
int64_t for_valid_taps(int64_t img, int64_t oy, int64_t ox, int64_t h, int64_t wd, int64_t kh,
                       int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, F&& f) {
  int64_t valid = 0;
  for (int64_t ky = 0; ky < kh; ++ky) {
    const int64_t iy = oy * sh + ky - ph;
    if (iy < 0 || iy >= h) continue;
    for (int64_t kx = 0; kx < kw; ++kx) {
      const int64_t ix = ox * sw + kx - pw;
      if (ix < 0 || ix >= wd) continue;
      ++valid;
      f(ky * kw + kx, (img * h + iy) * wd + ix);
    }
  }
  return valid;
}

// acc[o] += popcount(x[w] ^ wt[w][o]) for o < op (multiple of 8), w < cw.
void popxor_scalar(const uint64_t* x, const uint64_t* wt, int64_t cw, int64_t op, int64_t* acc) {
  for (int64_t w = 0; w < cw; ++w) {
    const uint64_t xv = x[w];
    const uint64_t* row = wt + w * op;
    for (int64_t o = 0; o < op; ++o) acc[o] += __builtin_popcountll(xv ^ row[o]);
  }
}

#if defined(LV_BINARY_VECTOR)
__attribute__((target("avx512f,avx512vpopcntdq"))) void popxor_avx512(
    const uint64_t* x, const uint64_t* wt, int64_t cw, int64_t op, int64_t* acc) {
  for (int64_t o0 = 0; o0 < op; o0 += 64) {
    const int nv = static_cast<int>(std::min<int64_t>(8, (op - o0) / 8));
    __m512i a[8];
    for (int v = 0; v < nv; ++v) a[v] = _mm512_loadu_si512(acc + o0 + 8 * v);
    for (int64_t w = 0; w < cw; ++w) {
      const __m512i xv = _mm512_set1_epi64(static_cast<long long>(x[w]));
      const uint64_t* row = wt + w * op + o0;
      for (int v = 0; v < nv; ++v) {
        const __m512i wv = _mm512_loadu_si512(row + 8 * v);
        a[v] = _mm512_add_epi64(a[v], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv)));
      }
    }
    for (int v = 0; v < nv; ++v) _mm512_storeu_si512(acc + o0 + 8 * v, a[v]);
  }
}
#endif

#if defined(LV_BINARY_VECTOR)
// P output pixels x (up to) 64 output channels of one output row, all taps valid for all P
// pixels (interior) when `interior`, else one pixel with per-tap bounds checks (P must be 1).
// The epilogue's 256-bit masked loads and stores need AVX512VL, the FMA needs FMA.
template <int P, int NV>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512vpopcntdq,fma"))) void conv_tile_avx512(
    const uint64_t* xd, const uint64_t* wt, int64_t h, int64_t wd, int64_t cw, int64_t op,
    int64_t o0, int64_t img, int64_t oy, int64_t ox, int64_t kernel, int64_t stride,
    int64_t padding, int64_t channels, int64_t o, const float* sd, const float* bd, float* out) {
  __m512i acc[P][NV];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_si512();
  int64_t valid = 0;
  for (int64_t ky = 0; ky < kernel; ++ky) {
    const int64_t iy = oy * stride + ky - padding;
    if (iy < 0 || iy >= h) continue;
    for (int64_t kx = 0; kx < kernel; ++kx) {
      const int64_t ix0 = ox * stride + kx - padding;
      if (P == 1 && (ix0 < 0 || ix0 >= wd)) continue;
      ++valid;
      const uint64_t* xrow = xd + ((img * h + iy) * wd + ix0) * cw;
      const uint64_t* wrow = wt + (ky * kernel + kx) * cw * op + o0;
      for (int64_t w = 0; w < cw; ++w) {
        __m512i xv[P];
#pragma GCC unroll 4
        for (int p = 0; p < P; ++p)
          xv[p] = _mm512_set1_epi64(static_cast<long long>(xrow[p * stride * cw + w]));
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          const __m512i wv = _mm512_loadu_si512(wrow + w * op + 8 * v);
#pragma GCC unroll 4
          for (int p = 0; p < P; ++p)
            acc[p][v] = _mm512_add_epi64(acc[p][v], _mm512_popcnt_epi64(_mm512_xor_si512(xv[p], wv)));
        }
      }
    }
  }
  const __m512i full = _mm512_set1_epi64(valid * channels);
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const int64_t q0 = o0 + 8 * v;
    const int64_t left = std::min<int64_t>(8, o - q0);
    if (left <= 0) break;
    const __mmask8 m = static_cast<__mmask8>((1u << left) - 1);
    const __m256 sc = _mm256_maskz_loadu_ps(m, sd + q0);
    const __m256 bi = bd ? _mm256_maskz_loadu_ps(m, bd + q0) : _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const __m512i dot = _mm512_sub_epi64(full, _mm512_slli_epi64(acc[p][v], 1));
      const __m256 f = _mm256_fmadd_ps(_mm512_cvtepi64_ps(dot), sc, bi);
      _mm256_mask_storeu_ps(out + p * o + q0, m, f);
    }
  }
}
#endif

inline void popxor(const uint64_t* x, const uint64_t* wt, int64_t cw, int64_t op, int64_t* acc,
                   bool vec) {
#if defined(LV_BINARY_VECTOR)
  if (vec) return popxor_avx512(x, wt, cw, op, acc);
#endif
  popxor_scalar(x, wt, cw, op, acc);
}

at::Tensor binary_pack(const at::Tensor& x_in, int64_t channels) {
  check_cpu(x_in, "binary_pack", "x");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && (x_in.dim() == 4 || x_in.dim() == 2),
              "binary_pack: x must be a float32 (N, C, H, W) or (N, C) tensor, got ",
              x_in.sizes(), " ", x_in.scalar_type());
  TORCH_CHECK(channels >= 1 && x_in.size(1) == channels, "binary_pack: expected ", channels,
              " channels (dim 1), got x of shape ", x_in.sizes());
  const bool conv = x_in.dim() == 4;
  const at::Tensor x = conv ? x_in.contiguous(at::MemoryFormat::ChannelsLast) : x_in.contiguous();
  const int64_t c = x.size(1), cw = (c + 63) / 64;
  const int64_t pixels = conv ? x.size(0) * x.size(2) * x.size(3) : x.size(0);
  at::Tensor out = conv ? at::empty({x.size(0), x.size(2), x.size(3), cw}, at::kLong)
                        : at::empty({x.size(0), cw}, at::kLong);
  const float* xd = x.data_ptr<float>();
  auto* od = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, pixels, 256, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* src = xd + p * c;
      for (int64_t w = 0; w < cw; ++w) {
        uint64_t bits = 0;
        const int64_t n = std::min<int64_t>(64, c - 64 * w);
        for (int64_t j = 0; j < n; ++j) bits |= static_cast<uint64_t>(src[64 * w + j] < 0.f) << j;
        od[p * cw + w] = bits;
      }
    }
  });
  return out;
}

at::Tensor binary_conv2d(const at::Tensor& xp_in, const at::Tensor& wp_in, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias_in, int64_t channels,
                         int64_t out_channels, int64_t kernel, int64_t stride, int64_t padding) {
  const char* fn = "binary_conv2d";
  TORCH_CHECK(channels >= 1 && out_channels >= 1, fn, ": channels and out_channels must be >= 1, got ",
              channels, " and ", out_channels);
  TORCH_CHECK(kernel >= 1 && stride >= 1 && padding >= 0, fn,
              ": kernel and stride must be >= 1 and padding >= 0, got kernel ", kernel,
              ", stride ", stride, ", padding ", padding);
  check_cpu(xp_in, fn, "packed input");
  check_cpu(wp_in, fn, "packed weight");
  TORCH_CHECK(xp_in.dim() == 4 && xp_in.scalar_type() == at::kLong, fn,
              ": packed input must be int64 (N, H, W, CW), got ", xp_in.sizes(), " ",
              xp_in.scalar_type());
  const int64_t n = xp_in.size(0), h = xp_in.size(1), wd = xp_in.size(2), cw = xp_in.size(3);
  const int64_t o = out_channels, op = (o + 7) / 8 * 8;
  TORCH_CHECK(cw == (channels + 63) / 64, fn, ": ", channels, " channels need ",
              (channels + 63) / 64, " words per pixel, the packed input has ", cw);
  TORCH_CHECK(wp_in.dim() == 4 && wp_in.scalar_type() == at::kLong && wp_in.size(0) == kernel &&
                  wp_in.size(1) == kernel && wp_in.size(2) == cw && wp_in.size(3) == op,
              fn, ": packed weight must be int64 (k, k, CW, O rounded up to 8) = (", kernel, ", ",
              kernel, ", ", cw, ", ", op, "), got ", wp_in.sizes(), " ", wp_in.scalar_type());
  check_scale(scale, o, fn);
  check_bias(bias_in, o, fn);
  TORCH_CHECK(h + 2 * padding >= kernel && wd + 2 * padding >= kernel, fn, ": the input (", h,
              " x ", wd, ") padded by ", padding, " is smaller than the kernel ", kernel);
  const int64_t ho = (h + 2 * padding - kernel) / stride + 1;
  const int64_t wo = (wd + 2 * padding - kernel) / stride + 1;
  if (n == 0) return at::empty({0, o, ho, wo}, at::kFloat);
  const PackedConvIO io(xp_in, wp_in, scale, bias_in, {n, o, ho, wo});
  const uint64_t* xd = io.x;
  const uint64_t* wdp = io.w;
  const float *sd = io.scale, *bd = io.bias;
  float* yd = io.out;
  at::Tensor y = io.y;
  const bool vec = has_vpopcnt();
  at::parallel_for(0, n * ho, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> acc(static_cast<size_t>(op));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / ho, oy = r % ho;
#if defined(LV_BINARY_VECTOR)
      if (vec) {
        // output columns whose taps all fall inside the input: tiles of 3; the rest one by one
        const int64_t lo = std::min<int64_t>(wo, (padding + stride - 1) / stride);
        const int64_t hi = std::max<int64_t>(lo, std::min<int64_t>(wo, (wd + padding - kernel) / stride + 1));
        for (int64_t o0 = 0; o0 < op; o0 += 64) {
          const int nv = static_cast<int>(std::min<int64_t>(8, (op - o0) / 8));
          auto tile = [&](auto p_tag, int64_t ox) {
            constexpr int P = decltype(p_tag)::value;
            float* out = yd + (r * wo + ox) * o;
            switch (nv) {
#define LV_NV(K) case K: conv_tile_avx512<P, K>(xd, wdp, h, wd, cw, op, o0, img, oy, ox, kernel, \
                                                stride, padding, channels, o, sd, bd, out); break;
              LV_NV(1) LV_NV(2) LV_NV(3) LV_NV(4) LV_NV(5) LV_NV(6) LV_NV(7) LV_NV(8)
#undef LV_NV
            }
          };
          using one_t = std::integral_constant<int, 1>;
          using three_t = std::integral_constant<int, 3>;
          int64_t ox = 0;
          for (; ox < lo; ++ox) tile(one_t{}, ox);
          for (; ox + 3 <= hi; ox += 3) tile(three_t{}, ox);
          for (; ox < wo; ++ox) tile(one_t{}, ox);
        }
        continue;
      }
#endif
      for (int64_t ox = 0; ox < wo; ++ox) {
        std::fill(acc.begin(), acc.end(), 0);
        const int64_t valid = for_valid_taps(
            img, oy, ox, h, wd, kernel, kernel, stride, stride, padding, padding,
            [&](int64_t tap, int64_t px) {
              popxor(xd + px * cw, wdp + tap * cw * op, cw, op, acc.data(), vec);
            });
        float* out = yd + (r * wo + ox) * o;
        const int64_t full = valid * channels;
        for (int64_t q = 0; q < o; ++q)
          out[q] = sd[q] * static_cast<float>(full - 2 * acc[q]) + (bd ? bd[q] : 0.f);
      }
    }
  });
  return y;
}

// Grouped binary convolution (groups > 1, e.g. depthwise, or any rectangular kernel), on the
// same packed input. Output o = g * og + m (g its group, og = O / groups) sums the cg = C /
// groups input channels g * cg + j. Weight plane m (og planes, (og, kh, kw, CW)) holds at
// bit c the sign of w[g(c) * og + m, c - g(c) * cg, ky, kx]: one XOR of a packed pixel with a
// plane gives every input channel's product bit for its group's m-th output. The bits are
// counted per input channel over the valid taps in bit-sliced counters (a ripple-carry add of
// one bit-plane per tap: word operations only, the same on every CPU), then each output is
// scale * (cg * valid - 2 * sum of its group's counts) + bias.
void count_planes(const uint64_t* planes, int64_t k_bits, int64_t n, int32_t* counts) {
  for (int64_t j = 0; j < n; ++j) {
    int32_t c = 0;
    for (int64_t k = 0; k < k_bits; ++k) c |= static_cast<int32_t>((planes[k] >> j) & 1u) << k;
    counts[j] = c;
  }
}

#if defined(LV_BINARY_VECTOR)
bool has_avx512bw() {
  static const bool ok = has_vpopcnt() && __builtin_cpu_supports("avx512bw");
  return ok;
}

// The AVX-512 path of binary_gconv2d for at most 255 taps: per output pixel and weight plane,
// 64 input channels' product bits per tap become 64 byte counters (a mask-to-bytes and a
// subtract per word), not bit-sliced ones; then each output sums its group's cg counters. For
// og == 1 and cg <= 2 (BiMLP's depthwise and pair-wise token FCs) the sums and the epilogue
// run 16 outputs per vector. Same integers as the word path.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) void gconv_row_avx512(
    const uint64_t* xd, const uint64_t* wdp, int64_t img, int64_t oy, int64_t h, int64_t wd,
    int64_t wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
    int64_t cw, int64_t channels, int64_t groups, int64_t og, int64_t cg, const float* sd,
    const float* bd, float* out_row, uint8_t* counts) {
  const int64_t o = groups * og;
  for (int64_t ox = 0; ox < wo; ++ox) {
    float* out = out_row + ox * o;
    for (int64_t m = 0; m < og; ++m) {
      int64_t valid = 0;
      for (int64_t w = 0; w < cw; ++w) {
        __m512i cnt = _mm512_setzero_si512();
        valid = for_valid_taps(img, oy, ox, h, wd, kh, kw, sh, sw, ph, pw,
                               [&](int64_t tap, int64_t px) {
                                 const uint64_t bits = xd[px * cw + w] ^ wdp[(m * kh * kw + tap) * cw + w];
                                 cnt = _mm512_sub_epi8(cnt, _mm512_movm_epi8(bits));  // +1 per set bit
                               });
        _mm512_storeu_si512(counts + 64 * w, cnt);
      }
      const float full = static_cast<float>(valid * cg);
      if (og == 1 && cg <= 2) {
        const __m512 vfull = _mm512_set1_ps(full), two = _mm512_set1_ps(2.f);
        for (int64_t g0 = 0; g0 < groups; g0 += 16) {
          const int64_t left = std::min<int64_t>(16, groups - g0);
          const __mmask16 k = static_cast<__mmask16>((1u << left) - 1);
          __m512i total;
          if (cg == 1) {
            total = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, counts + g0));
          } else {  // adjacent byte pairs: 16 groups from 32 counters
            const __m256i pairs = _mm256_maddubs_epi16(
                _mm256_maskz_loadu_epi8(static_cast<__mmask32>((uint64_t{1} << (2 * left)) - 1),
                                        counts + 2 * g0),
                _mm256_set1_epi8(1));
            total = _mm512_cvtepi16_epi32(pairs);
          }
          const __m512 dot = _mm512_fnmadd_ps(two, _mm512_cvtepi32_ps(total), vfull);
          const __m512 sc = _mm512_maskz_loadu_ps(k, sd + g0);
          const __m512 bi = bd ? _mm512_maskz_loadu_ps(k, bd + g0) : _mm512_setzero_ps();
          _mm512_mask_storeu_ps(out + g0, k, _mm512_fmadd_ps(dot, sc, bi));
        }
        continue;
      }
      for (int64_t g = 0; g < groups; ++g) {
        int64_t total = 0;
        for (int64_t j = 0; j < cg; ++j) total += counts[g * cg + j];
        const int64_t q = g * og + m;
        out[q] = sd[q] * (full - 2.f * static_cast<float>(total)) + (bd ? bd[q] : 0.f);
      }
    }
  }
}
#endif

at::Tensor binary_gconv2d(const at::Tensor& xp_in, const at::Tensor& wp_in, const at::Tensor& scale,
                          const c10::optional<at::Tensor>& bias_in, int64_t channels,
                          int64_t out_channels, int64_t groups, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  const char* fn = "binary_gconv2d";
  TORCH_CHECK(channels >= 1 && out_channels >= 1 && groups >= 1, fn,
              ": channels, out_channels and groups must be >= 1, got ", channels, ", ",
              out_channels, ", ", groups);
  TORCH_CHECK(channels % groups == 0 && out_channels % groups == 0, fn, ": groups ", groups,
              " must divide channels ", channels, " and out_channels ", out_channels);
  TORCH_CHECK(kh >= 1 && kw >= 1 && kh * kw <= 65535 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0,
              fn, ": kernel (", kh, ", ", kw, ") and stride (", sh, ", ", sw,
              ") must be >= 1 (at most 65535 taps), padding (", ph, ", ", pw, ") >= 0");
  check_cpu(xp_in, fn, "packed input");
  check_cpu(wp_in, fn, "packed weight");
  TORCH_CHECK(xp_in.dim() == 4 && xp_in.scalar_type() == at::kLong, fn,
              ": packed input must be int64 (N, H, W, CW), got ", xp_in.sizes(), " ",
              xp_in.scalar_type());
  const int64_t n = xp_in.size(0), h = xp_in.size(1), wd = xp_in.size(2), cw = xp_in.size(3);
  const int64_t o = out_channels, og = o / groups, cg = channels / groups;
  TORCH_CHECK(cw == (channels + 63) / 64, fn, ": ", channels, " channels need ",
              (channels + 63) / 64, " words per pixel, the packed input has ", cw);
  TORCH_CHECK(wp_in.dim() == 4 && wp_in.scalar_type() == at::kLong && wp_in.size(0) == og &&
                  wp_in.size(1) == kh && wp_in.size(2) == kw && wp_in.size(3) == cw,
              fn, ": packed weight must be int64 (O / groups, kh, kw, CW) = (", og, ", ", kh, ", ",
              kw, ", ", cw, "), got ", wp_in.sizes(), " ", wp_in.scalar_type());
  check_scale(scale, o, fn);
  check_bias(bias_in, o, fn);
  TORCH_CHECK(h + 2 * ph >= kh && wd + 2 * pw >= kw, fn, ": the input (", h, " x ", wd,
              ") padded by (", ph, ", ", pw, ") is smaller than the kernel (", kh, ", ", kw, ")");
  const int64_t ho = (h + 2 * ph - kh) / sh + 1, wo = (wd + 2 * pw - kw) / sw + 1;
  if (n == 0) return at::empty({0, o, ho, wo}, at::kFloat);
  const PackedConvIO io(xp_in, wp_in, scale, bias_in, {n, o, ho, wo});
  const uint64_t* xd = io.x;
  const uint64_t* wdp = io.w;
  const float *sd = io.scale, *bd = io.bias;
  float* yd = io.out;
  at::Tensor y = io.y;
  int64_t k_bits = 1;
  while ((int64_t{1} << k_bits) <= kh * kw) ++k_bits;  // counters up to kh * kw
#if defined(LV_BINARY_VECTOR)
  if (kh * kw <= 255 && has_avx512bw()) {  // byte counters hold up to 255 taps
    at::parallel_for(0, n * ho, 1, [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> counts(static_cast<size_t>(cw * 64));
      for (int64_t r = r0; r < r1; ++r)
        gconv_row_avx512(xd, wdp, r / ho, r % ho, h, wd, wo, kh, kw, sh, sw, ph, pw, cw, channels,
                         groups, og, cg, sd, bd, yd + r * wo * o, counts.data());
    });
    return y;
  }
#endif
  at::parallel_for(0, n * ho, 1, [&](int64_t r0, int64_t r1) {
    std::vector<uint64_t> planes(static_cast<size_t>(cw * k_bits));
    std::vector<int32_t> counts(static_cast<size_t>(cw * 64));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / ho, oy = r % ho;
      for (int64_t ox = 0; ox < wo; ++ox) {
        float* out = yd + (r * wo + ox) * o;
        for (int64_t m = 0; m < og; ++m) {
          std::fill(planes.begin(), planes.end(), 0);
          const int64_t valid = for_valid_taps(
              img, oy, ox, h, wd, kh, kw, sh, sw, ph, pw, [&](int64_t tap, int64_t px) {
                const uint64_t* xv = xd + px * cw;
                const uint64_t* wv = wdp + (m * kh * kw + tap) * cw;
                for (int64_t w = 0; w < cw; ++w) {
                  uint64_t carry = xv[w] ^ wv[w];  // ripple-carry add into the counters
                  uint64_t* pl = planes.data() + w * k_bits;
                  for (int64_t k = 0; k < k_bits && carry; ++k) {
                    const uint64_t t = pl[k] & carry;
                    pl[k] ^= carry;
                    carry = t;
                  }
                }
              });
          for (int64_t w = 0; w < cw; ++w)
            count_planes(planes.data() + w * k_bits, k_bits, std::min<int64_t>(64, channels - 64 * w),
                         counts.data() + 64 * w);
          const int64_t full = valid * cg;
          for (int64_t g = 0; g < groups; ++g) {
            int64_t total = 0;
            for (int64_t j = 0; j < cg; ++j) total += counts[g * cg + j];
            const int64_t q = g * og + m;
            out[q] = sd[q] * static_cast<float>(full - 2 * total) + (bd ? bd[q] : 0.f);
          }
        }
      }
    }
  });
  return y;
}

at::Tensor binary_linear(const at::Tensor& xp_in, const at::Tensor& wp_in, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias_in, int64_t features,
                         int64_t out_features) {
  const char* fn = "binary_linear";
  TORCH_CHECK(features >= 1 && out_features >= 1, fn,
              ": features and out_features must be >= 1, got ", features, " and ", out_features);
  check_cpu(xp_in, fn, "packed input");
  check_cpu(wp_in, fn, "packed weight");
  TORCH_CHECK(xp_in.dim() == 2 && xp_in.scalar_type() == at::kLong, fn,
              ": packed input must be int64 (N, CW), got ", xp_in.sizes(), " ", xp_in.scalar_type());
  const int64_t n = xp_in.size(0), cw = xp_in.size(1), o = out_features, op = (o + 7) / 8 * 8;
  TORCH_CHECK(cw == (features + 63) / 64, fn, ": ", features, " features need ",
              (features + 63) / 64, " words per row, the packed input has ", cw);
  TORCH_CHECK(wp_in.dim() == 2 && wp_in.size(0) == cw && wp_in.size(1) == op &&
                  wp_in.scalar_type() == at::kLong,
              fn, ": packed weight must be int64 (CW, O rounded up to 8) = (", cw, ", ", op,
              "), got ", wp_in.sizes(), " ", wp_in.scalar_type());
  check_scale(scale, o, fn);
  check_bias(bias_in, o, fn);
  at::Tensor bias;
  if (bias_in.has_value()) bias = bias_in->contiguous();
  const at::Tensor xp = xp_in.contiguous(), wp = wp_in.contiguous(), sc = scale.contiguous();
  at::Tensor y = at::empty({n, o}, at::kFloat);
  const auto* xd = reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>());
  const auto* wdp = reinterpret_cast<const uint64_t*>(wp.data_ptr<int64_t>());
  const float* sd = sc.data_ptr<float>();
  const float* bd = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  const bool vec = has_vpopcnt();
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    std::vector<int64_t> acc(static_cast<size_t>(op));
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(acc.begin(), acc.end(), 0);
      popxor(xd + i * cw, wdp, cw, op, acc.data(), vec);
      for (int64_t q = 0; q < o; ++q)
        yd[i * o + q] = sd[q] * static_cast<float>(features - 2 * acc[q]) + (bd ? bd[q] : 0.f);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leanvision, m) {
  m.def("binary_isa() -> str", &binary_isa);
  m.def("binary_pack(Tensor x, int channels) -> Tensor");
  m.def("binary_conv2d(Tensor xp, Tensor wp, Tensor scale, Tensor? bias, int channels, "
        "int out_channels, int kernel, int stride, int padding) -> Tensor");
  m.def("binary_gconv2d(Tensor xp, Tensor wp, Tensor scale, Tensor? bias, int channels, "
        "int out_channels, int groups, int kh, int kw, int sh, int sw, int ph, int pw) -> Tensor");
  m.def("binary_linear(Tensor xp, Tensor wp, Tensor scale, Tensor? bias, int features, "
        "int out_features) -> Tensor");
  m.impl("binary_pack", c10::DispatchKey::CPU, &binary_pack);
  m.impl("binary_conv2d", c10::DispatchKey::CPU, &binary_conv2d);
  m.impl("binary_gconv2d", c10::DispatchKey::CPU, &binary_gconv2d);
  m.impl("binary_linear", c10::DispatchKey::CPU, &binary_linear);
}
