// Check and timing of the small-batch decode path (native/cuda/NOTES-decode-small-batch.md): the fused GEMV kernels
// (gemv.cu) against a float64 CPU reference on random inputs (outputs poisoned first), then on the card's clock:
// each Qwen3-0.6B linear layer (GEMV with PDL on/off vs cuBLAS and its old neighbour kernels, over 28 layers' worth
// of distinct weights so nothing sits in L2), qkNormRopeKv (new vs the old one-block-per-token kernel), sampling,
// and a whole emulated decode step (28 layers + lm_head + sampling, CUDA graph) in the old and the new form.
// Build and run on the GPU machine: bash native/cuda/tests/run_gemv_check.sh (prints a short table last).
// Flags: --check-only (no timing; for compute-sanitizer).
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common.cuh"
#include "gemm.h"
#include "kernels.h"
#include "check_util.cuh"

using namespace dsg;
using namespace dsg::cuda;
using namespace check;

static std::mt19937_64 rng(9001);

static const char* kindName(GemvInputKind k) {
  return k == GemvInputKind::RmsNorm ? "rmsnorm" : (k == GemvInputKind::SiluMul ? "silu*mul" : "bf16");
}

// One GEMV case: random W, random input of the kind, output bf16 or added into a random f32 buffer.
static cudaStream_t checkStream;

static void checkGemv(GemvInputKind kind, bool add, int m, int n, int k, GemvOverlap overlap) {
  auto w = randn(rng, (size_t)n * k, 0.05f);
  roundBf16(w);
  std::vector<double> x((size_t)m * k);  // the input the kernel should build (in double, before bf16 rounding)
  Dev<float> dRes((size_t)m * k);
  Dev<bf16> dGu((size_t)m * 2 * k), dX((size_t)m * k), dNw(k);
  GemvInput in{kind, nullptr, nullptr, 1e-6f};
  if (kind == GemvInputKind::RmsNorm) {
    auto r = randn(rng, (size_t)m * k, 1.5f, 0.1f), nw = randn(rng, k, 0.3f, 1.f);
    roundBf16(nw);
    dRes.put(r);
    dNw.put(toBf16(nw));
    for (int t = 0; t < m; ++t) {
      double ss = 0;
      for (int i = 0; i < k; ++i) ss += (double)r[(size_t)t * k + i] * r[(size_t)t * k + i];
      const double inv = 1.0 / std::sqrt(ss / k + 1e-6);
      for (int i = 0; i < k; ++i) x[(size_t)t * k + i] = r[(size_t)t * k + i] * inv * nw[i];
    }
    in.data = dRes.p;
    in.normWeight = dNw.p;
  } else if (kind == GemvInputKind::SiluMul) {
    auto gu = randn(rng, (size_t)m * 2 * k, 2.f);
    roundBf16(gu);
    dGu.put(toBf16(gu));
    for (int t = 0; t < m; ++t)
      for (int i = 0; i < k; ++i) {
        const double g = gu[(size_t)t * 2 * k + i], u = gu[(size_t)t * 2 * k + k + i];
        x[(size_t)t * k + i] = g / (1 + std::exp(-g)) * u;
      }
    in.data = dGu.p;
  } else {
    auto xv = randn(rng, (size_t)m * k, 1.f);
    roundBf16(xv);
    dX.put(toBf16(xv));
    for (size_t i = 0; i < x.size(); ++i) x[i] = xv[i];
    in.data = dX.p;
  }
  Dev<bf16> dW(toBf16(w));
  // One row more than m: it must stay untouched.
  Dev<bf16> dYb((size_t)(m + 1) * n);
  Dev<float> dYf((size_t)(m + 1) * n);
  std::vector<float> y0 = randn(rng, (size_t)(m + 1) * n, 1.f);
  if (add) dYf.put(y0);
  else dYb.poison();
  launchGemv(in, dW.p, m, n, k, add ? nullptr : dYb.p, add ? dYf.p : nullptr, overlap, checkStream);
  DSG_CUDA(cudaGetLastError());
  DSG_CUDA(cudaStreamSynchronize(checkStream));
  std::vector<double> got((size_t)m * n), ref((size_t)m * n);
  bool tailOk = true;
  if (add) {
    auto y = dYf.get();
    for (size_t i = 0; i < got.size(); ++i) got[i] = (double)y[i] - (double)y0[i];
    for (size_t i = got.size(); i < y.size(); ++i) tailOk = tailOk && y[i] == y0[i];
  } else {
    auto y = fromBf16(dYb.get());
    for (size_t i = 0; i < got.size(); ++i) got[i] = y[i];
    for (size_t i = got.size(); i < y.size(); ++i) tailOk = tailOk && std::isnan(y[i]);
  }
  for (int t = 0; t < m; ++t)
    for (int j = 0; j < n; ++j) {
      double acc = 0;
      const float* wr = w.data() + (size_t)j * k;
      const double* xr = x.data() + (size_t)t * k;
      for (int i = 0; i < k; ++i) acc += wr[i] * xr[i];
      ref[(size_t)t * n + j] = acc;
    }
  // Bound: the input is rounded to bf16 (RmsNorm, SiluMul) and a bf16 output once more; else f32 accumulation only.
  const double bound = (kind == GemvInputKind::Bf16 && add) ? 2e-5 : 6e-3;
  char name[160];
  snprintf(name, sizeof name, "gemv %s -> %s m %d n %d k %d overlap %d rel", kindName(kind), add ? "f32 +=" : "bf16", m,
           n, k, (int)overlap);
  report(name, tailOk ? relErr(got, ref) : NAN, bound);
}

