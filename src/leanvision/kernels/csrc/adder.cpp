// AdderNet layer kernels (Chen et al., "AdderNet: Do we really need multiplications in deep
// learning?", CVPR 2020), on channels-last (NHWC) fp32 maps, AVX-512.
//
// Forward:  y[p, o] = -sum_{ky,kx,c} |xpad[p*s + k, c] - w[k, c, o]|.
// Written as -|a - b| = 2 min(a, b) - a - b, the sum is 2 sum min(x, w) - sum x - sum w: the
// inner loop is one min and one add per term (a conv's is one FMA), the window sums of x are
// shared by every output channel and the sums of w are per output channel. Zero padding takes
// part as x = 0, as in the official unfold implementation. No (B, C*k*k, L) x O temporary:
// each thread pads the rows it reads into a buffer of one image.
//
// Backward to the input (the paper's HardTanh gradient):
//   gx[q, c] = sum_{ky,kx,o} e[q + (k-1) - k_yx, o] * clamp(w[k, c, o] - x[q, c], -1, 1)
// where e is the output gradient dilated by the stride and padded so that every stride and
// padding becomes this one stride-1 full correlation (the caller builds it). The weight
// gradient, sum_p gy (x - w), is a convolution weight gradient minus w * sum_p gy: ATen's.
//
// Winograd adder forward (winograd_adder_forward, Li et al., ICML 2021): the 3x3 stride-1 layer on
// F(2x2, 3x3) tiles, the core the same min-and-add as above on 16 Winograd positions (4/9 of
// the direct layer's terms); see the section at the end of this file.
//
// AVX-512 only: in a build without it (the AVX2 or no ISA flags, other architectures) both ops
// refuse, adder_isa() says "none", and leanvision.layers.adder runs its PyTorch path (the
// same values). Every argument is checked before any arithmetic.
// ATen's per-operator headers, not <ATen/ATen.h>: about a quarter less compile time per build
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

#ifdef __AVX512F__
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

struct FwdRow {
  const float* xp;  // padded input, first row of this output row's window
  int64_t rs;       // floats per padded row
  int64_t c, k, s;  // input channels, kernel size, stride
  const float* w;   // packed (k*k*c, op) as [ky][kx][c][o]
  int64_t op, o;    // padded and real output channels
  const float* sw;  // (op) per-output-channel sums of w
  const float* sx;  // this row's window sums of x, one per output pixel
  float* y;         // output row, o floats per pixel
};

// P output pixels x CB 16-wide output-channel vectors; stride 1 and k == 3 reuse each input
// broadcast for the three horizontal taps.
template <int P, int CB, bool S1K3>
inline void fwd_tile(const FwdRow& r, int64_t px, int64_t o0) {
  __m512 acc[P][CB];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int b = 0; b < CB; ++b) acc[p][b] = _mm512_setzero_ps();
  for (int64_t ky = 0; ky < r.k; ++ky) {
    const float* xr = r.xp + ky * r.rs;
    if constexpr (S1K3) {
      const float* wr = r.w + ky * 3 * r.c * r.op + o0;
      const float* xx = xr + px * r.c;
      for (int64_t ci = 0; ci < r.c; ++ci) {
        __m512 w[3][CB];
#pragma GCC unroll 3
        for (int kx = 0; kx < 3; ++kx)
#pragma GCC unroll 4
          for (int b = 0; b < CB; ++b) w[kx][b] = _mm512_loadu_ps(wr + (kx * r.c + ci) * r.op + 16 * b);
#pragma GCC unroll 32
        for (int j = 0; j < P + 2; ++j) {
          const __m512 xv = _mm512_set1_ps(xx[j * r.c + ci]);
#pragma GCC unroll 3
          for (int kx = 0; kx < 3; ++kx) {
            const int p = j - kx;
            if (p >= 0 && p < P) {
#pragma GCC unroll 4
              for (int b = 0; b < CB; ++b)
                acc[p][b] = _mm512_add_ps(acc[p][b], _mm512_min_ps(xv, w[kx][b]));
            }
          }
        }
      }
    } else {
      for (int64_t kx = 0; kx < r.k; ++kx) {
        const float* wr = r.w + (ky * r.k + kx) * r.c * r.op + o0;
        const float* xx = xr + (px * r.s + kx) * r.c;
        for (int64_t ci = 0; ci < r.c; ++ci) {
          __m512 w[CB];
#pragma GCC unroll 4
          for (int b = 0; b < CB; ++b) w[b] = _mm512_loadu_ps(wr + ci * r.op + 16 * b);
#pragma GCC unroll 16
          for (int p = 0; p < P; ++p) {
            const __m512 xv = _mm512_set1_ps(xx[p * r.s * r.c + ci]);
#pragma GCC unroll 4
            for (int b = 0; b < CB; ++b)
              acc[p][b] = _mm512_add_ps(acc[p][b], _mm512_min_ps(xv, w[b]));
          }
        }
      }
    }
  }
  const __m512 two = _mm512_set1_ps(2.f);
#pragma GCC unroll 4
  for (int b = 0; b < CB; ++b) {
    const int64_t oc = o0 + 16 * b;
    if (oc >= r.o) break;
    const __mmask16 m = tail_mask(r.o - oc);
    const __m512 swv = _mm512_loadu_ps(r.sw + oc);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const __m512 v = _mm512_sub_ps(
          _mm512_fmsub_ps(two, acc[p][b], _mm512_set1_ps(r.sx[px + p])), swv);
      _mm512_mask_storeu_ps(r.y + (px + p) * r.o + oc, m, v);
    }
  }
}

template <int CB, bool S1K3, int P>
inline void fwd_span(const FwdRow& r, int64_t width, int64_t o0, int64_t& px) {
  for (; px + P <= width; px += P) fwd_tile<P, CB, S1K3>(r, px, o0);
}

template <int CB, bool S1K3>
void fwd_row(const FwdRow& r, int64_t width) {
  for (int64_t o0 = 0; o0 < r.op; o0 += 16 * CB) {
    int64_t px = 0;
    if constexpr (CB == 1) fwd_span<CB, S1K3, 16>(r, width, o0, px);
    if constexpr (CB == 2) fwd_span<CB, S1K3, 12>(r, width, o0, px);
    fwd_span<CB, S1K3, 8>(r, width, o0, px);
    fwd_span<CB, S1K3, 4>(r, width, o0, px);
    fwd_span<CB, S1K3, 2>(r, width, o0, px);
    fwd_span<CB, S1K3, 1>(r, width, o0, px);
  }
}

