
// ManiDP's gated basic block at batch 1, in one call (Tang et al., CVPR 2021, arXiv 2103.05861).
//
// The Python path runs ~45 small ATen ops per block, each costing 2-5 us of dispatch, and
// ATen's batch-1 convolution (im2col + GEMM) barely gets faster with fewer channels. Here the
// gate MLPs, the thresholds and two direct convolutions that read only the kept channels'
// filters run in one op: no im2col, no weight gathering, one pass per epilogue.
//
// Semantics (equal to GatedBasicBlock's masked forward; bn(conv(x, w)) = conv(x, w) * a + b per
// channel with a, b from the batch norm's running statistics, computed here at every call):
//   s1 = clamp(fc2_1(relu(fc1_1(mean_hw(x)))), 0, cap); keep1 = s1 > 0 and s1 >= thre1
//   h  = relu(bn1(conv(x, w1[keep1]))) * s1[keep1]
//   s2 = clamp(fc2_2(relu(fc1_2[:, keep1](mean_hw(h)))), 0, cap); keep2 likewise (keep1 may
//        be empty: then h is zero and the second convolution yields its BN shift alone)
//   out = relu(shortcut + scatter_keep2(bn2(conv(h, w2[keep2][:, keep1])) * s2))
//
// The ops take the module's own tensors (convolution weights and biases, batch-norm weights,
// biases and running statistics, gate layers, thresholds), not copies derived from them, so
// a loaded state dict or an in-place edit counts at the next call.
//
// Portable: GCC/Clang vector extensions of the widest float vector the build targets (512 bits
// with the AVX512 flags, 256 with AVX2, 128 otherwise: SSE2 on x86-64, NEON on ARM);
// gated_block_isa() names the width. Every argument (shapes of the convolutions, biases and
// gate layers, thresholds, strides, paddings) is checked before any arithmetic, so the kept
// channel indices the gates produce are always in range.
// ATen's per-operator headers, not <ATen/ATen.h>: about a quarter less compile time per build
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using Index = std::vector<int64_t>;

// s = clamp(W2 relu(W1[:, cols] p) + b2, 0, cap) for a (hidden, in_all) W1 read at `cols`.
std::vector<float> gate(const float* pooled, const Index& cols, const at::Tensor& fc1,
                        const at::Tensor& fc2w, const at::Tensor& fc2b, double cap) {
  const int64_t hid = fc1.size(0), in_all = fc1.size(1), out = fc2w.size(0);
  const float* w1 = fc1.data_ptr<float>();
  const float* w2 = fc2w.data_ptr<float>();
  const float* b2 = fc2b.data_ptr<float>();
  std::vector<float> h(hid), s(out);
  for (int64_t j = 0; j < hid; ++j) {
    float a = 0.f;
    for (size_t c = 0; c < cols.size(); ++c) a += w1[j * in_all + cols[c]] * pooled[c];
    h[j] = a > 0.f ? a : 0.f;
  }
  const float hi = static_cast<float>(cap);
  for (int64_t o = 0; o < out; ++o) {
    float a = b2[o];
    for (int64_t j = 0; j < hid; ++j) a += w2[o * hid + j] * h[j];
    s[o] = std::min(std::max(a, 0.f), hi);
  }
  return s;
}

Index kept(const std::vector<float>& s, double thre) {
  Index k;
  const float t = static_cast<float>(thre);
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] > 0.f && s[i] >= t) k.push_back(static_cast<int64_t>(i));
  return k;
}

// The convolutions are direct and register-tiled. An input is stored zero-padded and split
// into stride x stride phases, so that every tap (kh, kw) of a strided convolution reads a
// contiguous run of one phase plane. Output positions run over "wide" rows of the phase
// width wq (the last columns of each row are junk and dropped by the epilogue); a tile of VL or
// 2 VL positions times OB output channels accumulates in registers over every input and tap.
// GCC/Clang vector extensions: the accumulators stay in vector registers on any target.
#if defined(__AVX512F__)
constexpr int64_t VL = 16;
#elif defined(__AVX__)
constexpr int64_t VL = 8;
#else
constexpr int64_t VL = 4;
#endif
typedef float vfloat __attribute__((vector_size(VL * sizeof(float))));
// A tile is OB output channels x (VL or 2 VL) positions: 8 or 16 independent accumulators
// with AVX-512's 32 registers, 4 or 8 with 16.
constexpr int64_t OB = VL == 16 ? 8 : 4;