// ---------------------------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------------------------

// The qkNormRopeKv kernel as it was before this change (one block per token), kept here only to time against.
__global__ void legacyQkNormRopeKvKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ qNorm,
                                         const bf16* __restrict__ kNorm, float eps, const int32_t* __restrict__ positions,
                                         const int32_t* __restrict__ slots, int heads, int kvHeads, int headDim,
                                         const float* __restrict__ invFreq, bf16* __restrict__ q,
                                         bf16* __restrict__ kCache, bf16* __restrict__ vCache) {
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, numWarps = blockDim.x >> 5;
  const int totalHeads = heads + 2 * kvHeads, half = headDim / 2;
  const float pos = (float)positions[t];
  const int64_t slot = slots[t];
  const bf16* row = qkv + (int64_t)t * totalHeads * headDim;
  for (int h = warp; h < totalHeads; h += numWarps) {
    const bool isQ = h < heads, isK = !isQ && h < heads + kvHeads;
    const bf16* src = row + h * headDim;
    float x0[4], x1[4], ss = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = lane + 32 * i;
      x0[i] = x1[i] = 0.f;
      if (j < half) {
        x0[i] = __bfloat162float(src[j]);
        x1[i] = __bfloat162float(src[j + half]);
        ss += x0[i] * x0[i] + x1[i] * x1[i];
      }
    }
    const bf16* normW = isQ ? qNorm : (isK ? kNorm : nullptr);
    const float inv = normW ? rsqrtf(warpSum(ss) / headDim + eps) : 1.f;
    bf16* dst = isQ ? q + ((int64_t)t * heads + h) * headDim
                    : (isK ? kCache + (slot * kvHeads + (h - heads)) * headDim
                           : vCache + (slot * kvHeads + (h - heads - kvHeads)) * headDim);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int j = lane + 32 * i;
      if (j >= half) continue;
      float a = x0[i], c = x1[i];
      if (normW) {
        a = a * inv * __bfloat162float(normW[j]);
        c = c * inv * __bfloat162float(normW[j + half]);
      }
      if (h < heads + kvHeads) {
        float sn, cs;
        sincosf(pos * invFreq[j], &sn, &cs);
        const float ra = a * cs - c * sn, rc = c * cs + a * sn;
        a = ra;
        c = rc;
      }
      dst[j] = __float2bfloat16(a);
      dst[j + half] = __float2bfloat16(c);
    }
  }
}

constexpr int H = 1024, QH = 16, KVH = 8, D = 128, QD = QH * D, KD = KVH * D, QKV = QD + 2 * KD, INTER = 3072,
              LAYERS = 28, VOCAB = 151936, CTX = 192, PAGE = 16;
constexpr double kFloorBw = 4.2e12;  // bytes/s, the brief's H200 floor

