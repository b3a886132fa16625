
// ManiDP's gated basic block at batch 1, in one call (Tang et al., CVPR 2021, arXiv 2103.05861).
//
// The Python path runs ~45 small ATen ops per block, each costing 2-5 us of dispatch, and
// ATen's batch-1 convolution (im2col + GEMM) barely gets faster with fewer channels. Here the
// gate MLPs, the thresholds and two direct convolutions that read only the kept channels'
// filters run in one op: no im2col, no weight gathering, one pass per epilogue.
//
// Semantics (equal to GatedBasicBlock's masked forward, BN folded into w1/b1 and w2/b2):
//   s1 = clamp(fc2_1(relu(fc1_1(mean_hw(x)))), 0, cap); keep1 = s1 > 0 and s1 >= thre1
//   h  = relu(conv(x, w1[keep1]) + b1[keep1]) * s1[keep1]
//   s2 = clamp(fc2_2(relu(fc1_2[:, keep1](mean_hw(h)))), 0, cap); keep2 likewise (keep1 may
//        be empty: then h is zero and the second convolution yields its bias alone)
//   out = relu(shortcut + scatter_keep2((conv(h, w2[keep2][:, keep1]) + b2[keep2]) * s2))
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
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

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "gated_basic_block: ", name, " must be a contiguous float32 CPU tensor");
}

// The tensors of one block, BN folded: w1, b1, w2, b2, then per gate fc1, fc2 weight, fc2 bias
// and the threshold (the op's argument order).
constexpr int kBlockTensors = 12;
const char* const kNames[kBlockTensors] = {"w1",       "b1",       "w2",    "b2",
                                           "g1_fc1",   "g1_fc2_w", "g1_fc2_b", "thre1",
                                           "g2_fc1",   "g2_fc2_w", "g2_fc2_b", "thre2"};

struct Conv {
  int64_t stride, pad;
};

// Checks one block's tensors for an input (c, h, w); returns the output's (o2, ho2, wo2).
std::array<int64_t, 3> check_block(const at::Tensor* p, int64_t c, int64_t h, int64_t w, Conv a,
                                   Conv b) {
  for (int i = 0; i < kBlockTensors; ++i) check(p[i], kNames[i]);
  const at::Tensor &w1 = p[0], &w2 = p[2];
  TORCH_CHECK(w1.dim() == 4 && w2.dim() == 4, "gated_basic_block: conv weights must be 4-d");
  TORCH_CHECK(p[7].numel() == 1 && p[11].numel() == 1, "gated_basic_block: one threshold each");
  TORCH_CHECK(w1.size(1) == c && w2.size(1) == w1.size(0),
              "gated_basic_block: channel mismatch");
  TORCH_CHECK(a.stride >= 1 && b.stride >= 1 && a.pad >= 0 && b.pad >= 0,
              "gated_basic_block: bad stride or padding");
  const int64_t ho1 = (h + 2 * a.pad - w1.size(2)) / a.stride + 1;
  const int64_t wo1 = (w + 2 * a.pad - w1.size(2)) / a.stride + 1;
  return {w2.size(0), (ho1 + 2 * b.pad - w2.size(2)) / b.stride + 1,
          (wo1 + 2 * b.pad - w2.size(2)) / b.stride + 1};
}