std::string gated_block_isa() { return "vec" + std::to_string(VL * 32); }

struct Planes {
  std::vector<float>& data;  // a thread-local buffer, reused from call to call
  int64_t s, hq, wq, plane;
};

std::vector<float>& scratch(int slot) {
  thread_local std::vector<float> buffers[5];
  return buffers[slot];
}

// Room for `n` planes (h, w) zero-padded by `pad` at stride 1, with only the borders (and the
// slack past the end, read by the last tile) zeroed: the caller writes every interior value.
Planes padded(int64_t n, int64_t h, int64_t w, int64_t pad, int slot) {
  Planes p{scratch(slot), 1, h + 2 * pad, w + 2 * pad, 0};
  p.plane = p.hq * p.wq;
  const int64_t slack = 2 * VL + p.wq + 8;
  p.data.resize(n * p.plane + slack);
  float* d = p.data.data();
  for (int64_t c = 0; c < n; ++c) {
    float* base = d + c * p.plane;
    std::fill(base, base + pad * p.wq + pad, 0.f);  // top rows, left of the first row
    for (int64_t y = 0; y + 1 < h; ++y)  // right of row y and left of row y + 1
      std::fill(base + (y + pad) * p.wq + pad + w, base + (y + 1 + pad) * p.wq + pad, 0.f);
    std::fill(base + (h - 1 + pad) * p.wq + pad + w, base + p.plane, 0.f);  // and the bottom
  }
  std::fill(d + n * p.plane, d + n * p.plane + slack, 0.f);
  return p;
}

// Row y of plane c's interior in `padded` planes.
inline float* interior(Planes& p, int64_t c, int64_t y, int64_t pad) {
  return p.data.data() + c * p.plane + (y + pad) * p.wq + pad;
}

// `n` planes (h, w) of `src`, zero-padded by `pad` and split into stride x stride phases. With
// `sums`, also each plane's sum (for the gate), in the same pass.
Planes prepare(const float* src, int64_t n, int64_t h, int64_t w, int64_t pad, int64_t s,
               int slot, float* sums = nullptr) {
  if (sums != nullptr)
    for (int64_t c = 0; c < n; ++c) sums[c] = 0.f;
  if (s == 1) {
    Planes p = padded(n, h, w, pad, slot);
    for (int64_t c = 0; c < n; ++c) {
      float sum = 0.f;
      for (int64_t y = 0; y < h; ++y) {
        const float* row = src + (c * h + y) * w;
        float* dst = interior(p, c, y, pad);
        for (int64_t x = 0; x < w; ++x) {
          dst[x] = row[x];
          sum += row[x];
        }
      }
      if (sums != nullptr) sums[c] = sum;
    }
    return p;
  }
  const int64_t hp = h + 2 * pad, wp = w + 2 * pad;
  Planes p{scratch(slot), s, (hp + s - 1) / s, (wp + s - 1) / s, 0};
  p.plane = p.hq * p.wq;
  p.data.assign(n * s * s * p.plane + 2 * VL + p.wq + 8, 0.f);  // slack for the last tile
  for (int64_t c = 0; c < n; ++c)
    for (int64_t y = 0; y < h; ++y) {
      const int64_t yy = y + pad;
      const float* row = src + (c * h + y) * w;
      float* base = p.data.data() + ((c * s + yy % s) * s) * p.plane + (yy / s) * p.wq;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t xx = x + pad;
        base[(xx % s) * p.plane + xx / s] = row[x];
        if (sums != nullptr) sums[c] += row[x];
      }
    }
  return p;
}

