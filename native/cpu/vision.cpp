// Qwen2.5-VL vision tower, CPU (see vision.h). Layout of one image's activations: rows are patches in window order
// (the merged 2x2 groups of each window together, windows row-major per frame), columns the tower's hidden size.
#include "vision.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "../src/loader.h"
#include "kernels.h"
#include "thread_pool.h"

namespace dsg {

namespace {

std::string dims(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

VisionTower::~VisionTower() = default;

int64_t VisionTower::patchDim() const {
  return (int64_t)desc_.inChannels * desc_.temporalPatchSize * desc_.patchSize * desc_.patchSize;
}

VisionTower::VisionTower(const VisionDesc& d, const std::vector<TensorRefDesc>& tensors, int threads) : desc_(d) {
  auto positive = [](const char* f, int v) {
    if (v <= 0) throw EngineError("LLM_ERR_MODEL_FORMAT", std::string("vision spec: ") + f + " must be > 0, got " + std::to_string(v));
  };
  positive("depth", d.depth);
  positive("hiddenSize", d.hiddenSize);
  positive("intermediateSize", d.intermediateSize);
  positive("numHeads", d.numHeads);
  positive("inChannels", d.inChannels);
  positive("outHiddenSize", d.outHiddenSize);
  positive("patchSize", d.patchSize);
  positive("spatialMergeSize", d.spatialMergeSize);
  positive("temporalPatchSize", d.temporalPatchSize);
  positive("windowSize", d.windowSize);
  if (d.hiddenSize % d.numHeads != 0 || (d.hiddenSize / d.numHeads) % 4 != 0)
    throw EngineError("LLM_ERR_MODEL_FORMAT", "vision spec: hiddenSize / numHeads must be a multiple of 4 (2-D rotary halves)");
  if (d.windowSize % (d.patchSize * d.spatialMergeSize) != 0)
    throw EngineError("LLM_ERR_MODEL_FORMAT", "vision spec: windowSize must be a multiple of patchSize * spatialMergeSize");
  if (!(d.rmsNormEps > 0)) throw EngineError("LLM_ERR_MODEL_FORMAT", "vision spec: rmsNormEps must be > 0");
  for (int b : d.fullAttBlockIndexes)
    if (b < 0 || b >= d.depth) throw EngineError("LLM_ERR_MODEL_FORMAT", "vision spec: fullAttBlockIndexes has " + std::to_string(b) + ", outside [0, depth)");

  std::map<std::string, const TensorRefDesc*> byName;
  for (const TensorRefDesc& t : tensors) byName[t.name] = &t;
  std::map<std::string, MappedFile*> fileOf;
  auto find = [&](const std::string& name, std::vector<int64_t> shape) -> std::pair<const void*, DType> {
    auto it = byName.find(name);
    if (it == byName.end()) throw EngineError("LLM_ERR_SHAPE_MISMATCH", "vision tensor " + name + " is missing from the spec");
    const TensorRefDesc& t = *it->second;
    if (t.shape != shape)
      throw EngineError("LLM_ERR_SHAPE_MISMATCH", "vision tensor " + name + " has shape " + dims(t.shape) + ", expected " + dims(shape));
    MappedFile*& f = fileOf[t.file];
    if (f == nullptr) {
      files_.push_back(std::make_unique<MappedFile>(t.file));
      f = files_.back().get();
    }
    uint64_t n = 1;
    for (int64_t s : shape) n *= (uint64_t)s;
    const uint64_t bytes = n * dtypeSize(t.dtype);
    if (t.offset > f->size() || bytes > f->size() - t.offset)
      throw EngineError("LLM_ERR_MODEL_FORMAT", "vision tensor " + name + " runs past the end of " + t.file);
    return {f->data() + t.offset, t.dtype};
  };
  auto mat = [&](const std::string& name, std::vector<int64_t> shape) {
    auto [p, dt] = find(name, std::move(shape));
    return Mat{p, dt};
  };
  auto vec = [&](const std::string& name, int64_t n) {
    auto [p, dt] = find(name, {n});
    std::vector<float> v((size_t)n);
    toF32(p, dt, n, v.data());
    return v;
  };
  const int64_t H = d.hiddenSize, I = d.intermediateSize;
  const int64_t M = H * d.spatialMergeSize * d.spatialMergeSize;
  patchEmbed_ = mat("visual.patch_embed.proj.weight", {H, d.inChannels, d.temporalPatchSize, d.patchSize, d.patchSize});
  blocks_.resize((size_t)d.depth);
  for (int l = 0; l < d.depth; ++l) {
    const std::string b = "visual.blocks." + std::to_string(l) + ".";
    Block& k = blocks_[(size_t)l];
    k.norm1 = vec(b + "norm1.weight", H);
    k.norm2 = vec(b + "norm2.weight", H);
    k.qkv = mat(b + "attn.qkv.weight", {3 * H, H});
    k.qkvBias = vec(b + "attn.qkv.bias", 3 * H);
    k.proj = mat(b + "attn.proj.weight", {H, H});
    k.projBias = vec(b + "attn.proj.bias", H);
    k.gate = mat(b + "mlp.gate_proj.weight", {I, H});
    k.gateBias = vec(b + "mlp.gate_proj.bias", I);
    k.up = mat(b + "mlp.up_proj.weight", {I, H});
    k.upBias = vec(b + "mlp.up_proj.bias", I);
    k.down = mat(b + "mlp.down_proj.weight", {H, I});
    k.downBias = vec(b + "mlp.down_proj.bias", H);
    k.fullAttention = std::find(d.fullAttBlockIndexes.begin(), d.fullAttBlockIndexes.end(), l) != d.fullAttBlockIndexes.end();
  }
  mergerNorm_ = vec("visual.merger.ln_q.weight", H);
  mergerFc1_ = mat("visual.merger.mlp.0.weight", {M, M});
  mergerBias1_ = vec("visual.merger.mlp.0.bias", M);
  mergerFc2_ = mat("visual.merger.mlp.2.weight", {d.outHiddenSize, M});
  mergerBias2_ = vec("visual.merger.mlp.2.bias", d.outHiddenSize);
  pool_ = std::make_unique<ThreadPool>(std::max(1, threads));
}

void VisionTower::encode(const float* pixels, int t, int h, int w, float* out) {
  const VisionDesc& d = desc_;
  const int m = d.spatialMergeSize, unit = m * m;
  const int64_t H = d.hiddenSize, I = d.intermediateSize, heads = d.numHeads, hd = H / heads;
  const int64_t N = (int64_t)t * h * w, units = N / unit;
  const int Hm = h / m, Wm = w / m;

  // Window order of the merged units: per frame, windows of ws x ws units row-major (partial ones at the bottom and
  // right edges), units row-major inside each. Segments: runs of patches that attend to each other.
  const int ws = d.windowSize / m / d.patchSize;
  std::vector<int64_t> order;  // order[k]: the unit (in the processor's order) at window position k
  std::vector<int64_t> windowSegs{0};
  order.reserve((size_t)units);
  for (int f = 0; f < t; ++f)
    for (int wy = 0; wy < Hm; wy += ws)
      for (int wx = 0; wx < Wm; wx += ws) {
        for (int y = wy; y < std::min(wy + ws, Hm); ++y)
          for (int x = wx; x < std::min(wx + ws, Wm); ++x) order.push_back(((int64_t)f * Hm + y) * Wm + x);
        windowSegs.push_back((int64_t)order.size() * unit);
      }
  std::vector<int64_t> frameSegs{0};
  for (int f = 0; f < t; ++f) frameSegs.push_back((int64_t)(f + 1) * h * w);

  // Rotary angles per patch (window order): (row, col) of the patch, frequencies of the row then of the column.
  const int64_t quarter = hd / 4;
  std::vector<float> cosT((size_t)(N * hd / 2)), sinT((size_t)(N * hd / 2));
  for (int64_t k = 0; k < units; ++k) {
    const int64_t u = order[(size_t)k];
    const int64_t y = (u / Wm) % Hm, x = u % Wm;
    for (int j = 0; j < unit; ++j) {
      const int64_t row = y * m + j / m, col = x * m + j % m;
      const int64_t p = k * unit + j;
      for (int64_t i = 0; i < quarter; ++i) {
        const double invFreq = 1.0 / std::pow(10000.0, (double)(2 * i) / (double)(hd / 2));
        const double a = (double)row * invFreq, b = (double)col * invFreq;
        cosT[(size_t)(p * hd / 2 + i)] = (float)std::cos(a);
        sinT[(size_t)(p * hd / 2 + i)] = (float)std::sin(a);
        cosT[(size_t)(p * hd / 2 + quarter + i)] = (float)std::cos(b);
        sinT[(size_t)(p * hd / 2 + quarter + i)] = (float)std::sin(b);
      }
    }
  }

  // Patch embedding (the Conv3d with kernel = stride is a matmul), rows moved to window order.
  const int64_t P = patchDim();
  std::vector<float> x((size_t)(N * H)), tmp((size_t)(N * H));
  matmul(*pool_, pixels, N, P, patchEmbed_.data, patchEmbed_.dtype, H, nullptr, tmp.data(), H);
  for (int64_t k = 0; k < units; ++k)
    std::copy_n(tmp.data() + order[(size_t)k] * unit * H, unit * H, x.data() + k * unit * H);

  std::vector<float> y((size_t)(N * H)), qkv((size_t)(N * 3 * H)), attn((size_t)(N * H));
  std::vector<float> g((size_t)(N * I)), up((size_t)(N * I));
  const float scale = 1.0f / std::sqrt((float)hd);
  const int64_t maxSeg = std::max((int64_t)h * w, (int64_t)ws * ws * unit);
  std::vector<float> scratch((size_t)(pool_->size() * maxSeg));
  std::vector<int64_t> segOf((size_t)N);

  for (const Block& blk : blocks_) {
    const std::vector<int64_t>& segs = blk.fullAttention ? frameSegs : windowSegs;
    for (size_t s = 0; s + 1 < segs.size(); ++s)
      for (int64_t p = segs[s]; p < segs[s + 1]; ++p) segOf[(size_t)p] = (int64_t)s;
    for (int64_t p = 0; p < N; ++p) rmsNorm(x.data() + p * H, blk.norm1.data(), H, d.rmsNormEps, y.data() + p * H);
    matmul(*pool_, y.data(), N, H, blk.qkv.data, blk.qkv.dtype, 3 * H, blk.qkvBias.data(), qkv.data(), 3 * H);
    // Rotate-half rotary on q and k of every head.
    pool_->parallelFor(N, [&](int64_t b, int64_t e, int) {
      for (int64_t p = b; p < e; ++p)
        for (int part = 0; part < 2; ++part)
          for (int64_t hh = 0; hh < heads; ++hh) {
            float* v = qkv.data() + p * 3 * H + part * H + hh * hd;
            const float* c = cosT.data() + p * hd / 2;
            const float* sn = sinT.data() + p * hd / 2;
            for (int64_t i = 0; i < hd / 2; ++i) {
              const float a = v[i], bb = v[i + hd / 2];
              v[i] = a * c[i] - bb * sn[i];
              v[i + hd / 2] = bb * c[i] + a * sn[i];
            }
          }
    });
    // Softmax attention of each (patch, head) over its segment, no mask.
    pool_->parallelFor(N * heads, [&](int64_t b, int64_t e, int th) {
      float* sc = scratch.data() + (size_t)th * maxSeg;
      for (int64_t r = b; r < e; ++r) {
        const int64_t p = r / heads, hh = r % heads;
        const int64_t s = segOf[(size_t)p], k0 = segs[(size_t)s], k1 = segs[(size_t)s + 1];
        const float* q = qkv.data() + p * 3 * H + hh * hd;
        float mx = -INFINITY;
        for (int64_t k = k0; k < k1; ++k) {
          const float* kk = qkv.data() + k * 3 * H + H + hh * hd;
          float dot = 0;
          for (int64_t i = 0; i < hd; ++i) dot += q[i] * kk[i];
          sc[k - k0] = dot * scale;
          mx = std::max(mx, sc[k - k0]);
        }
        float sum = 0;
        for (int64_t k = k0; k < k1; ++k) sum += (sc[k - k0] = std::exp(sc[k - k0] - mx));
        float* o = attn.data() + p * H + hh * hd;
        std::fill(o, o + hd, 0.0f);
        for (int64_t k = k0; k < k1; ++k) {
          const float wgt = sc[k - k0] / sum;
          const float* vv = qkv.data() + k * 3 * H + 2 * H + hh * hd;
          for (int64_t i = 0; i < hd; ++i) o[i] += wgt * vv[i];
        }
      }
    });
    matmul(*pool_, attn.data(), N, H, blk.proj.data, blk.proj.dtype, H, blk.projBias.data(), tmp.data(), H);
    for (int64_t i = 0; i < N * H; ++i) x[(size_t)i] += tmp[(size_t)i];
    for (int64_t p = 0; p < N; ++p) rmsNorm(x.data() + p * H, blk.norm2.data(), H, d.rmsNormEps, y.data() + p * H);
    matmul(*pool_, y.data(), N, H, blk.gate.data, blk.gate.dtype, I, blk.gateBias.data(), g.data(), I);
    matmul(*pool_, y.data(), N, H, blk.up.data, blk.up.dtype, I, blk.upBias.data(), up.data(), I);
    for (int64_t i = 0; i < N * I; ++i) {
      const float a = g[(size_t)i];
      g[(size_t)i] = a / (1.0f + std::exp(-a)) * up[(size_t)i];
    }
    matmul(*pool_, g.data(), N, I, blk.down.data, blk.down.dtype, H, blk.downBias.data(), tmp.data(), H);
    for (int64_t i = 0; i < N * H; ++i) x[(size_t)i] += tmp[(size_t)i];
  }

  // Merger: RMSNorm per patch, the unit's patches side by side, Linear - GELU (erf) - Linear; rows back to the
  // processor's order.
  for (int64_t p = 0; p < N; ++p) rmsNorm(x.data() + p * H, mergerNorm_.data(), H, d.rmsNormEps, y.data() + p * H);
  const int64_t Mw = H * unit;
  std::vector<float> h1((size_t)(units * Mw)), h2((size_t)(units * d.outHiddenSize));
  matmul(*pool_, y.data(), units, Mw, mergerFc1_.data, mergerFc1_.dtype, Mw, mergerBias1_.data(), h1.data(), Mw);
  for (float& v : h1) v = 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
  matmul(*pool_, h1.data(), units, Mw, mergerFc2_.data, mergerFc2_.dtype, d.outHiddenSize, mergerBias2_.data(), h2.data(), d.outHiddenSize);
  for (int64_t k = 0; k < units; ++k)
    std::copy_n(h2.data() + k * d.outHiddenSize, d.outHiddenSize, out + order[(size_t)k] * d.outHiddenSize);
}

}  // namespace dsg