// One gated block on raw buffers: input px (c, h, w), shortcut sc and output po (o2, ho2, wo2;
// po must not alias px or sc). Writes the kept counts to pc[0], pc[1].
void run_block(const float* px, int64_t c, int64_t h, int64_t w, const float* sc, float* po,
               const at::Tensor* p, double cap, Conv a, Conv b, int64_t* pc) {
  const at::Tensor &w1 = p[0], &b1 = p[1], &w2 = p[2], &b2 = p[3];
  const int64_t o1 = w1.size(0), k1 = w1.size(2), o2 = w2.size(0), k2 = w2.size(2);
  const int64_t ho1 = (h + 2 * a.pad - k1) / a.stride + 1;
  const int64_t wo1 = (w + 2 * a.pad - k1) / a.stride + 1;
  const int64_t ho2 = (ho1 + 2 * b.pad - k2) / b.stride + 1;
  const int64_t wo2 = (wo1 + 2 * b.pad - k2) / b.stride + 1;
  const int64_t plane2 = ho2 * wo2;

  // conv 1's input planes and, in the same pass, gate 1's pooled input
  std::vector<float> pooled1(c);
  const Planes xin = prepare(px, c, h, w, a.pad, a.stride, 0, pooled1.data());
  Index all_in(c);
  for (int64_t i = 0; i < c; ++i) {
    pooled1[i] /= static_cast<float>(h * w);
    all_in[i] = i;
  }
  const auto s1 = gate(pooled1.data(), all_in, p[4], p[5], p[6], cap);
  const Index keep1 = kept(s1, *p[7].data_ptr<float>());
  const int64_t n1 = static_cast<int64_t>(keep1.size());
  pc[0] = n1;  // with none kept, gate 2 sees zeros and conv 2 gives its bias alone

  // conv 1 over the kept filters; bias, relu and saliency, pooled for gate 2 on the way
  int64_t ldo = 0;
  const std::vector<float>& wide1 = direct_conv(xin, c, w1.data_ptr<float>(), c, k1, keep1,
                                                all_in, ho1, ldo);
  // conv 2 reads h from padded planes: at stride 1 the epilogue writes them directly
  const bool direct = b.stride == 1;
  Planes hpad = direct ? padded(n1, ho1, wo1, b.pad, 1) : Planes{scratch(1), 1, 0, 0, 0};
  std::vector<float>& hbuf = scratch(4);
  if (!direct) hbuf.resize(n1 * ho1 * wo1);
  std::vector<float> pooled2(n1);
  const float* pb1 = b1.data_ptr<float>();
  for (int64_t o = 0; o < n1; ++o) {
    const float bias = pb1[keep1[o]], sal = s1[keep1[o]];
    float sum = 0.f;
    for (int64_t y = 0; y < ho1; ++y) {
      const float* src = wide1.data() + o * ldo + y * xin.wq;
      float* dst = direct ? interior(hpad, o, y, b.pad) : hbuf.data() + (o * ho1 + y) * wo1;
      for (int64_t j = 0; j < wo1; ++j) {
        const float v = src[j] + bias;
        dst[j] = v > 0.f ? v * sal : 0.f;
        sum += dst[j];
      }
    }
    pooled2[o] = sum / static_cast<float>(ho1 * wo1);
  }

  const auto s2 = gate(pooled2.data(), keep1, p[8], p[9], p[10], cap);
  const Index keep2 = kept(s2, *p[11].data_ptr<float>());
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
  const float* pb2 = b2.data_ptr<float>();
  for (int64_t o = 0; o < n2; ++o) {
    const int64_t ch = keep2[o];
    const float bias = pb2[ch], sal = s2[ch];
    for (int64_t y = 0; y < ho2; ++y) {
      const float* acc = wide2.data() + o * ldo + y * hin.wq;
      const float* src = sc + ch * plane2 + y * wo2;
      float* dst = po + ch * plane2 + y * wo2;
      for (int64_t j = 0; j < wo2; ++j) {
        const float v = src[j] + (acc[j] + bias) * sal;
        dst[j] = v > 0.f ? v : 0.f;
      }
    }
  }
}

void check_input(const at::Tensor& x, const char* op) {
  check(x, "x");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == 1, op, ": x must be (1, C, H, W)");
}