// One register tile: NB (<= OB) output channels x TW wide positions, over every input and
// tap. Filters are read in place: row pointer wrow[b], input i's taps at wrow[b] + coff[i].
template <int64_t NB, int64_t TW>
inline void tile(const float* base, int64_t in_stride, const int64_t* tap, int64_t kk,
                 int64_t n_in, const float* const* wrow, const int64_t* coff, float* out,
                 int64_t ldo) {
  constexpr int64_t NV = TW / VL;
  vfloat acc[NB][NV];
  for (int64_t b = 0; b < NB; ++b)
    for (int64_t v = 0; v < NV; ++v) acc[b][v] = vfloat{} + 0.f;
  for (int64_t i = 0; i < n_in; ++i, base += in_stride) {
    const float* wi[NB];
    for (int64_t b = 0; b < NB; ++b) wi[b] = wrow[b] + coff[i];
    for (int64_t t = 0; t < kk; ++t) {
      const float* src = base + tap[t];
      vfloat x[NV];
      for (int64_t v = 0; v < NV; ++v) __builtin_memcpy(&x[v], src + v * VL, sizeof(vfloat));
      for (int64_t b = 0; b < NB; ++b) {
        const vfloat wb = vfloat{} + wi[b][t];
        for (int64_t v = 0; v < NV; ++v) acc[b][v] += wb * x[v];
      }
    }
  }
  for (int64_t b = 0; b < NB; ++b)
    for (int64_t v = 0; v < NV; ++v)
      __builtin_memcpy(out + b * ldo + v * VL, &acc[b][v], sizeof(vfloat));
}

template <int64_t TW>
void tile_any(int64_t nb, const float* base, int64_t in_stride, const int64_t* tap, int64_t kk,
              int64_t n_in, const float* const* wrow, const int64_t* coff, float* out,
              int64_t ldo) {
#define LV_TILE(n) \
  case n:          \
    return tile<n, TW>(base, in_stride, tap, kk, n_in, wrow, coff, out, ldo);
  switch (nb) {
    LV_TILE(1) LV_TILE(2) LV_TILE(3) LV_TILE(4)
#if defined(__AVX512F__)
    LV_TILE(5) LV_TILE(6) LV_TILE(7) LV_TILE(8)
#endif
    default: TORCH_CHECK(false, "gated_basic_block: bad tile");
  }
#undef LV_TILE
}

// Output channel o uses filter row rows[o] of w ([*, cw, k, k]) and, for input i, column
// cols[i]. Returns out[o][p] for wide positions p (row stride `ldo`).
std::vector<float>& direct_conv(const Planes& in, int64_t n_in, const float* w, int64_t cw,
                                int64_t k, const Index& rows, const Index& cols, int64_t ho,
                                int64_t& ldo) {
  const int64_t n_out = static_cast<int64_t>(rows.size()), kk = k * k, s = in.s;
  const int64_t npos = ho * in.wq;
  // 2 VL-wide tiles, or VL-wide where that wastes fewer positions past the end
  const int64_t tw = (npos + 2 * VL - 1) / (2 * VL) * 2 <= (npos + VL - 1) / VL ? 2 * VL : VL;
  const int64_t groups = (n_out + OB - 1) / OB, tiles = (npos + tw - 1) / tw;
  ldo = tiles * tw;
  std::vector<float>& out = scratch(2);
  out.resize(n_out * ldo);
  std::vector<const float*> wrow(n_out);
  for (int64_t o = 0; o < n_out; ++o) wrow[o] = w + rows[o] * cw * kk;
  std::vector<int64_t> coff(n_in);
  for (int64_t i = 0; i < n_in; ++i) coff[i] = cols[i] * kk;
  // tap offsets inside the input's phase planes
  int64_t tap[64];
  TORCH_CHECK(kk <= 64, "gated_basic_block: kernels up to 8x8");
  for (int64_t kh = 0; kh < k; ++kh)
    for (int64_t kw = 0; kw < k; ++kw)
      tap[kh * k + kw] = ((kh % s) * s + kw % s) * in.plane + (kh / s) * in.wq + kw / s;
  const int64_t unit = OB * tw * n_in * kk;  // MACs of one (group, tile)
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, unit));
  const float* data = in.data.data();
  float* po = out.data();
  // balanced groups (9 channels: 5 + 4, not 8 + 1): a tile of few channels reloads the
  // inputs for little arithmetic
  auto first = [&](int64_t g) { return g * n_out / groups; };
  at::parallel_for(0, groups * tiles, grain, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u % groups, p0 = (u / groups) * tw, o0 = first(g);
      const int64_t nb = first(g + 1) - o0;
      const float* const* wr = wrow.data() + o0;
      float* dst = po + o0 * ldo + p0;
      if (tw == 2 * VL)
        tile_any<2 * VL>(nb, data + p0, s * s * in.plane, tap, kk, n_in, wr, coff.data(), dst,
                         ldo);
      else
        tile_any<VL>(nb, data + p0, s * s * in.plane, tap, kk, n_in, wr, coff.data(), dst, ldo);
    }
  });
  return out;
}