// Pads rows [r0, r1) of padded image `img` (zeros outside the input) into `pad`, and sums
// each padded pixel's channels into `csum`.
void pad_rows(const float* x, int64_t h, int64_t w, int64_t c, int64_t pad_hw, int64_t wp,
              int64_t r0, int64_t r1, float* pad, float* csum) {
  for (int64_t pr = r0; pr < r1; ++pr) {
    float* dst = pad + pr * wp * c;
    const int64_t src = pr - pad_hw;
    std::memset(dst, 0, sizeof(float) * wp * c);
    if (src >= 0 && src < h)
      std::memcpy(dst + pad_hw * c, x + src * w * c, sizeof(float) * w * c);
    for (int64_t q = 0; q < wp; ++q) {
      float t = 0.f;
      for (int64_t ci = 0; ci < c; ++ci) t += dst[q * c + ci];
      csum[pr * wp + q] = t;
    }
  }
}
#endif

std::string adder_isa() {
#ifdef __AVX512F__
  return "avx512";
#else
  return "none";
#endif
}

#ifndef __AVX512F__
[[noreturn]] void no_avx512(const char* op) {
  TORCH_CHECK(false, op, ": this build has no AVX-512 (use the PyTorch path)");
}
#endif

at::Tensor adder_forward(const at::Tensor& x_in, const at::Tensor& w_packed,
                         const at::Tensor& w_sum, int64_t out_channels, int64_t kernel,
                         int64_t stride, int64_t padding) {
#ifndef __AVX512F__
  no_avx512("adder_forward");
#else
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "adder_forward: x must be a 4-D float32 CPU tensor, got ", x_in.sizes(), " ",
              x_in.scalar_type(), " on ", x_in.device());
  TORCH_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && out_channels >= 1,
              "adder_forward: kernel, stride and out_channels must be >= 1 and padding >= 0, "
              "got kernel ", kernel, ", stride ", stride, ", padding ", padding,
              ", out_channels ", out_channels);
  TORCH_CHECK(w_packed.device().is_cpu() && w_sum.device().is_cpu(),
              "adder_forward: w_packed and w_sum must be CPU tensors");
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), wd = x_in.size(3);
  const int64_t o = out_channels, op = (o + 15) / 16 * 16;
  TORCH_CHECK(w_packed.dim() == 2 && w_packed.size(0) == kernel * kernel * c &&
                  w_packed.size(1) == op && w_packed.scalar_type() == at::kFloat,
              "adder_forward: packed weight must be float32 (k*k*C, O rounded up to 16) = (",
              kernel * kernel * c, ", ", op, "), got ", w_packed.sizes());
  TORCH_CHECK(w_sum.numel() == op && w_sum.scalar_type() == at::kFloat,
              "adder_forward: w_sum must hold ", op, " float32 values");
  const int64_t hp = h + 2 * padding, wp = wd + 2 * padding;
  TORCH_CHECK(hp >= kernel && wp >= kernel, "adder_forward: input smaller than the kernel");
  const int64_t ho = (hp - kernel) / stride + 1, wo = (wp - kernel) / stride + 1;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl), w = w_packed.contiguous(), sw = w_sum.contiguous();
  at::Tensor y = at::empty({n, o, ho, wo}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  const float* xd = x.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  const bool s1k3 = stride == 1 && kernel == 3;
  at::parallel_for(0, n * ho, std::max<int64_t>(1, ho / 4), [&](int64_t r0, int64_t r1) {
    std::vector<float> pad(static_cast<size_t>(hp * wp * c)), csum(static_cast<size_t>(hp * wp));
    std::vector<float> sx(static_cast<size_t>(wo));
    for (int64_t r = r0; r < r1;) {
      const int64_t img = r / ho, oh0 = r % ho, oh1 = std::min<int64_t>(ho, oh0 + (r1 - r));
      pad_rows(xd + img * h * wd * c, h, wd, c, padding, wp, oh0 * stride,
               (oh1 - 1) * stride + kernel, pad.data(), csum.data());
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        for (int64_t q = 0; q < wo; ++q) {
          float t = 0.f;
          for (int64_t ky = 0; ky < kernel; ++ky)
            for (int64_t kx = 0; kx < kernel; ++kx)
              t += csum[(oh * stride + ky) * wp + q * stride + kx];
          sx[q] = t;
        }
        const FwdRow row{pad.data() + oh * stride * wp * c, wp * c, c, kernel, stride,
                         w.data_ptr<float>(), op, o, sw.data_ptr<float>(), sx.data(),
                         yd + (img * ho + oh) * wo * o};
        if (op % 32 == 0) {
          s1k3 ? fwd_row<2, true>(row, wo) : fwd_row<2, false>(row, wo);
        } else {
          s1k3 ? fwd_row<1, true>(row, wo) : fwd_row<1, false>(row, wo);
        }
      }
      r += oh1 - oh0;
    }
  });
  return y;
#endif
}