struct Layer {
  bf16 *qkv, *o, *gateUp, *down, *inNorm, *postNorm, *qNorm, *kNorm;
};

/** Median per-replay time (us) of a graph captured from `body` on `stream`. */
template <class F>
static double timeGraph(cudaStream_t stream, F&& body, int reps = 30) {
  return medianReplayUs(stream, body, reps, 3, [] {});
}

struct Timing {
  std::vector<std::string> rows;
  void add(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    rows.push_back(buf);
    printf("%s\n", buf);
  }
};

static void timeAll() {
  cudaStream_t st;
  DSG_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Gemm gemm;
  gemm.setStream(st);
  Timing tab;
  // Copy ceiling: 1 GiB device-to-device, read + write.
  {
    const size_t bytes = 1ull << 30;
    Dev<uint8_t> a(bytes), b(bytes);
    DSG_CUDA(cudaMemset(a.p, 1, bytes));
    const double us = timeGraph(st, [&] { DSG_CUDA(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, st)); }, 10);
    tab.add("| copy ceiling | %.2f TB/s |", 2.0 * bytes / us / 1e6);
  }
  // Weights of 28 layers (random), and activations for up to 256 tokens.
  const size_t perLayer = (size_t)QKV * H + (size_t)H * QD + (size_t)2 * INTER * H + (size_t)H * INTER;
  Dev<bf16> wAll(perLayer * LAYERS), lmHead((size_t)VOCAB * H), norms((size_t)LAYERS * (4 * H + 2 * D) + H);
  {
    std::vector<float> chunk = randn(rng, 1 << 20, 0.03f);
    std::vector<bf16> cb = toBf16(chunk);
    for (size_t off = 0; off < wAll.n; off += cb.size())
      DSG_CUDA(cudaMemcpy(wAll.p + off, cb.data(), std::min(cb.size(), wAll.n - off) * 2, cudaMemcpyHostToDevice));
    std::vector<float> lm = randn(rng, 1 << 20, 0.05f);
    std::vector<bf16> lb = toBf16(lm);
    for (size_t off = 0; off < lmHead.n; off += lb.size())
      DSG_CUDA(cudaMemcpy(lmHead.p + off, lb.data(), std::min(lb.size(), lmHead.n - off) * 2, cudaMemcpyHostToDevice));
    norms.put(toBf16(randn(rng, norms.n, 0.1f, 1.f)));
  }
  std::vector<Layer> layers(LAYERS);
  for (int l = 0; l < LAYERS; ++l) {
    bf16* p = wAll.p + perLayer * l;
    bf16* nrm = norms.p + (size_t)l * (4 * H + 2 * D);
    layers[l] = Layer{p, p + (size_t)QKV * H, p + (size_t)QKV * H + (size_t)H * QD,
                      p + (size_t)QKV * H + (size_t)H * QD + (size_t)2 * INTER * H, nrm, nrm + H, nrm + 2 * H,
                      nrm + 2 * H + D};
  }
  bf16* finalNorm = norms.p + (size_t)LAYERS * (4 * H + 2 * D);
  const int maxT = 256;
  Dev<float> residual((size_t)maxT * H), logits((size_t)maxT * VOCAB);
  residual.put(randn(rng, residual.n, 1.f));
  Dev<bf16> xn((size_t)maxT * H), qkv((size_t)maxT * QKV), qb((size_t)maxT * QD), attn((size_t)maxT * QD),
      gateUp((size_t)maxT * 2 * INTER), act((size_t)maxT * INTER), lastHidden((size_t)maxT * H);
  qkv.put(toBf16(randn(rng, qkv.n, 1.f)));
  attn.put(toBf16(randn(rng, attn.n, 1.f)));
  gateUp.put(toBf16(randn(rng, gateUp.n, 1.f)));
  // Paged KV (one layer's pool reused by every layer: attention reads little at ctx 192), 256 sequences of CTX.
  const int pagesPerSeq = (CTX + PAGE - 1) / PAGE;
  Dev<bf16> kc((size_t)maxT * pagesPerSeq * PAGE * KD), vc((size_t)maxT * pagesPerSeq * PAGE * KD);
  kc.put(toBf16(randn(rng, kc.n, 1.f)));
  vc.put(toBf16(randn(rng, vc.n, 1.f)));
  std::vector<int4> seqs(maxT);
  std::vector<int32_t> table((size_t)maxT * pagesPerSeq), pos(maxT), slots(maxT), lastRows(maxT);
  for (int s = 0; s < maxT; ++s) {
    seqs[s] = make_int4(s, 1, CTX, s * pagesPerSeq);
    for (int p = 0; p < pagesPerSeq; ++p) table[(size_t)s * pagesPerSeq + p] = s * pagesPerSeq + p;
    pos[s] = CTX - 1;
    slots[s] = s * pagesPerSeq * PAGE + CTX - 1;
    lastRows[s] = s;
  }
  Dev<int4> dSeqs(seqs);
  Dev<int32_t> dTable(table), dPos(pos), dSlots(slots), dLastRows(lastRows);
  std::vector<float> inv(D / 2);
  for (int i = 0; i < D / 2; ++i) inv[i] = (float)(1.0 / std::pow(1000000.0, 2.0 * i / D));
  Dev<float> dInv(inv);
  Dev<float> partO((size_t)maxT * 16 * QD), partLse((size_t)maxT * 16 * QH);
  std::vector<SampleParams> sp(maxT, SampleParams{0.f, 1.f, 0.f, 0, 1u, 2u, -1, 0, 1});
  Dev<SampleParams> dGreedy(sp);
  for (auto& p : sp) {
    p.temperature = 0.8f;
    p.topP = 0.9f;
  }
  Dev<SampleParams> dTopP(sp);
  Dev<int32_t> tokens(maxT), topIds((size_t)maxT * 20), scratch(sampleScratchBytes(maxT) / 4);
  Dev<float> lps(maxT), topLps((size_t)maxT * 20);
  logits.put(randn(rng, logits.n, 2.f));
  const float eps = 1e-6f, scale = 1.f / std::sqrt((float)D);
  auto splitsFor = [](int seqs) { return std::max(1, std::min(16, (2 * 132 + seqs * KVH - 1) / (seqs * KVH))); };

  // ---- per linear layer: 28 launches over 28 layers' weights, per launch ----
  struct Op {
    const char* name;
    int n, k;
    GemvInputKind kind;
    bool add;
  };
  const Op ops[] = {{"qkv (norm fused)", QKV, H, GemvInputKind::RmsNorm, false},
                    {"o (+= residual)", H, QD, GemvInputKind::Bf16, true},
                    {"gate|up (norm fused)", 2 * INTER, H, GemvInputKind::RmsNorm, false},
                    {"down (silu fused, +=)", H, INTER, GemvInputKind::SiluMul, true}};
  tab.add("| linear | m | floor us | cuBLAS us | old path us | gemv us | +pdl us | +pdl early us | best TB/s |");
  for (const Op& op : ops) {
    auto weightOf = [&](int l) {
      const Layer& L = layers[l];
      return op.n == QKV ? L.qkv : (op.k == QD ? L.o : (op.n == 2 * INTER ? L.gateUp : L.down));
    };
    const double bytes = (double)op.n * op.k * 2;
    for (int m : {1, 2, 4, 8, 16, 32, 64}) {
      const double tCublas = timeGraph(st, [&] {
        for (int l = 0; l < LAYERS; ++l) {
          if (op.add) gemm.linearF32(op.kind == GemvInputKind::SiluMul ? act.p : attn.p, weightOf(l), residual.p, m, op.n, op.k, 1.f);
          else gemm.linearBf16(xn.p, weightOf(l), op.n == QKV ? qkv.p : gateUp.p, m, op.n, op.k);
        }
      }) / LAYERS;
      const double tOld = timeGraph(st, [&] {
        for (int l = 0; l < LAYERS; ++l) {
          if (op.kind == GemvInputKind::RmsNorm) launchRmsNorm(residual.p, nullptr, m, H, layers[l].inNorm, eps, xn.p, st);
          if (op.kind == GemvInputKind::SiluMul) launchSiluMul(gateUp.p, m, INTER, act.p, st);
          if (op.add) gemm.linearF32(op.kind == GemvInputKind::SiluMul ? act.p : attn.p, weightOf(l), residual.p, m, op.n, op.k, 1.f);
          else gemm.linearBf16(xn.p, weightOf(l), op.n == QKV ? qkv.p : gateUp.p, m, op.n, op.k);
        }
      }) / LAYERS;
      double tGemv[3] = {NAN, NAN, NAN};
      if (gemvSupports(m, op.n, op.k))
        for (int mode = 0; mode < 3; ++mode)
          tGemv[mode] = timeGraph(st, [&] {
            for (int l = 0; l < LAYERS; ++l) {
              const void* data = op.kind == GemvInputKind::RmsNorm ? (const void*)residual.p
                                 : op.kind == GemvInputKind::SiluMul ? (const void*)gateUp.p : (const void*)attn.p;
              launchGemv({op.kind, data, layers[l].inNorm, eps}, weightOf(l), m, op.n, op.k,
                         op.add ? nullptr : (op.n == QKV ? qkv.p : gateUp.p), op.add ? residual.p : nullptr,
                         (GemvOverlap)mode, st);
            }
          }) / LAYERS;
      const double best = std::min({tGemv[0], tGemv[1], tGemv[2]});
      tab.add("| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |", op.name, m, bytes / kFloorBw * 1e6, tCublas,
              tOld, tGemv[0], tGemv[1], tGemv[2], bytes / (best * 1e-6) / 1e12);
    }
  }

  // ---- qkNormRopeKv ----
  tab.add("| qkNormRopeKv | tokens | old us | new us |");
  {
    Dev<bf16> qkvBig((size_t)4096 * QKV), qBig((size_t)4096 * QD);
    qkvBig.put(toBf16(randn(rng, qkvBig.n, 1.f)));
    Dev<bf16> kBig((size_t)4096 * KD), vBig((size_t)4096 * KD);
    std::vector<int32_t> p4(4096), s4(4096);
    for (int i = 0; i < 4096; ++i) p4[i] = s4[i] = i;
    Dev<int32_t> dP4(p4), dS4(s4);
    for (int T : {1, 8, 256, 4096}) {
      const double tOld = timeGraph(st, [&] {
        for (int l = 0; l < LAYERS; ++l)
          legacyQkNormRopeKvKernel<<<T, 256, 0, st>>>(qkvBig.p, layers[l].qNorm, layers[l].kNorm, eps, dP4.p, dS4.p, QH,
                                                      KVH, D, dInv.p, qBig.p, kBig.p, vBig.p);
      }) / LAYERS;
      const double tNew = timeGraph(st, [&] {
        for (int l = 0; l < LAYERS; ++l)
          launchQkNormRopeKvWrite(qkvBig.p, nullptr, layers[l].qNorm, layers[l].kNorm, eps, dP4.p, dS4.p, T, QH, KVH, D,
                                  RopeArgs{dInv.p, false}, qBig.p, kBig.p, vBig.p, st);
      }) / LAYERS;
      tab.add("| qkNormRopeKv | %d | %.2f | %.2f |", T, tOld, tNew);
    }
  }

  // ---- sampling ----
  tab.add("| sample | seqs | mode | one block/seq us | split argmax us |");
  for (int S : {1, 8, 256})
    for (int mode = 0; mode < 2; ++mode) {
      const SampleParams* prm = mode == 0 ? dGreedy.p : dTopP.p;
      const double t1 = timeGraph(st, [&] {
        launchSample(logits.p, S, VOCAB, prm, 20, tokens.p, lps.p, topIds.p, topLps.p, st);
      });
      const double t2 = timeGraph(st, [&] {
        launchSample(logits.p, S, VOCAB, prm, 20, tokens.p, lps.p, topIds.p, topLps.p, st, scratch.p);
      });
      tab.add("| sample | %d | %s | %.2f | %.2f |", S, mode == 0 ? "greedy" : "T0.8 top-p0.9", t1, t2);
    }

  // ---- whole decode step (old vs new), batch m, ctx 192 ----
  auto step = [&](int m, bool fused, GemvOverlap pdl) {
    // The old step splits the KV range (partials + merge kernel); the new decode attention splits internally.
    const int splits = fused ? 1 : splitsFor(m);
    const AttnBatch batch{dSeqs.p, dTable.p, m, 1, PAGE};
    for (int l = 0; l < LAYERS; ++l) {
      const Layer& L = layers[l];
      if (fused) {
        launchGemv({GemvInputKind::RmsNorm, residual.p, L.inNorm, eps}, L.qkv, m, QKV, H, qkv.p, nullptr, pdl, st);
      } else {
        launchRmsNorm(residual.p, nullptr, m, H, L.inNorm, eps, xn.p, st);
        gemm.linearBf16(xn.p, L.qkv, qkv.p, m, QKV, H);
      }
      if (fused)
        launchQkNormRopeKvWrite(qkv.p, nullptr, L.qNorm, L.kNorm, eps, dPos.p, dSlots.p, m, QH, KVH, D,
                                RopeArgs{dInv.p, false}, qb.p, kc.p, vc.p, st);
      else
        legacyQkNormRopeKvKernel<<<m, 256, 0, st>>>(qkv.p, L.qNorm, L.kNorm, eps, dPos.p, dSlots.p, QH, KVH, D, dInv.p,
                                                    qb.p, kc.p, vc.p);
#ifndef GEMV_CHECK_NO_ATTENTION
      launchAttention(qb.p, kc.p, vc.p, batch, m, QH, KVH, D, scale, splits, attn.p, partO.p, partLse.p, st);
      if (splits > 1) launchAttentionMerge(partO.p, partLse.p, splits, m, QH, D, attn.p, st);
#endif
      if (fused) {
        launchGemv({GemvInputKind::Bf16, attn.p, nullptr, 0.f}, L.o, m, H, QD, nullptr, residual.p, pdl, st);
        launchGemv({GemvInputKind::RmsNorm, residual.p, L.postNorm, eps}, L.gateUp, m, 2 * INTER, H, gateUp.p, nullptr,
                   pdl, st);
        launchGemv({GemvInputKind::SiluMul, gateUp.p, nullptr, 0.f}, L.down, m, H, INTER, nullptr, residual.p, pdl, st);
      } else {
        gemm.linearF32(attn.p, L.o, residual.p, m, H, QD, 1.f);
        launchRmsNorm(residual.p, nullptr, m, H, L.postNorm, eps, xn.p, st);
        gemm.linearBf16(xn.p, L.gateUp, gateUp.p, m, 2 * INTER, H);
        launchSiluMul(gateUp.p, m, INTER, act.p, st);
        gemm.linearF32(act.p, L.down, residual.p, m, H, INTER, 1.f);
      }
    }
    launchRmsNorm(residual.p, dLastRows.p, m, H, finalNorm, eps, lastHidden.p, st);
    gemm.linearF32(lastHidden.p, lmHead.p, logits.p, m, VOCAB, H, 0.f);
    launchSample(logits.p, m, VOCAB, dGreedy.p, 20, tokens.p, lps.p, topIds.p, topLps.p, st, fused ? scratch.p : nullptr);
  };
  // Determinism / race check: from one starting residual, the fused step with and without PDL (eager and graph)
  // must give bit-identical residuals; the old step must agree to bf16 level.
  {
    const int m = 4;
    std::vector<float> r0 = randn(rng, (size_t)m * H, 1.f);
    auto run = [&](bool fused, GemvOverlap pdl) {
      DSG_CUDA(cudaMemcpy(residual.p, r0.data(), r0.size() * 4, cudaMemcpyHostToDevice));
      step(m, fused, pdl);
      DSG_CUDA(cudaStreamSynchronize(st));
      DSG_CUDA(cudaGetLastError());
      std::vector<float> r((size_t)m * H);
      DSG_CUDA(cudaMemcpy(r.data(), residual.p, r.size() * 4, cudaMemcpyDeviceToHost));
      return r;
    };
    const auto rOld = run(false, GemvOverlap::None), rPlain = run(true, GemvOverlap::None);
    for (GemvOverlap mode : {GemvOverlap::AfterWait, GemvOverlap::AtStart}) {
      const auto rEager = run(true, mode);
      DSG_CUDA(cudaMemcpy(residual.p, r0.data(), r0.size() * 4, cudaMemcpyHostToDevice));
      cudaGraph_t g;
      cudaGraphExec_t ge;
      DSG_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      step(m, true, mode);
      DSG_CUDA(cudaStreamEndCapture(st, &g));
      DSG_CUDA(cudaGraphInstantiate(&ge, g, 0));
      DSG_CUDA(cudaGraphLaunch(ge, st));
      DSG_CUDA(cudaStreamSynchronize(st));
      std::vector<float> rGraph((size_t)m * H);
      DSG_CUDA(cudaMemcpy(rGraph.data(), residual.p, rGraph.size() * 4, cudaMemcpyDeviceToHost));
      cudaGraphExecDestroy(ge);
      cudaGraphDestroy(g);
      double diffEager = 0, diffGraph = 0;
      for (size_t i = 0; i < rPlain.size(); ++i) {
        diffEager += rEager[i] != rPlain[i] || !std::isfinite(rEager[i]);
        diffGraph += rGraph[i] != rPlain[i];
      }
      const std::string tag = mode == GemvOverlap::AtStart ? "pdl at start" : "pdl after wait";
      report("decode step: fused " + tag + " eager == no pdl (differing values)", diffEager, 0);
      report("decode step: fused " + tag + " graph == no pdl (differing values)", diffGraph, 0);
    }
    std::vector<double> a(rPlain.begin(), rPlain.end()), b(rOld.begin(), rOld.end());
    report("decode step: fused vs old path, 28 layers rel (bf16 level)", relErr(a, b), 3e-2);
  }
  tab.add("| decode step (28 layers + lm_head + sample), ctx 192 | m | old us | fused us | +pdl us | +pdl early us |");
  for (int m : {1, 2, 4, 8, 16, 32}) {
    const double tOld = timeGraph(st, [&] { step(m, false, GemvOverlap::None); }, 20);
    double t[3];
    for (int mode = 0; mode < 3; ++mode) t[mode] = timeGraph(st, [&] { step(m, true, (GemvOverlap)mode); }, 20);
    tab.add("| decode step | %d | %.1f | %.1f | %.1f | %.1f |", m, tOld, t[0], t[1], t[2]);
  }
  printf("\n==== summary ====\n");
  for (auto& r : tab.rows) printf("%s\n", r.c_str());
  cudaStreamDestroy(st);
}