// One block's tensors, in the ops' order: the first convolution, its bias (0 values: none) and
// its batch norm (weight, bias, running mean, running variance), the same for the second, then
// per gate fc1, fc2 weight, fc2 bias and the threshold. The module's own tensors, read as they
// are at the call (the op folds batch norm itself), so nothing derived from them can go stale.
constexpr int kBlockTensors = 20;
const char* const kNames[kBlockTensors] = {
    "w1",     "conv1_bias", "bn1_weight", "bn1_bias", "bn1_mean",  "bn1_var",  "w2",
    "conv2_bias", "bn2_weight", "bn2_bias", "bn2_mean", "bn2_var", "g1_fc1",   "g1_fc2_w",
    "g1_fc2_b", "thre1",    "g2_fc1",     "g2_fc2_w", "g2_fc2_b", "thre2"};

struct Conv {
  int64_t stride, pad;
};

// A block's tensors made contiguous (a channels-last weight is copied), its convolutions'
// strides and paddings, and the batch norms' eps.
struct Block {
  std::array<at::Tensor, kBlockTensors> t;
  Conv a, b;
  double eps1, eps2;
};

void check_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat,
              "gated_basic_block: ", name, " must be a float32 CPU tensor, got ",
              t.defined() ? c10::toString(t.scalar_type()) : "an undefined tensor", " on ",
              t.defined() ? t.device().str() : std::string("-"));
}

// A square filter bank (o, cin, k, k) with 1 <= k <= 8, its bias (o or none) and batch norm.
void check_conv(const at::Tensor* t, int64_t cin, double eps, const char* which) {
  const at::Tensor& w = t[0];
  TORCH_CHECK(w.dim() == 4 && w.size(0) >= 1 && w.size(1) == cin && w.size(2) == w.size(3) &&
                  w.size(2) >= 1 && w.size(2) <= 8,
              "gated_basic_block: ", which, " weight must be (O, ", cin,
              ", k, k) with 1 <= k <= 8, got ", w.sizes());
  const int64_t o = w.size(0);
  TORCH_CHECK(t[1].numel() == 0 || (t[1].dim() == 1 && t[1].size(0) == o), "gated_basic_block: ",
              which, " bias must hold ", o, " values (or none), got ", t[1].sizes());
  for (int i = 2; i < 6; ++i)
    TORCH_CHECK(t[i].dim() == 1 && t[i].size(0) == o, "gated_basic_block: ", which,
                " batch norm tensors must hold ", o, " values each, got ", t[i].sizes());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "gated_basic_block: ", which,
              " batch norm eps must be a finite number >= 0, got ", eps);
}

// A gate over `in` channels giving `out` saliencies: fc1 (hidden, in), fc2 (out, hidden),
// fc2 bias (out), threshold (one value).
void check_gate(const at::Tensor* g, int64_t in, int64_t out, const char* which) {
  TORCH_CHECK(g[0].dim() == 2 && g[0].size(0) >= 1 && g[0].size(1) == in, "gated_basic_block: ",
              which, " fc1 must be (hidden, ", in, "), got ", g[0].sizes());
  const int64_t hid = g[0].size(0);
  TORCH_CHECK(g[1].dim() == 2 && g[1].size(0) == out && g[1].size(1) == hid,
              "gated_basic_block: ", which, " fc2 weight must be (", out, ", ", hid, "), got ",
              g[1].sizes());
  TORCH_CHECK(g[2].dim() == 1 && g[2].size(0) == out, "gated_basic_block: ", which,
              " fc2 bias must hold ", out, " values, got ", g[2].sizes());
  TORCH_CHECK(g[3].numel() == 1, "gated_basic_block: ", which,
              " threshold must be one value, got ", g[3].sizes());
}

int64_t out_size(int64_t in, int64_t k, Conv cv, const char* which) {
  TORCH_CHECK(in + 2 * cv.pad >= k, "gated_basic_block: ", which, "'s input (", in,
              ") padded by ", cv.pad, " is smaller than its kernel ", k);
  return (in + 2 * cv.pad - k) / cv.stride + 1;
}