at::Tensor adder_backward_input(const at::Tensor& e_in, const at::Tensor& x_in,
                                const at::Tensor& wt_packed, int64_t kernel) {
#ifndef __AVX512F__
  no_avx512("adder_backward_input");
#else
  TORCH_CHECK(kernel >= 1, "adder_backward_input: kernel must be >= 1, got ", kernel);
  TORCH_CHECK(e_in.device().is_cpu() && x_in.device().is_cpu() && wt_packed.device().is_cpu(),
              "adder_backward_input: e, x and wt_packed must be CPU tensors");
  TORCH_CHECK(e_in.dim() == 4 && x_in.dim() == 4 && e_in.scalar_type() == at::kFloat &&
                  x_in.scalar_type() == at::kFloat && wt_packed.scalar_type() == at::kFloat,
              "adder_backward_input: e and x must be float32 4-D tensors and wt_packed float32, "
              "got ", e_in.sizes(), " ", e_in.scalar_type(), ", ", x_in.sizes(), " ",
              x_in.scalar_type(), ", ", wt_packed.scalar_type());
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), wd = x_in.size(3);
  const int64_t o = e_in.size(1), cp = (c + 15) / 16 * 16;
  TORCH_CHECK(e_in.size(0) == n && e_in.size(2) == h + kernel - 1 &&
                  e_in.size(3) == wd + kernel - 1,
              "adder_backward_input: e must be (N, O, H + k - 1, W + k - 1), got ", e_in.sizes());
  TORCH_CHECK(wt_packed.dim() == 2 && wt_packed.size(0) == kernel * kernel * o &&
                  wt_packed.size(1) == cp,
              "adder_backward_input: packed weight must be (k*k*O, C rounded up to 16)");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor e = e_in.contiguous(cl), x = x_in.contiguous(cl), wt = wt_packed.contiguous();
  at::Tensor gx = at::empty({n, c, h, wd}, x.options().memory_format(cl));
  if (gx.numel() == 0) return gx;
  const float* ed = e.data_ptr<float>();
  const float* xd = x.data_ptr<float>();
  const float* wtd = wt.data_ptr<float>();
  float* gd = gx.data_ptr<float>();
  const int64_t he = h + kernel - 1, we = wd + kernel - 1;
  at::parallel_for(0, n * h, std::max<int64_t>(1, h / 4), [&](int64_t r0, int64_t r1) {
    const __m512 lo = _mm512_set1_ps(-1.f), hi = _mm512_set1_ps(1.f);
    constexpr int P = 6;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / h, qy = r % h;
      const float* xrow = xd + (img * h + qy) * wd * c;
      float* grow = gd + (img * h + qy) * wd * c;
      for (int64_t c0 = 0; c0 < c; c0 += 32) {
        const __mmask16 m0 = tail_mask(c - c0), m1 = c0 + 16 < c ? tail_mask(c - c0 - 16) : 0;
        for (int64_t q0 = 0; q0 < wd; q0 += P) {
          const int np = static_cast<int>(std::min<int64_t>(P, wd - q0));
          __m512 xv[P][2], acc[P][2];
          for (int p = 0; p < P; ++p) {
            const float* xq = xrow + (q0 + std::min(p, np - 1)) * c + c0;
            xv[p][0] = _mm512_maskz_loadu_ps(m0, xq);
            xv[p][1] = _mm512_maskz_loadu_ps(m1, xq + 16);
            acc[p][0] = acc[p][1] = _mm512_setzero_ps();
          }
          for (int64_t ky = 0; ky < kernel; ++ky) {
            const float* erow = ed + (img * he + qy + kernel - 1 - ky) * we * o;
            for (int64_t kx = 0; kx < kernel; ++kx) {
              const float* wk = wtd + (ky * kernel + kx) * o * cp + c0;
              const float* ecol = erow + (q0 + kernel - 1 - kx) * o;
              for (int64_t oc = 0; oc < o; ++oc) {
                const __m512 w0 = _mm512_loadu_ps(wk + oc * cp);
                const __m512 w1 = m1 ? _mm512_loadu_ps(wk + oc * cp + 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
                for (int p = 0; p < P; ++p) {
                  if (p >= np) break;
                  const __m512 g = _mm512_set1_ps(ecol[p * o + oc]);
                  const __m512 d0 = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(w0, xv[p][0]), lo), hi);
                  acc[p][0] = _mm512_fmadd_ps(g, d0, acc[p][0]);
                  if (m1) {
                    const __m512 d1 =
                        _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(w1, xv[p][1]), lo), hi);
                    acc[p][1] = _mm512_fmadd_ps(g, d1, acc[p][1]);
                  }
                }
              }
            }
          }
          for (int p = 0; p < np; ++p) {
            _mm512_mask_storeu_ps(grow + (q0 + p) * c + c0, m0, acc[p][0]);
            if (m1) _mm512_mask_storeu_ps(grow + (q0 + p) * c + c0 + 16, m1, acc[p][1]);
          }
        }
      }
    }
  });
  return gx;
#endif
}


#ifdef __AVX512F__
// ---------------------------------------------------------------------------------------------
// Winograd adder layer (Li et al., ICML 2021, arXiv 2105.05530), 3x3 stride 1, on F(2x2, 3x3)
// tiles: V = B^T d B per 4x4 input tile (tiles at stride 2) and channel, then at each of the 16
// Winograd positions k the adder core M_k[t, o] = -sum_c |U_k[c, o] - V_k[t, c]|, written as
// 2 sum_c min(U, V) - sum_c V - sum_c U as in the direct layer (one min and one add per term),
// then Y = A^T M A per tile. B^T is the standard one for every transform leanvision has (their
// signs sit in G, folded into U by the caller, and in A^T, passed as 2x4 coefficients).
// One tile row of one image per task: its 4 padded input rows, V (16 x TW x C), M (16 x TW x Op)
// in the thread's buffers.

struct WinoRow {
  const float* v;   // [16][tw][c]
  const float* vs;  // [16][tw]: sum over c of v
  const float* u;   // packed (16*c, op) as [k][c][o]
  const float* us;  // [16][op]: sum over c of u
  int64_t tw, c, op;
  float* m;  // [16][tw][op]
};

// P tiles x CB 16-wide output-channel vectors at position k.
template <int P, int CB>
inline void wino_core_tile(const WinoRow& r, int64_t k, int64_t t0, int64_t o0) {
  __m512 acc[P][CB];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int b = 0; b < CB; ++b) acc[p][b] = _mm512_setzero_ps();
  const float* vk = r.v + (k * r.tw + t0) * r.c;
  const float* uk = r.u + k * r.c * r.op + o0;
  for (int64_t ci = 0; ci < r.c; ++ci) {
    __m512 w[CB];
#pragma GCC unroll 4
    for (int b = 0; b < CB; ++b) w[b] = _mm512_loadu_ps(uk + ci * r.op + 16 * b);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const __m512 xv = _mm512_set1_ps(vk[p * r.c + ci]);
#pragma GCC unroll 4
      for (int b = 0; b < CB; ++b) acc[p][b] = _mm512_add_ps(acc[p][b], _mm512_min_ps(xv, w[b]));
    }
  }
  const __m512 two = _mm512_set1_ps(2.f);
#pragma GCC unroll 4
  for (int b = 0; b < CB; ++b) {
    const __m512 usv = _mm512_loadu_ps(r.us + k * r.op + o0 + 16 * b);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const __m512 val = _mm512_sub_ps(
          _mm512_fmsub_ps(two, acc[p][b], _mm512_set1_ps(r.vs[k * r.tw + t0 + p])), usv);
      _mm512_storeu_ps(r.m + (k * r.tw + t0 + p) * r.op + o0 + 16 * b, val);
    }
  }
}