int main(int argc, char** argv) {
  const bool checkOnly = argc > 1 && std::strcmp(argv[1], "--check-only") == 0;
  try {
    cudaDeviceProp prop;
    DSG_CUDA(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
#ifndef GEMV_CHECK_NO_ATTENTION
    prepareAttentionKernels();
#else
    printf("built without attention: the emulated decode step leaves attention out\n");
#endif
    DSG_CUDA(cudaStreamCreateWithFlags(&checkStream, cudaStreamNonBlocking));
    struct Shape {
      int n, k;
      GemvInputKind kind;
      bool add;
    };
    const Shape shapes[] = {{QKV, H, GemvInputKind::RmsNorm, false},   {H, QD, GemvInputKind::Bf16, true},
                            {2 * INTER, H, GemvInputKind::RmsNorm, false}, {H, INTER, GemvInputKind::SiluMul, true},
                            {48, 2048, GemvInputKind::Bf16, false},        {80, 768, GemvInputKind::RmsNorm, true},
                            {2064, 256, GemvInputKind::SiluMul, false}};
    for (const Shape& s : shapes)
      for (int m : {1, 5, 16, 32}) checkGemv(s.kind, s.add, m, s.n, s.k, (GemvOverlap)(m % 3));
    checkGemv(GemvInputKind::Bf16, true, 9, H, INTER, GemvOverlap::AtStart);
    checkGemv(GemvInputKind::RmsNorm, false, 24, 2 * INTER, H, GemvOverlap::AfterWait);
    checkGemv(GemvInputKind::RmsNorm, true, 3, 256, 2048, GemvOverlap::None);  // a cluster of 4 with the norm
    DSG_CUDA(cudaDeviceSynchronize());
    if (!checkOnly) timeAll();
    DSG_CUDA(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    printf("ERROR: %s\n", e.what());
    return 2;
  }
  printf("%s: %d check(s) failed\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}