// Checks block i of `params` (`meta`: 4 ints, `eps`: 2 floats per block) for an input
// (c, h, w) and returns it, contiguous; `shape` gets the output's (o2, ho2, wo2).
Block check_block(at::TensorList params, at::IntArrayRef meta, at::ArrayRef<double> eps,
                  int64_t i, int64_t c, int64_t h, int64_t w, std::array<int64_t, 3>& shape) {
  const at::Tensor* p = params.data() + i * kBlockTensors;
  for (int j = 0; j < kBlockTensors; ++j) check_tensor(p[j], kNames[j]);
  const Conv a{meta[4 * i], meta[4 * i + 1]}, b{meta[4 * i + 2], meta[4 * i + 3]};
  TORCH_CHECK(a.stride >= 1 && b.stride >= 1 && a.pad >= 0 && b.pad >= 0,
              "gated_basic_block: strides must be >= 1 and paddings >= 0, got stride1 ",
              a.stride, ", pad1 ", a.pad, ", stride2 ", b.stride, ", pad2 ", b.pad);
  check_conv(p, c, eps[2 * i], "conv 1");
  const int64_t o1 = p[0].size(0);
  check_conv(p + 6, o1, eps[2 * i + 1], "conv 2");
  check_gate(p + 12, c, o1, "gate 1");
  check_gate(p + 16, o1, p[6].size(0), "gate 2");
  const int64_t ho1 = out_size(h, p[0].size(2), a, "conv 1");
  const int64_t wo1 = out_size(w, p[0].size(2), a, "conv 1");
  shape = {p[6].size(0), out_size(ho1, p[6].size(2), b, "conv 2"),
           out_size(wo1, p[6].size(2), b, "conv 2")};
  Block blk{{}, a, b, eps[2 * i], eps[2 * i + 1]};
  for (int j = 0; j < kBlockTensors; ++j) blk.t[j] = p[j].contiguous();
  return blk;
}

void check_cap(double cap) {
  TORCH_CHECK(std::isfinite(cap) && cap >= 0, "gated_basic_block: cap must be a finite number "
              ">= 0, got ", cap);
}

// Batch norm after a convolution as one affine map per channel, as BN folding computes it:
// y = conv(x, w) * scale + shift, scale = gamma / sqrt(var + eps),
// shift = beta - mean * scale + conv_bias * scale.
void bn_affine(const at::Tensor* t, double eps, std::vector<float>& scale,
               std::vector<float>& shift) {
  const int64_t o = t[0].size(0);
  const float* cb = t[1].numel() ? t[1].data_ptr<float>() : nullptr;
  const float *g = t[2].data_ptr<float>(), *be = t[3].data_ptr<float>();
  const float *mu = t[4].data_ptr<float>(), *var = t[5].data_ptr<float>();
  const float e = static_cast<float>(eps);
  scale.resize(o);
  shift.resize(o);
  for (int64_t c = 0; c < o; ++c) {
    const float sc = g[c] / std::sqrt(var[c] + e);
    scale[c] = sc;
    shift[c] = be[c] - mu[c] * sc + (cb ? cb[c] * sc : 0.f);
  }
}