template <int CB, int P>
inline void wino_core_span(const WinoRow& r, int64_t k, int64_t o0, int64_t& t) {
  for (; t + P <= r.tw; t += P) wino_core_tile<P, CB>(r, k, t, o0);
}

template <int CB>
void wino_core_at(const WinoRow& r, int64_t k) {
  for (int64_t o0 = 0; o0 < r.op; o0 += 16 * CB) {
    int64_t t = 0;
    if constexpr (CB == 1) wino_core_span<CB, 16>(r, k, o0, t);
    if constexpr (CB == 2) wino_core_span<CB, 12>(r, k, o0, t);
    wino_core_span<CB, 8>(r, k, o0, t);
    wino_core_span<CB, 4>(r, k, o0, t);
    wino_core_span<CB, 2>(r, k, o0, t);
    wino_core_span<CB, 1>(r, k, o0, t);
  }
}

template <int CB>
void wino_core(const WinoRow& r) {
  for (int64_t k = 0; k < 16; ++k) wino_core_at<CB>(r, k);
}

// One position of a row view (its v, vs, u, us and m already offset to that position).
template <int CB>
void wino_core_pos(const WinoRow& r) {
  wino_core_at<CB>(r, 0);
}

// V = B^T d B for the tile row's tiles (d: 4 padded rows of wp = 2 tw + 2 pixels x c), and
// vs = its sums over the channels. B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
void wino_input(const float* pad, int64_t tw, int64_t c, float* v, float* vs) {
  const int64_t wp = 2 * tw + 2;
  for (int64_t t = 0; t < tw; ++t) {
    __m512 sum[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) sum[k] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      const __mmask16 msk = tail_mask(c - c0);
      __m512 d[4][4];
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q)
          d[u][q] = _mm512_maskz_loadu_ps(msk, pad + (u * wp + 2 * t + q) * c + c0);
      __m512 e[4][4];  // B^T d: rows
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        e[0][q] = _mm512_sub_ps(d[0][q], d[2][q]);
        e[1][q] = _mm512_add_ps(d[1][q], d[2][q]);
        e[2][q] = _mm512_sub_ps(d[2][q], d[1][q]);
        e[3][q] = _mm512_sub_ps(d[1][q], d[3][q]);
      }
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {  // (B^T d) B: columns
        const __m512 f[4] = {_mm512_sub_ps(e[i][0], e[i][2]), _mm512_add_ps(e[i][1], e[i][2]),
                             _mm512_sub_ps(e[i][2], e[i][1]), _mm512_sub_ps(e[i][1], e[i][3])};
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          _mm512_mask_storeu_ps(v + ((i * 4 + j) * tw + t) * c + c0, msk, f[j]);
          sum[i * 4 + j] = _mm512_add_ps(sum[i * 4 + j], f[j]);
        }
      }
    }
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) vs[k * tw + t] = _mm512_reduce_add_ps(sum[k]);
  }
}

// Y = A^T M A for the tile row's tiles into output rows 2 ty, 2 ty + 1 (those below ho), the
// columns below wo; o real output channels of op.
void wino_output(const float* m, const float* at, int64_t tw, int64_t op, int64_t o, int64_t ty,
                 int64_t ho, int64_t wo, float* y_img) {
  __m512 a[2][4];
  for (int i = 0; i < 2; ++i)
    for (int q = 0; q < 4; ++q) a[i][q] = _mm512_set1_ps(at[i * 4 + q]);
  for (int64_t t = 0; t < tw; ++t)
    for (int64_t o0 = 0; o0 < op; o0 += 16) {
      if (o0 >= o) break;
      const __mmask16 msk = tail_mask(o - o0);
      __m512 r[2][4];  // A^T M
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        __m512 mv[4];
#pragma GCC unroll 4
        for (int aa = 0; aa < 4; ++aa) mv[aa] = _mm512_loadu_ps(m + ((aa * 4 + q) * tw + t) * op + o0);
#pragma GCC unroll 2
        for (int i = 0; i < 2; ++i) {
          __m512 acc = _mm512_mul_ps(a[i][0], mv[0]);
#pragma GCC unroll 3
          for (int aa = 1; aa < 4; ++aa) acc = _mm512_fmadd_ps(a[i][aa], mv[aa], acc);
          r[i][q] = acc;
        }
      }
#pragma GCC unroll 2
      for (int i = 0; i < 2; ++i) {
        const int64_t yy = 2 * ty + i;
        if (yy >= ho) break;
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j) {
          const int64_t xx = 2 * t + j;
          if (xx >= wo) break;
          __m512 acc = _mm512_mul_ps(a[j][0], r[i][0]);
#pragma GCC unroll 3
          for (int q = 1; q < 4; ++q) acc = _mm512_fmadd_ps(a[j][q], r[i][q], acc);
          _mm512_mask_storeu_ps(y_img + (yy * wo + xx) * o + o0, msk, acc);
        }
      }
    }
}
#endif

