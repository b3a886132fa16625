// Integer AdderNet inference ("AdderNet and its Minimalist Hardware Design", Wang et al. 2021):
// with one scale s shared by a layer's inputs and weights, |x - w| ~= s |round(x/s) - round(w/s)|,
// so the layer is y = -s * sum |xq - wq| over int8 values, an integer sum of absolute
// differences. x86 has that instruction: VPSADBW sums |a - b| over 8 unsigned bytes into a
// 64-bit lane, 64 byte pairs per instruction (AVX-512BW). Values are stored offset by 128
// (uint8 = int8 + 128), which leaves every difference unchanged.
//
// Layout: xq (N, C, H, W) uint8 in channels-last memory (already offset); wq (O, Kp) uint8
// with the reduction ordered [ky][kx][c] and padded with 128 up to Kp (a multiple of
// 64); the input's padding and the K padding are 128 too, so they add |128 - 128| = 0 where
// both are padding and |wq| where only the input is (as zero padding does in float).
// Each thread builds the im2col rows of a few output pixels (uint8, P x Kp) and runs a
// register-blocked SAD "GEMM" against all output channels: 4 pixels x 4 channels per block.
//
// Paths: builds with AVX-512BW (the AVX512 flags) run the VPSADBW / VPMINSW blocks; every
// other build (AVX2, no ISA flags, ARM) runs a portable integer loop that computes the same
// integers (plain C++ the compiler vectorises for its target). adder_int8_isa() names it.
// The layouts pad K, so the callers pass the true channel count and the ops check it; every
// argument is checked before any arithmetic.
// ATen's per-operator headers, not <ATen/ATen.h>: about a quarter less compile time per build
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef __AVX512BW__
#include <immintrin.h>
#endif

namespace {

#ifdef __AVX512BW__
inline int64_t hsum(__m512i v) { return _mm512_reduce_add_epi64(v); }

// out[p * o + q] = -scale * sum_k |a[p][k] - b[q][k]| for P pixels, Q channels (P, Q <= 4).
template <int P, int Q>
inline void sad_block(const uint8_t* a, const uint8_t* b, int64_t kp, float scale, float* out,
                      int64_t ostride, const float* bias) {
  __m512i acc[P][Q];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kp; k += 64) {
    __m512i av[P], bv[Q];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) av[p] = _mm512_loadu_si512(a + p * kp + k);
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) bv[q] = _mm512_loadu_si512(b + q * kp + k);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q)
        acc[p][q] = _mm512_add_epi64(acc[p][q], _mm512_sad_epu8(av[p], bv[q]));
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q)
      out[p * ostride + q] = -scale * static_cast<float>(hsum(acc[p][q])) + (bias ? bias[q] : 0.f);
}

template <int P>
inline void sad_row(const uint8_t* a, const uint8_t* b, int64_t kp, int64_t o, float scale,
                    float* out, int64_t ostride, const float* bias) {
  int64_t q = 0;
  for (; q + 4 <= o; q += 4)
    sad_block<P, 4>(a, b + q * kp, kp, scale, out + q, ostride, bias ? bias + q : nullptr);
  for (; q < o; ++q)
    sad_block<P, 1>(a, b + q * kp, kp, scale, out + q, ostride, bias ? bias + q : nullptr);
}
#endif

#ifndef __AVX512BW__
// Portable blocks: the same integers as the AVX-512 blocks, one pixel x one channel at a time.
// out[p * ostride + q] = -scale * sum_k |a[p][k] - b[q][k]| (uint8, offset by 128).
void sad_rows_portable(const uint8_t* a, int np, const uint8_t* b, int64_t kp, int64_t o,
                       float scale, float* out, int64_t ostride, const float* bias) {
  for (int p = 0; p < np; ++p) {
    const uint8_t* ap = a + p * kp;
    for (int64_t q = 0; q < o; ++q) {
      const uint8_t* bq = b + q * kp;
      int64_t acc = 0;
      for (int64_t k0 = 0; k0 < kp; k0 += 64) {  // int32 partial sums vectorise well
        int32_t part = 0;
        for (int64_t k = k0; k < k0 + 64; ++k)
          part += std::abs(static_cast<int32_t>(ap[k]) - static_cast<int32_t>(bq[k]));
        acc += part;
      }
      out[p * ostride + q] = -scale * static_cast<float>(acc) + (bias ? bias[q] : 0.f);
    }
  }
}