// One gated block on raw buffers: input px (c, h, w), shortcut sc and output po (o2, ho2, wo2;
// po must not alias px or sc). Writes the kept counts to pc[0], pc[1].
void run_block(const float* px, int64_t c, int64_t h, int64_t w, const float* sc, float* po,
               const Block& blk, double cap, int64_t* pc) {
  const at::Tensor* p = blk.t.data();
  const at::Tensor &w1 = p[0], &w2 = p[6];
  const Conv a = blk.a, b = blk.b;
  const int64_t o1 = w1.size(0), k1 = w1.size(2), o2 = w2.size(0), k2 = w2.size(2);
  const int64_t ho1 = (h + 2 * a.pad - k1) / a.stride + 1;
  const int64_t wo1 = (w + 2 * a.pad - k1) / a.stride + 1;
  const int64_t ho2 = (ho1 + 2 * b.pad - k2) / b.stride + 1;
  const int64_t wo2 = (wo1 + 2 * b.pad - k2) / b.stride + 1;
  const int64_t plane2 = ho2 * wo2;
  std::vector<float> scale1, shift1, scale2, shift2;
  bn_affine(p, blk.eps1, scale1, shift1);
  bn_affine(p + 6, blk.eps2, scale2, shift2);

  // conv 1's input planes and, in the same pass, gate 1's pooled input
  std::vector<float> pooled1(c);
  const Planes xin = prepare(px, c, h, w, a.pad, a.stride, 0, pooled1.data());
  Index all_in(c);
  for (int64_t i = 0; i < c; ++i) {
    pooled1[i] /= static_cast<float>(h * w);
    all_in[i] = i;
  }
  const auto s1 = gate(pooled1.data(), all_in, p[12], p[13], p[14], cap);
  const Index keep1 = kept(s1, *p[15].data_ptr<float>());
  const int64_t n1 = static_cast<int64_t>(keep1.size());
  pc[0] = n1;  // with none kept, gate 2 sees zeros and conv 2 gives its bias alone

  // conv 1 over the kept filters; batch norm, relu and saliency, pooled for gate 2 on the way
  int64_t ldo = 0;
  const std::vector<float>& wide1 = direct_conv(xin, c, w1.data_ptr<float>(), c, k1, keep1,
                                                all_in, ho1, ldo);
  // conv 2 reads h from padded planes: at stride 1 the epilogue writes them directly
  const bool direct = b.stride == 1;
  Planes hpad = direct ? padded(n1, ho1, wo1, b.pad, 1) : Planes{scratch(1), 1, 0, 0, 0};
  std::vector<float>& hbuf = scratch(4);
  if (!direct) hbuf.resize(n1 * ho1 * wo1);
  std::vector<float> pooled2(n1);
  for (int64_t o = 0; o < n1; ++o) {
    const float mul = scale1[keep1[o]], add = shift1[keep1[o]], sal = s1[keep1[o]];
    float sum = 0.f;
    for (int64_t y = 0; y < ho1; ++y) {
      const float* src = wide1.data() + o * ldo + y * xin.wq;
      float* dst = direct ? interior(hpad, o, y, b.pad) : hbuf.data() + (o * ho1 + y) * wo1;
      for (int64_t j = 0; j < wo1; ++j) {
        const float v = src[j] * mul + add;
        dst[j] = v > 0.f ? v * sal : 0.f;
        sum += dst[j];
      }
    }
    pooled2[o] = sum / static_cast<float>(ho1 * wo1);
  }

  const auto s2 = gate(pooled2.data(), keep1, p[16], p[17], p[18], cap);
  const Index keep2 = kept(s2, *p[19].data_ptr<float>());
  const int64_t n2 = static_cast<int64_t>(keep2.size());
  pc[1] = n2;
  std::vector<char> written(o2, 0);
  for (int64_t ch : keep2) written[ch] = 1;
  for (int64_t ch = 0; ch < o2; ++ch)  // channels conv 2 does not write: relu(shortcut)
    if (!written[ch])
      for (int64_t i = ch * plane2; i < (ch + 1) * plane2; ++i) po[i] = sc[i] > 0.f ? sc[i] : 0.f;
  if (n2 == 0) return;

  // conv 2: kept inputs (keep1) to kept outputs (keep2), added into the shortcut, relu
  const Planes hin = direct ? hpad : prepare(hbuf.data(), n1, ho1, wo1, b.pad, b.stride, 1);
  const std::vector<float>& wide2 = direct_conv(hin, n1, w2.data_ptr<float>(), o1, k2, keep2,
                                                keep1, ho2, ldo);
  for (int64_t o = 0; o < n2; ++o) {
    const int64_t ch = keep2[o];
    const float mul = scale2[ch], add = shift2[ch], sal = s2[ch];
    for (int64_t y = 0; y < ho2; ++y) {
      const float* acc = wide2.data() + o * ldo + y * hin.wq;
      const float* src = sc + ch * plane2 + y * wo2;
      float* dst = po + ch * plane2 + y * wo2;
      for (int64_t j = 0; j < wo2; ++j) {
        const float v = src[j] + (acc[j] * mul + add) * sal;
        dst[j] = v > 0.f ? v : 0.f;
      }
    }
  }
}

// x (1, C, H, W) float32 on CPU, contiguous (copied if not).
at::Tensor check_input(const at::Tensor& x, const char* op) {
  check_tensor(x, "x");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == 1 && x.size(1) >= 1 && x.size(2) >= 1 &&
                  x.size(3) >= 1,
              op, ": x must be (1, C, H, W) with no empty dimension, got ", x.sizes());
  return x.contiguous();
}

void check_counts(const char* op, int64_t n, at::TensorList params, at::IntArrayRef meta,
                  at::ArrayRef<double> eps) {
  TORCH_CHECK(n >= 1 && static_cast<int64_t>(params.size()) == n * kBlockTensors &&
                  static_cast<int64_t>(meta.size()) == 4 * n &&
                  static_cast<int64_t>(eps.size()) == 2 * n,
              op, ": ", kBlockTensors, " tensors, 4 ints and 2 eps per block; got ",
              params.size(), " tensors, ", meta.size(), " ints and ", eps.size(), " eps");
}