at::Tensor winograd_adder_forward(const at::Tensor& x_in, const at::Tensor& u_packed,
                                  const at::Tensor& u_sum, const at::Tensor& a_t,
                                  int64_t out_channels, int64_t padding) {
#ifndef __AVX512F__
  no_avx512("winograd_adder_forward");
#else
  const char* op_name = "winograd_adder_forward";
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              op_name, ": x must be a 4-D float32 CPU tensor, got ", x_in.sizes(), " ",
              x_in.scalar_type(), " on ", x_in.device());
  TORCH_CHECK(out_channels >= 1 && padding >= 0, op_name,
              ": out_channels must be >= 1 and padding >= 0, got ", out_channels, ", ", padding);
  TORCH_CHECK(u_packed.device().is_cpu() && u_sum.device().is_cpu() && a_t.device().is_cpu(),
              op_name, ": u_packed, u_sum and a_t must be CPU tensors");
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), wd = x_in.size(3);
  const int64_t o = out_channels, op = (o + 15) / 16 * 16;
  TORCH_CHECK(c >= 1, op_name, ": x has no channels");
  TORCH_CHECK(u_packed.dim() == 2 && u_packed.size(0) == 16 * c && u_packed.size(1) == op &&
                  u_packed.scalar_type() == at::kFloat,
              op_name, ": packed U must be float32 (16*C, O rounded up to 16) = (", 16 * c, ", ",
              op, "), got ", u_packed.sizes());
  TORCH_CHECK(u_sum.numel() == 16 * op && u_sum.scalar_type() == at::kFloat, op_name,
              ": u_sum must hold 16 * ", op, " float32 values");
  TORCH_CHECK(a_t.numel() == 8 && a_t.scalar_type() == at::kFloat, op_name,
              ": a_t must be the 2x4 float32 output transform");
  const int64_t ho = h + 2 * padding - 2, wo = wd + 2 * padding - 2;
  TORCH_CHECK(ho >= 1 && wo >= 1, op_name, ": input smaller than the 3x3 kernel");
  const int64_t th = (ho + 1) / 2, tw = (wo + 1) / 2, wp = 2 * tw + 2;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(cl), u = u_packed.contiguous(), us = u_sum.contiguous();
  const at::Tensor atc = a_t.contiguous();
  at::Tensor y = at::empty({n, o, ho, wo}, x.options().memory_format(cl));
  if (y.numel() == 0) return y;
  const float* xd = x.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  const float* atd = atc.data_ptr<float>();
  at::parallel_for(0, n * th, std::max<int64_t>(1, th / 4), [&](int64_t r0, int64_t r1) {
    std::vector<float> pad(static_cast<size_t>(4 * wp * c));
    std::vector<float> v(static_cast<size_t>(16 * tw * c)), vs(static_cast<size_t>(16 * tw));
    std::vector<float> m(static_cast<size_t>(16 * tw * op));
    const WinoRow row{v.data(), vs.data(), u.data_ptr<float>(), us.data_ptr<float>(), tw, c, op,
                      m.data()};
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / th, ty = r % th;
      const float* xn = xd + img * h * wd * c;
      for (int64_t uu = 0; uu < 4; ++uu) {  // padded rows 2 ty - padding + uu
        float* dst = pad.data() + uu * wp * c;
        const int64_t src = 2 * ty - padding + uu;
        std::memset(dst, 0, sizeof(float) * wp * c);
        if (src < 0 || src >= h) continue;
        // padded column q holds input column q - padding (those inside the image)
        const int64_t q0 = std::max<int64_t>(0, padding), q1 = std::min<int64_t>(wp, wd + padding);
        if (q1 > q0)
          std::memcpy(dst + q0 * c, xn + (src * wd + q0 - padding) * c,
                      sizeof(float) * (q1 - q0) * c);
      }
      wino_input(pad.data(), tw, c, v.data(), vs.data());
      if (op % 32 == 0) wino_core<2>(row);
      else wino_core<1>(row);
      wino_output(m.data(), atd, tw, op, o, ty, ho, wo, yd + img * ho * wo * o);
    }
  });
  return y;
#endif
}


#ifdef __AVX512F__
// ---------------------------------------------------------------------------------------------
// The Winograd adder core for training, at any p in [1, 2]: V (16, L, C) and U (16, O, C) from
// the PyTorch transforms, M = -sum_c |U - V|^p (16, L, O); and its backward: at p = 1 the input
// gradient HardTanh(U - V) (AdderNet's; the weight gradient is a matrix product, ATen's), for
// 1 < p < 2 the true gradients of -|U - V|^p to both. |d|^p = exp2(p log2 |d|) with polynomial
// log2 (degree 8 on [1, 2), error 2e-7) and exp2 (degree 6 on [0, 1), error 1e-8) fitted by us;
// 0 at d = 0.

inline __m512 fast_log2(__m512 x) {  // x > 0
  const __m512 e = _mm512_getexp_ps(x);
  const __m512 t = _mm512_sub_ps(_mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero),
                                 _mm512_set1_ps(1.f));
  __m512 r = _mm512_set1_ps(-9.118374304e-03f);
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(5.115548122e-02f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-1.358053435e-01f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(2.401819118e-01f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-3.463914453e-01f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(4.784176480e-01f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-7.211279418e-01f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.442687955e+00f));
  return _mm512_fmadd_ps(r, t, e);
}

inline __m512 fast_exp2(__m512 y) {
  y = _mm512_max_ps(y, _mm512_set1_ps(-126.f));  // below: 0 for our purpose (|d| tiny)
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);
  __m512 r = _mm512_set1_ps(2.187126232e-04f);
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(1.238241554e-03f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(9.686186290e-03f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(5.547891246e-02f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(2.402310968e-01f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(6.931468377e-01f));
  r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(1.000000006e+00f));
  return _mm512_scalef_ps(r, n);
}

// |d|^q for d >= 0 (0 where d == 0)
inline __m512 pow_abs(__m512 d, __m512 q) {
  const __mmask16 nz = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_GT_OQ);
  return _mm512_maskz_mov_ps(nz, fast_exp2(_mm512_mul_ps(q, fast_log2(d))));
}

inline __m512 abs_ps(__m512 a) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
}

// M rows [l0, l1) at position k: -sum_c |U - V|^p; U packed [k][c][op]. P rows x 16 outputs.
template <int P>
inline void core_pow_tile(const float* vk, const float* uk, int64_t c, int64_t op, int64_t o,
                          int64_t o0, __m512 pv, float* mk) {
  __m512 acc[P];
#pragma GCC unroll 8
  for (int q = 0; q < P; ++q) acc[q] = _mm512_setzero_ps();
  for (int64_t ci = 0; ci < c; ++ci) {
    const __m512 w = _mm512_loadu_ps(uk + ci * op + o0);
#pragma GCC unroll 8
    for (int q = 0; q < P; ++q) {
      const __m512 d = abs_ps(_mm512_sub_ps(_mm512_set1_ps(vk[q * c + ci]), w));
      acc[q] = _mm512_add_ps(acc[q], pow_abs(d, pv));
    }
  }
  const __mmask16 msk = tail_mask(o - o0);
#pragma GCC unroll 8
  for (int q = 0; q < P; ++q)
    _mm512_mask_storeu_ps(mk + q * o + o0, msk, _mm512_sub_ps(_mm512_setzero_ps(), acc[q]));
}
#endif