// int16 values, K padded with 0 in both operands: -sum |a - b| (exact in int64).
void l1_rows_portable(const int16_t* a, int np, const int16_t* b, int64_t kp, int64_t o,
                      float scale, float* out, int64_t ostride, const float* bias) {
  for (int p = 0; p < np; ++p) {
    const int16_t* ap = a + p * kp;
    for (int64_t q = 0; q < o; ++q) {
      const int16_t* bq = b + q * kp;
      int64_t acc = 0;
      for (int64_t k0 = 0; k0 < kp; k0 += 32) {  // |a - b| < 2^16: 32 of them fit an int32
        int32_t part = 0;
        for (int64_t k = k0; k < k0 + 32; ++k)
          part += std::abs(static_cast<int32_t>(ap[k]) - static_cast<int32_t>(bq[k]));
        acc += part;
      }
      out[p * ostride + q] = scale * static_cast<float>(-acc) + (bias ? bias[q] : 0.f);
    }
  }
}
#endif

std::string adder_int8_isa() {
#ifdef __AVX512BW__
  return "avx512bw";
#else
  return "scalar";
#endif
}

// The arguments both forwards check, before any arithmetic.
struct Shape {
  int64_t n, c, h, w, o, kp;
};

Shape check_args(const char* op, at::ScalarType dtype, const char* tname, const at::Tensor& xq,
                 const at::Tensor& wq, const c10::optional<at::Tensor>& bias, double scale,
                 int64_t in_channels, int64_t kernel, int64_t stride, int64_t padding,
                 int64_t align) {
  TORCH_CHECK(kernel >= 1 && stride >= 1 && padding >= 0, op,
              ": kernel and stride must be >= 1 and padding >= 0, got kernel ", kernel,
              ", stride ", stride, ", padding ", padding);
  TORCH_CHECK(in_channels >= 1, op, ": in_channels must be >= 1, got ", in_channels);
  TORCH_CHECK(std::isfinite(scale) && scale > 0, op, ": scale must be a finite number > 0, got ",
              scale);
  TORCH_CHECK(xq.device().is_cpu() && wq.device().is_cpu(), op,
              ": xq and wq must be CPU tensors, got ", xq.device(), " and ", wq.device());
  TORCH_CHECK(xq.dim() == 4 && xq.scalar_type() == dtype, op, ": xq must be a 4-D ", tname,
              " tensor (N, C, H, W), got ", xq.sizes(), " ", xq.scalar_type());
  TORCH_CHECK(xq.size(1) == in_channels, op, ": the layer has ", in_channels,
              " input channels, xq has ", xq.size(1), " (shape ", xq.sizes(), ")");
  const int64_t kk = kernel * kernel * in_channels, kp = (kk + align - 1) / align * align;
  TORCH_CHECK(wq.dim() == 2 && wq.scalar_type() == dtype && wq.size(0) >= 1 && wq.size(1) == kp,
              op, ": wq must be ", tname, " (O, k*k*C rounded up to ", align, ") = (O, ", kp,
              ") for k = ", kernel, ", C = ", in_channels, "; got ", wq.sizes(), " ",
              wq.scalar_type());
  const int64_t o = wq.size(0);
  if (bias.has_value()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->scalar_type() == at::kFloat &&
                    bias->dim() == 1 && bias->numel() == o,
                op, ": bias must be a float32 CPU vector of ", o, " values, got ", bias->sizes(),
                " ", bias->scalar_type(), " on ", bias->device());
  }
  const int64_t h = xq.size(2), w = xq.size(3);
  TORCH_CHECK(h + 2 * padding >= kernel && w + 2 * padding >= kernel, op, ": the input (", h,
              " x ", w, ") padded by ", padding, " is smaller than the kernel ", kernel);
  return {xq.size(0), in_channels, h, w, o, kp};
}