// Returns (out, kept counts [n1, n2]).
std::tuple<at::Tensor, at::Tensor> gated_basic_block(
    const at::Tensor& x, const at::Tensor& shortcut, const at::Tensor& w1, const at::Tensor& b1,
    const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& g1_fc1,
    const at::Tensor& g1_fc2_w, const at::Tensor& g1_fc2_b, const at::Tensor& thre1,
    const at::Tensor& g2_fc1, const at::Tensor& g2_fc2_w, const at::Tensor& g2_fc2_b,
    const at::Tensor& thre2, double cap, int64_t stride1, int64_t pad1, int64_t stride2,
    int64_t pad2) {
  check_input(x, "gated_basic_block");
  check(shortcut, "shortcut");
  const at::Tensor p[kBlockTensors] = {w1,     b1,       w2,       b2,    g1_fc1,   g1_fc2_w,
                                       g1_fc2_b, thre1, g2_fc1, g2_fc2_w, g2_fc2_b, thre2};
  const Conv a{stride1, pad1}, b{stride2, pad2};
  const auto shape = check_block(p, x.size(1), x.size(2), x.size(3), a, b);
  TORCH_CHECK(shortcut.dim() == 4 && shortcut.size(0) == 1 && shortcut.size(1) == shape[0] &&
                  shortcut.size(2) == shape[1] && shortcut.size(3) == shape[2],
              "gated_basic_block: shortcut shape does not match the block's output");
  at::Tensor out = at::empty_like(shortcut);
  at::Tensor counts = at::zeros({2}, at::kLong);
  run_block(x.data_ptr<float>(), x.size(1), x.size(2), x.size(3), shortcut.data_ptr<float>(),
            out.data_ptr<float>(), p, cap, a, b, counts.data_ptr<int64_t>());
  return {out, counts};
}

// A run of gated blocks with identity shortcuts (each output has its input's shape), in one
// call: `params` holds 12 tensors per block (gated_basic_block's order), `meta` 4 ints per
// block (stride1, pad1, stride2, pad2). Saves the per-block op dispatch and Python module
// calls (about 8 us a block, 5 % of a pruned CIFAR ResNet-56 at batch 1). Returns (out, kept
// counts [blocks, 2]).
std::tuple<at::Tensor, at::Tensor> gated_block_chain(const at::Tensor& x,
                                                     at::TensorList params,
                                                     at::IntArrayRef meta, double cap) {
  check_input(x, "gated_block_chain");
  const int64_t n = static_cast<int64_t>(params.size()) / kBlockTensors;
  TORCH_CHECK(n >= 1 && static_cast<int64_t>(params.size()) == n * kBlockTensors &&
                  static_cast<int64_t>(meta.size()) == 4 * n,
              "gated_block_chain: 12 tensors and 4 ints per block");
  const int64_t c = x.size(1), h = x.size(2), w = x.size(3);
  for (int64_t i = 0; i < n; ++i) {
    const auto shape = check_block(params.data() + i * kBlockTensors, c, h, w,
                                   Conv{meta[4 * i], meta[4 * i + 1]},
                                   Conv{meta[4 * i + 2], meta[4 * i + 3]});
    TORCH_CHECK(shape[0] == c && shape[1] == h && shape[2] == w,
                "gated_block_chain: block ", i, " changes the shape (identity shortcuts only)");
  }
  at::Tensor buf[2] = {at::empty_like(x), at::empty_like(x)};
  at::Tensor counts = at::zeros({n, 2}, at::kLong);
  const float* in = x.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    float* out = buf[i % 2].data_ptr<float>();
    run_block(in, c, h, w, in, out, params.data() + i * kBlockTensors, cap,
              Conv{meta[4 * i], meta[4 * i + 1]}, Conv{meta[4 * i + 2], meta[4 * i + 3]},
              counts.data_ptr<int64_t>() + 2 * i);
    in = out;
  }
  return {buf[(n - 1) % 2], counts};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leanvision, m) {
  m.def(
      "gated_basic_block(Tensor x, Tensor shortcut, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
      "Tensor g1_fc1, Tensor g1_fc2_w, Tensor g1_fc2_b, Tensor thre1, Tensor g2_fc1, "
      "Tensor g2_fc2_w, Tensor g2_fc2_b, Tensor thre2, float cap, int stride1, int pad1, "
      "int stride2, int pad2) -> (Tensor, Tensor)");
  m.def(
      "gated_block_chain(Tensor x, Tensor[] params, int[] meta, float cap) -> (Tensor, Tensor)");
  m.impl("gated_basic_block", c10::DispatchKey::CPU, &gated_basic_block);
  m.impl("gated_block_chain", c10::DispatchKey::CPU, &gated_block_chain);
}