// M = -sum_c |U - V|^p: v (16, L, C), u_packed (16*C, O rounded up to 16) as [k][c][o], u_sum
// (16, Op) its sums over c (used at p = 1); returns (16, L, O).
at::Tensor winograd_adder_core(const at::Tensor& v_in, const at::Tensor& u_packed,
                               const at::Tensor& u_sum, int64_t out_channels, double p) {
#ifndef __AVX512F__
  no_avx512("winograd_adder_core");
#else
  const char* op_name = "winograd_adder_core";
  TORCH_CHECK(v_in.dim() == 3 && v_in.size(0) == 16 && v_in.scalar_type() == at::kFloat &&
                  v_in.device().is_cpu(),
              op_name, ": v must be float32 CPU (16, L, C), got ", v_in.sizes());
  TORCH_CHECK(p >= 1.0 && p <= 2.0, op_name, ": p must be in [1, 2], got ", p);
  const int64_t l = v_in.size(1), c = v_in.size(2), o = out_channels, op = (o + 15) / 16 * 16;
  TORCH_CHECK(o >= 1 && c >= 1, op_name, ": no channels");
  TORCH_CHECK(u_packed.dim() == 2 && u_packed.size(0) == 16 * c && u_packed.size(1) == op &&
                  u_packed.scalar_type() == at::kFloat && u_packed.device().is_cpu(),
              op_name, ": packed U must be float32 CPU (16*C, O rounded up to 16) = (", 16 * c,
              ", ", op, "), got ", u_packed.sizes());
  TORCH_CHECK(u_sum.numel() == 16 * op && u_sum.scalar_type() == at::kFloat &&
                  u_sum.device().is_cpu(),
              op_name, ": u_sum must hold 16 * ", op, " float32 values");
  const at::Tensor v = v_in.contiguous(), u = u_packed.contiguous(), us = u_sum.contiguous();
  at::Tensor m = at::empty({16, l, o}, v.options());
  if (l == 0) return m;
  const float* vd = v.data_ptr<float>();
  const float* ud = u.data_ptr<float>();
  const float* usd = us.data_ptr<float>();
  float* md = m.data_ptr<float>();
  constexpr int64_t kRows = 48;  // rows of M per task
  const int64_t blocks = (l + kRows - 1) / kRows;
  if (p == 1.0) {
    std::vector<float> vsum(static_cast<size_t>(16 * l));
    at::parallel_for(0, 16 * l, 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float t = 0.f;
        for (int64_t ci = 0; ci < c; ++ci) t += vd[i * c + ci];
        vsum[i] = t;
      }
    });
    at::parallel_for(0, 16 * blocks, 1, [&](int64_t b0, int64_t b1) {
      // padded outputs (o % 16 != 0) go through a buffer; else straight into m
      std::vector<float> buf(o == op ? 0 : static_cast<size_t>(kRows * op));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t k = b / blocks, r0 = (b % blocks) * kRows, r1 = std::min(l, r0 + kRows);
        // the inference kernel's tiles on rows r0..r1 of position k (one position: k = 0 of a
        // row view)
        float* dst = o == op ? md + (k * l + r0) * o : buf.data();
        const WinoRow row{vd + (k * l + r0) * c, vsum.data() + k * l + r0, ud + k * c * op,
                          usd + k * op, r1 - r0, c, op, dst};
        if (op % 32 == 0) wino_core_pos<2>(row);
        else wino_core_pos<1>(row);
        if (o != op)
          for (int64_t r = r0; r < r1; ++r)
            std::memcpy(md + (k * l + r) * o, buf.data() + (r - r0) * op, sizeof(float) * o);
      }
    });
    return m;
  }
  const __m512 pv = _mm512_set1_ps(static_cast<float>(p));
  at::parallel_for(0, 16 * blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t k = b / blocks, r0 = (b % blocks) * kRows, r1 = std::min(l, r0 + kRows);
      const float* uk = ud + k * c * op;
      for (int64_t o0 = 0; o0 < o; o0 += 16) {
        int64_t r = r0;
        for (; r + 8 <= r1; r += 8)
          core_pow_tile<8>(vd + (k * l + r) * c, uk, c, op, o, o0, pv, md + (k * l + r) * o);
        for (; r < r1; ++r)
          core_pow_tile<1>(vd + (k * l + r) * c, uk, c, op, o, o0, pv, md + (k * l + r) * o);
      }
    }
  });
  return m;
#endif
}