// The part both forwards share: the output, and per thread the im2col rows of P = 4 output
// pixels ([ky][kx][c], K padded to kp with `fill`, the input's padding filled with `fill`
// too), handed to `block(cols, np, out)` for all output channels. Arguments checked already.
template <typename T, typename Block>
at::Tensor im2col_forward(const Shape& sh, const at::Tensor& xq_in, int64_t kernel,
                          int64_t stride, int64_t padding, T fill, const Block& block) {
  const int64_t n = sh.n, c = sh.c, h = sh.h, wd = sh.w, o = sh.o, kp = sh.kp;
  const int64_t ho = (h + 2 * padding - kernel) / stride + 1;
  const int64_t wo = (wd + 2 * padding - kernel) / stride + 1;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor xq = xq_in.contiguous(cl);
  at::Tensor y = at::empty({n, o, ho, wo}, at::TensorOptions().dtype(at::kFloat).memory_format(cl));
  if (y.numel() == 0) return y;
  const T* xd = xq.data_ptr<T>();
  float* yd = y.data_ptr<float>();
  at::parallel_for(0, n * ho, std::max<int64_t>(1, ho / 4), [&](int64_t r0, int64_t r1) {
    constexpr int P = 4;
    std::vector<T> cols(static_cast<size_t>(P * kp));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / ho, oh = r % ho;
      const T* xn = xd + img * h * wd * c;
      for (int64_t ow0 = 0; ow0 < wo; ow0 += P) {
        const int np = static_cast<int>(std::min<int64_t>(P, wo - ow0));
        std::fill(cols.begin(), cols.end(), fill);
        for (int p = 0; p < np; ++p) {  // im2col of pixel (oh, ow0 + p)
          T* dst = cols.data() + p * kp;
          for (int64_t ky = 0; ky < kernel; ++ky) {
            const int64_t iy = oh * stride + ky - padding;
            if (iy < 0 || iy >= h) continue;
            for (int64_t kx = 0; kx < kernel; ++kx) {
              const int64_t ix = (ow0 + p) * stride + kx - padding;
              if (ix < 0 || ix >= wd) continue;
              std::memcpy(dst + (ky * kernel + kx) * c, xn + (iy * wd + ix) * c, sizeof(T) * c);
            }
          }
        }
        block(cols.data(), np, yd + (r * wo + ow0) * o);
      }
    }
  });
  return y;
}

const float* bias_ptr(const at::Tensor& bias) {
  return bias.defined() ? bias.data_ptr<float>() : nullptr;
}

at::Tensor adder_int8_forward(const at::Tensor& xq_in, const at::Tensor& wq_in,
                              const c10::optional<at::Tensor>& bias_in, double scale,
                              int64_t in_channels, int64_t kernel, int64_t stride,
                              int64_t padding) {
  const Shape sh = check_args("adder_int8_forward", at::kByte, "uint8 (int8 + 128)", xq_in, wq_in,
                              bias_in, scale, in_channels, kernel, stride, padding, 64);
  const at::Tensor wq = wq_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const uint8_t* w = wq.data_ptr<uint8_t>();
  const float* bd = bias_ptr(bias);
  const int64_t o = sh.o, kp = sh.kp;
  const float sc = static_cast<float>(scale);
  // values are int8 + 128 (uint8), padding 128 = the value 0
  return im2col_forward<uint8_t>(
      sh, xq_in, kernel, stride, padding, uint8_t{128},
      [&](const uint8_t* cols, int np, float* out) {
#ifdef __AVX512BW__
        switch (np) {
          case 4: sad_row<4>(cols, w, kp, o, sc, out, o, bd); break;
          case 3: sad_row<3>(cols, w, kp, o, sc, out, o, bd); break;
          case 2: sad_row<2>(cols, w, kp, o, sc, out, o, bd); break;
          default: sad_row<1>(cols, w, kp, o, sc, out, o, bd); break;
        }
#else
        sad_rows_portable(cols, np, w, kp, o, sc, out, o, bd);
#endif
      });
}