// One block: `params` its 20 tensors (kNames), `meta` (stride1, pad1, stride2, pad2), `eps`
// its two batch norms' eps. Returns (out, kept counts [n1, n2]).
std::tuple<at::Tensor, at::Tensor> gated_basic_block(const at::Tensor& x_in,
                                                     const at::Tensor& shortcut_in,
                                                     at::TensorList params, at::IntArrayRef meta,
                                                     at::ArrayRef<double> eps, double cap) {
  const at::Tensor x = check_input(x_in, "gated_basic_block");
  check_tensor(shortcut_in, "shortcut");
  check_cap(cap);
  check_counts("gated_basic_block", 1, params, meta, eps);
  std::array<int64_t, 3> shape{};
  const Block blk = check_block(params, meta, eps, 0, x.size(1), x.size(2), x.size(3), shape);
  TORCH_CHECK(shortcut_in.dim() == 4 && shortcut_in.size(0) == 1 &&
                  shortcut_in.size(1) == shape[0] && shortcut_in.size(2) == shape[1] &&
                  shortcut_in.size(3) == shape[2],
              "gated_basic_block: shortcut must be (1, ", shape[0], ", ", shape[1], ", ",
              shape[2], ") like the block's output, got ", shortcut_in.sizes());
  const at::Tensor shortcut = shortcut_in.contiguous();
  at::Tensor out = at::empty_like(shortcut, at::MemoryFormat::Contiguous);
  at::Tensor counts = at::zeros({2}, at::kLong);
  run_block(x.data_ptr<float>(), x.size(1), x.size(2), x.size(3), shortcut.data_ptr<float>(),
            out.data_ptr<float>(), blk, cap, counts.data_ptr<int64_t>());
  return {out, counts};
}

// A run of gated blocks with identity shortcuts (each output has its input's shape), in one
// call: `params` holds 20 tensors per block (gated_basic_block's order), `meta` 4 ints and
// `eps` 2 floats per block. Saves the per-block op dispatch and Python module calls (about
// 8 us a block, 5 % of a pruned CIFAR ResNet-56 at batch 1). Returns (out, kept counts
// [blocks, 2]).
std::tuple<at::Tensor, at::Tensor> gated_block_chain(const at::Tensor& x_in,
                                                     at::TensorList params,
                                                     at::IntArrayRef meta,
                                                     at::ArrayRef<double> eps, double cap) {
  const at::Tensor x = check_input(x_in, "gated_block_chain");
  check_cap(cap);
  const int64_t n = static_cast<int64_t>(params.size()) / kBlockTensors;
  check_counts("gated_block_chain", n, params, meta, eps);
  const int64_t c = x.size(1), h = x.size(2), w = x.size(3);
  std::vector<Block> blocks;
  blocks.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    std::array<int64_t, 3> shape{};
    blocks.push_back(check_block(params, meta, eps, i, c, h, w, shape));
    TORCH_CHECK(shape[0] == c && shape[1] == h && shape[2] == w,
                "gated_block_chain: block ", i, " changes the shape (identity shortcuts only)");
  }
  at::Tensor buf[2] = {at::empty_like(x), at::empty_like(x)};
  at::Tensor counts = at::zeros({n, 2}, at::kLong);
  const float* in = x.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    float* out = buf[i % 2].data_ptr<float>();
    run_block(in, c, h, w, in, out, blocks[i], cap, counts.data_ptr<int64_t>() + 2 * i);
    in = out;
  }
  return {buf[(n - 1) % 2], counts};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leanvision, m) {
  m.def("gated_block_isa() -> str", &gated_block_isa);
  m.def(
      "gated_basic_block(Tensor x, Tensor shortcut, Tensor[] params, int[] meta, float[] eps, "
      "float cap) -> (Tensor, Tensor)");
  m.def(
      "gated_block_chain(Tensor x, Tensor[] params, int[] meta, float[] eps, float cap) -> "
      "(Tensor, Tensor)");
  m.impl("gated_basic_block", c10::DispatchKey::CPU, &gated_basic_block);
  m.impl("gated_block_chain", c10::DispatchKey::CPU, &gated_block_chain);
}