// The core's backward: gm (16, L, O), v (16, L, C), u (16, O, C). Returns gv (16, L, C) and,
// for p > 1, gu (16, O, C) (at p = 1 an empty tensor: the caller's matrix product gives it):
//   p = 1:  gv = sum_o gm HardTanh(U - V)
//   p > 1:  t = p |U - V|^(p-1) sign(U - V);  gv = sum_o gm t;  gu = -sum_l gm t
std::vector<at::Tensor> winograd_adder_core_backward(const at::Tensor& gm_in,
                                                     const at::Tensor& v_in,
                                                     const at::Tensor& u_in, double p) {
#ifndef __AVX512F__
  no_avx512("winograd_adder_core_backward");
#else
  const char* op_name = "winograd_adder_core_backward";
  TORCH_CHECK(gm_in.dim() == 3 && v_in.dim() == 3 && u_in.dim() == 3 && gm_in.size(0) == 16 &&
                  v_in.size(0) == 16 && u_in.size(0) == 16,
              op_name, ": gm, v and u must be (16, L, O), (16, L, C), (16, O, C)");
  const int64_t l = v_in.size(1), c = v_in.size(2), o = u_in.size(1);
  TORCH_CHECK(gm_in.size(1) == l && gm_in.size(2) == o && u_in.size(2) == c, op_name,
              ": shapes disagree: gm ", gm_in.sizes(), ", v ", v_in.sizes(), ", u ",
              u_in.sizes());
  for (const at::Tensor* t : {&gm_in, &v_in, &u_in})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(), op_name,
                ": gm, v and u must be float32 CPU tensors");
  TORCH_CHECK(p >= 1.0 && p <= 2.0, op_name, ": p must be in [1, 2], got ", p);
  const at::Tensor gm = gm_in.contiguous(), v = v_in.contiguous(), u = u_in.contiguous();
  at::Tensor gv = at::empty({16, l, c}, v.options());  // every element is written below
  const bool grad_u = p > 1.0;
  at::Tensor gu = grad_u ? at::zeros({16, o, c}, v.options()) : at::empty({0}, v.options());
  if (l == 0) return {gv, gu};
  const float* gmd = gm.data_ptr<float>();
  const float* vd = v.data_ptr<float>();
  const float* ud = u.data_ptr<float>();
  float* gvd = gv.data_ptr<float>();
  float* gud = grad_u ? gu.data_ptr<float>() : nullptr;
  const __m512 lo = _mm512_set1_ps(-1.f), hi = _mm512_set1_ps(1.f);
  const __m512 pv = _mm512_set1_ps(static_cast<float>(p)), qv = _mm512_set1_ps(static_cast<float>(p - 1.0));
  constexpr int P = 6;
  // one position per task: gu[k] has one writer
  at::parallel_for(0, 16, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const float* uk = ud + k * o * c;
      float* guk = grad_u ? gud + k * o * c : nullptr;
      for (int64_t c0 = 0; c0 < c; c0 += 16) {
        const __mmask16 msk = tail_mask(c - c0);
        for (int64_t r0 = 0; r0 < l; r0 += P) {
          const int np = static_cast<int>(std::min<int64_t>(P, l - r0));
          __m512 vv[P], acc[P];
          for (int q = 0; q < P; ++q) {
            vv[q] = _mm512_maskz_loadu_ps(msk, vd + (k * l + r0 + std::min(q, np - 1)) * c + c0);
            acc[q] = _mm512_setzero_ps();
          }
          const float* gk = gmd + (k * l + r0) * o;
          for (int64_t oc = 0; oc < o; ++oc) {
            const __m512 w = _mm512_maskz_loadu_ps(msk, uk + oc * c + c0);
            if (!grad_u) {
#pragma GCC unroll 8
              for (int q = 0; q < P; ++q) {
                if (q >= np) break;
                const __m512 g = _mm512_set1_ps(gk[q * o + oc]);
                const __m512 d = _mm512_min_ps(_mm512_max_ps(_mm512_sub_ps(w, vv[q]), lo), hi);
                acc[q] = _mm512_fmadd_ps(g, d, acc[q]);
              }
            } else {
              __m512 gsum = _mm512_setzero_ps();
#pragma GCC unroll 8
              for (int q = 0; q < P; ++q) {
                if (q >= np) break;
                const __m512 g = _mm512_set1_ps(gk[q * o + oc]);
                const __m512 d = _mm512_sub_ps(w, vv[q]);
                // p |d|^(p-1) sign(d): the magnitude, then d's sign bit
                const __m512 mag = _mm512_mul_ps(pv, pow_abs(abs_ps(d), qv));
                const __m512 t = _mm512_castsi512_ps(_mm512_or_si512(
                    _mm512_castps_si512(mag),
                    _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(INT32_MIN))));
                const __mmask16 nz = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_OQ);
                const __m512 tz = _mm512_maskz_mov_ps(nz, t);  // sign(0) = 0
                acc[q] = _mm512_fmadd_ps(g, tz, acc[q]);
                gsum = _mm512_fmadd_ps(g, tz, gsum);
              }
              float* gp = guk + oc * c + c0;
              _mm512_mask_storeu_ps(gp, msk,
                                    _mm512_sub_ps(_mm512_maskz_loadu_ps(msk, gp), gsum));
            }
          }
          for (int q = 0; q < np; ++q)
            _mm512_mask_storeu_ps(gvd + (k * l + r0 + q) * c + c0, msk, acc[q]);
        }
      }
    }
  });
  return {gv, gu};
#endif
}

// The Winograd input transform for training, V = Bt d B of every 4x4 tile at stride 2 (the
// PyTorch path writes it with 16 strided adds per pass, reading and writing the whole map each
// time; here each tile is read once). x (N, Hp, Wp, C) padded NHWC, bt (4, 4) any values;
// V (16, N, th, tw, C): V[4i + j] = sum_{u,v} bt[i][u] bt[j][v] d[u][v].
void check_input_transform(const char* op_name, int64_t n, int64_t hp, int64_t wp, int64_t th,
                           int64_t tw, const at::Tensor& bt) {
  TORCH_CHECK(th >= 0 && tw >= 0 && n >= 0, op_name, ": tiles must be >= 0, got ", th, " x ",
              tw);
  TORCH_CHECK(hp >= 2 * th + 2 && wp >= 2 * tw + 2, op_name, ": a ", hp, " x ", wp,
              " padded map is too small for ", th, " x ", tw, " tiles of 4 x 4 at stride 2");
  TORCH_CHECK(bt.dim() == 2 && bt.size(0) == 4 && bt.size(1) == 4 && bt.device().is_cpu(),
              op_name, ": bt must be a (4, 4) CPU tensor, got ", bt.sizes());
}

std::vector<float> bt_values(const at::Tensor& bt) {
  const at::Tensor b = bt.to(at::kFloat).contiguous();
  return std::vector<float>(b.data_ptr<float>(), b.data_ptr<float>() + 16);
}