#ifdef __AVX512BW__
// int16: -|a - b| = 2 min(a, b) - a - b, so the sum needs only sum min(x, w) (VPMINSW, then
// VPMADDWD with ones adds neighbouring pairs into int32 lanes) plus the patch sums of x and
// the filter sums of w. Values are signed int16 (no offset); padding is 0 in both operands.
template <int P, int Q>
inline void min_block(const int16_t* a, const int16_t* b, int64_t kp, const int64_t* sx,
                      const int64_t* sw, float scale, float* out, int64_t ostride,
                      const float* bias) {
  __m512i acc[P][Q];
  const __m512i ones = _mm512_set1_epi16(1);
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kp; k += 32) {
    __m512i av[P], bv[Q];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) av[p] = _mm512_loadu_si512(a + p * kp + k);
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) bv[q] = _mm512_loadu_si512(b + q * kp + k);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
      for (int q = 0; q < Q; ++q)
        acc[p][q] = _mm512_add_epi32(acc[p][q],
                                     _mm512_madd_epi16(_mm512_min_epi16(av[p], bv[q]), ones));
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int q = 0; q < Q; ++q) {
      const int64_t mins = _mm512_reduce_add_epi32(acc[p][q]);
      const int64_t neg_l1 = 2 * mins - sx[p] - sw[q];
      out[p * ostride + q] = scale * static_cast<float>(neg_l1) + (bias ? bias[q] : 0.f);
    }
}

template <int P>
inline void min_row(const int16_t* a, const int16_t* b, int64_t kp, int64_t o, const int64_t* sx,
                    const int64_t* sw, float scale, float* out, int64_t ostride,
                    const float* bias) {
  int64_t q = 0;
  for (; q + 4 <= o; q += 4)
    min_block<P, 4>(a, b + q * kp, kp, sx, sw + q, scale, out + q, ostride, bias ? bias + q : nullptr);
  for (; q < o; ++q)
    min_block<P, 1>(a, b + q * kp, kp, sx, sw + q, scale, out + q, ostride, bias ? bias + q : nullptr);
}
#endif

at::Tensor adder_int16_forward(const at::Tensor& xq_in, const at::Tensor& wq_in,
                               const c10::optional<at::Tensor>& bias_in, double scale,
                               int64_t in_channels, int64_t kernel, int64_t stride,
                               int64_t padding) {
  const Shape sh = check_args("adder_int16_forward", at::kShort, "int16", xq_in, wq_in, bias_in,
                              scale, in_channels, kernel, stride, padding, 32);
  const at::Tensor wq = wq_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const int16_t* w = wq.data_ptr<int16_t>();
  const float* bd = bias_ptr(bias);
  const int64_t o = sh.o, kp = sh.kp;
  const float sc = static_cast<float>(scale);
#ifdef __AVX512BW__
  std::vector<int64_t> sw(static_cast<size_t>(o));  // per-filter sums (padding is 0)
  for (int64_t q = 0; q < o; ++q)
    for (int64_t k = 0; k < kp; ++k) sw[q] += w[q * kp + k];
#endif
  return im2col_forward<int16_t>(
      sh, xq_in, kernel, stride, padding, int16_t{0},
      [&](const int16_t* cols, int np, float* out) {
#ifdef __AVX512BW__
        int64_t sx[4];
        for (int p = 0; p < np; ++p) {
          int64_t t = 0;
          for (int64_t k = 0; k < kp; ++k) t += cols[p * kp + k];
          sx[p] = t;
        }
        switch (np) {
          case 4: min_row<4>(cols, w, kp, o, sx, sw.data(), sc, out, o, bd); break;
          case 3: min_row<3>(cols, w, kp, o, sx, sw.data(), sc, out, o, bd); break;
          case 2: min_row<2>(cols, w, kp, o, sx, sw.data(), sc, out, o, bd); break;
          default: min_row<1>(cols, w, kp, o, sx, sw.data(), sc, out, o, bd); break;
        }
#else
        l1_rows_portable(cols, np, w, kp, o, sc, out, o, bd);
#endif
      });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leanvision, m) {
  m.def("adder_int8_isa() -> str", &adder_int8_isa);
  m.def("adder_int8_forward(Tensor xq, Tensor wq, Tensor? bias, float scale, int in_channels, "
        "int kernel, int stride, int padding) -> Tensor");
  m.def("adder_int16_forward(Tensor xq, Tensor wq, Tensor? bias, float scale, int in_channels, "
        "int kernel, int stride, int padding) -> Tensor");
  m.impl("adder_int8_forward", c10::DispatchKey::CPU, &adder_int8_forward);
  m.impl("adder_int16_forward", c10::DispatchKey::CPU, &adder_int16_forward);
}