at::Tensor winograd_input_transform(const at::Tensor& x_in, const at::Tensor& bt_in, int64_t th,
                                    int64_t tw) {
#ifndef __AVX512F__
  no_avx512("winograd_input_transform");
#else
  const char* op_name = "winograd_input_transform";
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              op_name, ": x must be a float32 CPU (N, Hp, Wp, C) map, got ", x_in.sizes(), " ",
              x_in.scalar_type());
  const int64_t n = x_in.size(0), hp = x_in.size(1), wp = x_in.size(2), c = x_in.size(3);
  check_input_transform(op_name, n, hp, wp, th, tw, bt_in);
  const std::vector<float> b = bt_values(bt_in);
  const at::Tensor x = x_in.contiguous();
  at::Tensor v = at::empty({16, n, th, tw, c}, x.options());
  if (n == 0 || th == 0 || tw == 0 || c == 0) return v;
  const float* xd = x.data_ptr<float>();
  float* vd = v.data_ptr<float>();
  const int64_t ks = n * th * tw * c;  // floats per position k of V
  at::parallel_for(0, n * th, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t img = r / th, ty = r % th;
      for (int64_t tx = 0; tx < tw; ++tx) {
        const float* d0 = xd + ((img * hp + 2 * ty) * wp + 2 * tx) * c;
        float* v0 = vd + (r * tw + tx) * c;
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
          const __mmask16 msk = tail_mask(c - c0);
          __m512 d[4][4], e[4][4];
          for (int u = 0; u < 4; ++u)
            for (int q = 0; q < 4; ++q)
              d[u][q] = _mm512_maskz_loadu_ps(msk, d0 + (u * wp + q) * c + c0);
          for (int i = 0; i < 4; ++i)  // rows: e[i][q] = sum_u bt[i][u] d[u][q]
            for (int q = 0; q < 4; ++q) {
              __m512 acc = _mm512_setzero_ps();
              for (int u = 0; u < 4; ++u)
                if (b[i * 4 + u] != 0.f)
                  acc = _mm512_fmadd_ps(_mm512_set1_ps(b[i * 4 + u]), d[u][q], acc);
              e[i][q] = acc;
            }
          for (int i = 0; i < 4; ++i)  // columns: V[4i + j] = sum_q bt[j][q] e[i][q]
            for (int j = 0; j < 4; ++j) {
              __m512 acc = _mm512_setzero_ps();
              for (int q = 0; q < 4; ++q)
                if (b[j * 4 + q] != 0.f)
                  acc = _mm512_fmadd_ps(_mm512_set1_ps(b[j * 4 + q]), e[i][q], acc);
              _mm512_mask_storeu_ps(v0 + (4 * i + j) * ks + c0, msk, acc);
            }
        }
      }
    }
  });
  return v;
#endif
}

// Its backward: gv (16, N, th, tw, C) -> gx (N, Hp, Wp, C), every tile adding B gV Bt into the
// map; the tiles overlap, so one image's tiles stay on one thread.
at::Tensor winograd_input_transform_backward(const at::Tensor& gv_in, const at::Tensor& bt_in,
                                             int64_t hp, int64_t wp) {
#ifndef __AVX512F__
  no_avx512("winograd_input_transform_backward");
#else
  const char* op_name = "winograd_input_transform_backward";
  TORCH_CHECK(gv_in.dim() == 5 && gv_in.size(0) == 16 && gv_in.scalar_type() == at::kFloat &&
                  gv_in.device().is_cpu(),
              op_name, ": gv must be a float32 CPU (16, N, th, tw, C) tensor, got ",
              gv_in.sizes(), " ", gv_in.scalar_type());
  const int64_t n = gv_in.size(1), th = gv_in.size(2), tw = gv_in.size(3), c = gv_in.size(4);
  check_input_transform(op_name, n, hp, wp, th, tw, bt_in);
  const std::vector<float> b = bt_values(bt_in);
  const at::Tensor gv = gv_in.contiguous();
  at::Tensor gx = at::zeros({n, hp, wp, c}, gv.options());
  if (n == 0 || th == 0 || tw == 0 || c == 0) return gx;
  const float* gd = gv.data_ptr<float>();
  float* xd = gx.data_ptr<float>();
  const int64_t ks = n * th * tw * c;
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t img = i0; img < i1; ++img)
      for (int64_t ty = 0; ty < th; ++ty)
        for (int64_t tx = 0; tx < tw; ++tx) {
          const float* g0 = gd + ((img * th + ty) * tw + tx) * c;
          float* x0 = xd + ((img * hp + 2 * ty) * wp + 2 * tx) * c;
          for (int64_t c0 = 0; c0 < c; c0 += 16) {
            const __mmask16 msk = tail_mask(c - c0);
            __m512 e[4][4];  // e[i][q] = sum_j bt[j][q] gV[4i + j]
            for (int i = 0; i < 4; ++i) {
              __m512 g[4];
              for (int j = 0; j < 4; ++j)
                g[j] = _mm512_maskz_loadu_ps(msk, g0 + (4 * i + j) * ks + c0);
              for (int q = 0; q < 4; ++q) {
                __m512 acc = _mm512_setzero_ps();
                for (int j = 0; j < 4; ++j)
                  if (b[j * 4 + q] != 0.f)
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(b[j * 4 + q]), g[j], acc);
                e[i][q] = acc;
              }
            }
            for (int u = 0; u < 4; ++u)  // gd[u][q] = sum_i bt[i][u] e[i][q], added in place
              for (int q = 0; q < 4; ++q) {
                float* dst = x0 + (u * wp + q) * c + c0;
                __m512 acc = _mm512_maskz_loadu_ps(msk, dst);
                for (int i = 0; i < 4; ++i)
                  if (b[i * 4 + u] != 0.f)
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(b[i * 4 + u]), e[i][q], acc);
                _mm512_mask_storeu_ps(dst, msk, acc);
              }
          }
        }
  });
  return gx;
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leanvision, m) {
  m.def("adder_isa() -> str", &adder_isa);
  m.def("adder_forward(Tensor x, Tensor w_packed, Tensor w_sum, int out_channels, int kernel, "
        "int stride, int padding) -> Tensor");
  m.def("adder_backward_input(Tensor e, Tensor x, Tensor wt_packed, int kernel) -> Tensor");
  m.impl("adder_forward", c10::DispatchKey::CPU, &adder_forward);
  m.impl("adder_backward_input", c10::DispatchKey::CPU, &adder_backward_input);
  m.def("winograd_adder_forward(Tensor x, Tensor u_packed, Tensor u_sum, Tensor a_t, "
        "int out_channels, int padding) -> Tensor");
  m.impl("winograd_adder_forward", c10::DispatchKey::CPU, &winograd_adder_forward);
  m.def("winograd_adder_core(Tensor v, Tensor u_packed, Tensor u_sum, int out_channels, "
        "float p) -> Tensor");
  m.impl("winograd_adder_core", c10::DispatchKey::CPU, &winograd_adder_core);
  m.def("winograd_adder_core_backward(Tensor gm, Tensor v, Tensor u, float p) -> Tensor[]");
  m.impl("winograd_adder_core_backward", c10::DispatchKey::CPU, &winograd_adder_core_backward);
  m.def("winograd_input_transform(Tensor x, Tensor bt, int th, int tw) -> Tensor");
  m.impl("winograd_input_transform", c10::DispatchKey::CPU, &winograd_input_transform);
  m.def("winograd_input_transform_backward(Tensor gv, Tensor bt, int hp, int wp) -> Tensor");
  m.impl("winograd_input_transform_backward", c10::DispatchKey::CPU,
         &winograd_input_transform_backward);
}
