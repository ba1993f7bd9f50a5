// Check and timing of the mid-batch decode GEMM (native/cuda/decode_gemm.cu, NOTES-decode-gemm.md).
// Checks: every output form (bf16, bf16 with the RMSNorm row scale, SiLU(gate) * up, residual add with and without
// the next norm's input and partial sums of squares) against a float64 CPU reference on random inputs, at the
// Qwen3-0.6B shapes over token counts 9..256 with the automatic tile, and every tile x cluster choice on smaller
// shapes; outputs are poisoned first and rows past m must stay untouched.
// Timing (graph replays, median, weights of 28 layers so they come from HBM as in a step): each linear layer, old
// path (cuBLAS with its RMSNorm / SiLU kernels) vs this kernel, a tile sweep against the automatic choice, and the
// four linears of all 28 layers chained as in a decode step (attention left out).
// Build and run on the GPU machine: bash native/cuda/tests/run_decode_gemm_check.sh. Flags: --check-only.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check_util.cuh"
#include "common.cuh"
#include "gemm.h"
#include "kernels.h"

using namespace dsg;
using namespace dsg::cuda;
using namespace check;

static std::mt19937_64 rng(4242);
static cudaStream_t stream;

/** Normal values rounded to bf16 (what the device sees). */
static std::vector<float> randBf16(size_t n, float std, float mean = 0.f) {
  auto v = randn(rng, n, std, mean);
  roundBf16(v);
  return v;
}

static const char* outName(DecodeGemmOut o) {
  return o == DecodeGemmOut::Bf16 ? "bf16" : o == DecodeGemmOut::SiluGateUp ? "silu(gate)*up" : "residual +=";
}

/** One case. scaled: x rows carry an RMSNorm scale from ssqIn; next: AddResidual also writes xNext and ssqOut.
 *  quiet: print only failures. */
static void checkCase(DecodeGemmOut out, bool scaled, bool next, int m, int n, int k, DecodeGemmTile tile, bool quiet) {
  const float eps = 1e-6f;
  auto w = randBf16((size_t)n * k, 0.05f), x = randBf16((size_t)m * k, 1.f);
  std::vector<float> ssq((size_t)(k / 32) * m), norm = randBf16(n, 0.3f, 1.f);
  std::uniform_real_distribution<float> u(0.5f, 40.f);
  for (auto& v : ssq) v = u(rng);
  const int outCols = out == DecodeGemmOut::SiluGateUp ? n / 2 : n;
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> res0((size_t)(m + 1) * n);
  for (auto& v : res0) v = d(rng);

  Dev<bf16> dW(toBf16(w)), dX(toBf16(x)), dNorm(toBf16(norm)), dY((size_t)(m + 1) * outCols),
      dXNext((size_t)(m + 1) * n);
  Dev<float> dSsq(ssq), dRes(res0), dSsqOut((size_t)(n / 32) * m);
  dY.poison();
  dXNext.poison();
  dSsqOut.poison();
  DecodeGemmArgs a{dX.p, scaled ? dSsq.p : nullptr, eps, out, dY.p, dRes.p, next ? dNorm.p : nullptr,
                   next ? dXNext.p : nullptr, next ? dSsqOut.p : nullptr};
  const DecodeGemmTile used = decodeGemmTile(m, n, k, tile);
  launchDecodeGemm(a, dW.p, m, n, k, stream, tile);
  DSG_CUDA(cudaStreamSynchronize(stream));

  // float64 reference.
  std::vector<double> acc((size_t)m * n);
  parallelFor(m, [&](size_t t) {
    double s = 1.0;
    if (scaled) {
      double ss = 0;
      for (int j = 0; j < k / 32; ++j) ss += ssq[(size_t)j * m + t];
      s = 1.0 / std::sqrt(ss / k + eps);
    }
    for (int j = 0; j < n; ++j) {
      double v = 0;
      const float *wr = w.data() + (size_t)j * k, *xr = x.data() + (size_t)t * k;
      for (int i = 0; i < k; ++i) v += (double)wr[i] * xr[i];
      acc[(size_t)t * n + j] = v * s;
    }
  });
  char name[200];
  snprintf(name, sizeof name, "%s%s%s m %d n %d k %d tile %dx%d C%d", outName(out), scaled ? " scaled" : "",
           next ? " +next" : "", m, n, k, used.nTile, used.mTile, used.cluster);
  if (out == DecodeGemmOut::AddResidual) {
    auto r = dRes.get();
    std::vector<double> got((size_t)m * n), ref((size_t)m * n);
    bool tail = true;
    for (size_t i = 0; i < got.size(); ++i) {
      got[i] = (double)r[i] - res0[i];
      ref[i] = acc[i];
    }
    for (size_t i = got.size(); i < r.size(); ++i) tail = tail && r[i] == res0[i];
    if (!quiet || !tail || !(relErr(got, ref) <= 2e-5)) report(std::string(name) + " residual", tail ? relErr(got, ref) : NAN, 2e-5, 78);
    if (next) {
      auto xn = fromBf16(dXNext.get());
      auto so = dSsqOut.get();
      std::vector<double> refX((size_t)m * n), gotX(xn.begin(), xn.begin() + (size_t)m * n), refS(so.size());
      for (int t = 0; t < m; ++t)
        for (int j = 0; j < n; ++j) {
          const double rv = (double)res0[(size_t)t * n + j] + acc[(size_t)t * n + j];
          refX[(size_t)t * n + j] = rv * norm[j];
          refS[(size_t)(j / 32) * m + t] += rv * rv;
        }
      bool xtail = true;
      for (size_t i = (size_t)m * n; i < xn.size(); ++i) xtail = xtail && std::isnan(xn[i]);
      const double ex = xtail ? relErr(gotX, refX) : NAN, es = relErr(so, refS);
      if (!quiet || !(ex <= 6e-3)) report(std::string(name) + " xNext", ex, 6e-3, 78);
      if (!quiet || !(es <= 1e-5)) report(std::string(name) + " ssq", es, 1e-5, 78);
    }
    return;
  }
  auto y = fromBf16(dY.get());
  std::vector<double> got(y.begin(), y.begin() + (size_t)m * outCols), ref((size_t)m * outCols);
  for (int t = 0; t < m; ++t)
    for (int j = 0; j < outCols; ++j) {
      if (out == DecodeGemmOut::Bf16) {
        ref[(size_t)t * outCols + j] = acc[(size_t)t * n + j];
      } else {
        const double g = acc[(size_t)t * n + j], up = acc[(size_t)t * n + n / 2 + j];
        ref[(size_t)t * outCols + j] = g / (1 + std::exp(-g)) * up;
      }
    }
  bool tail = true;
  for (size_t i = (size_t)m * outCols; i < y.size(); ++i) tail = tail && std::isnan(y[i]);
  const double e = tail ? relErr(got, ref) : NAN;
  if (!quiet || !(e <= 6e-3)) report(name, e, 6e-3, 78);
}

static std::vector<DecodeGemmTile> allTiles(int n, int k) {
  std::vector<DecodeGemmTile> v;
  for (int nt : {64, 128})
    for (int mt : {32, 64, 128, 256})
      for (int c : {1, 2, 4, 8, 16})
        if (n % nt == 0 && k % (64 * c) == 0) v.push_back({nt, mt, c});
  return v;
}

static void runChecks() {
  // Model shapes, automatic tile.
  struct Shape {
    int n, k;
    DecodeGemmOut out;
    bool scaled, next;
  };
  const Shape shapes[] = {{4096, 1024, DecodeGemmOut::Bf16, true, false},
                          {1024, 2048, DecodeGemmOut::AddResidual, false, true},
                          {6144, 1024, DecodeGemmOut::SiluGateUp, true, false},
                          {1024, 3072, DecodeGemmOut::AddResidual, false, true},
                          {1024, 3072, DecodeGemmOut::AddResidual, false, false},
                          {4096, 1024, DecodeGemmOut::Bf16, false, false}};
  for (const Shape& s : shapes)
    for (int m : {9, 16, 33, 64, 100, 136, 256}) checkCase(s.out, s.scaled, s.next, m, s.n, s.k, {}, false);
  // Every tile x cluster on smaller shapes (quiet: only failures print), token counts that leave partial tiles; k
  // 1024 reaches 16-block clusters (one 64-k stage each) and k 512 the deeper rings of the smaller clusters.
  int cases = 0;
  const int before = failures;
  for (int k : {512, 1024})
    for (const DecodeGemmTile& t : allTiles(256, k)) {
      if (k == 1024 && t.cluster < 16) continue;
      for (int m : {9, 40, 130, 256}) {
        checkCase(DecodeGemmOut::Bf16, true, false, m, 256, k, t, true);
        checkCase(DecodeGemmOut::SiluGateUp, false, false, m, 256, k, t, true);
        checkCase(DecodeGemmOut::AddResidual, true, true, m, 256, k, t, true);
        cases += 3;
      }
    }
  report("tile sweep: " + std::to_string(cases) + " cases (n 256, k 512 and 1024), failures", failures - before, 0, 78);
}

// ---------------------------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------------------------

constexpr int H = 1024, QD = 2048, QKV = 4096, INTER = 3072, LAYERS = 28;

struct Layer {
  bf16 *qkv, *o, *gateUp, *down, *inNorm, *postNorm;
};

template <class F>
static double timeGraph(F&& body) {
  return medianReplayUs(stream, body, 30, 5, [] {});
}

static void runTiming() {
  const size_t perLayer = (size_t)QKV * H + (size_t)H * QD + (size_t)2 * INTER * H + (size_t)H * INTER;
  Dev<bf16> wAll(perLayer * LAYERS), norms((size_t)LAYERS * 2 * H);
  {
    std::vector<bf16> host(perLayer * LAYERS);
    std::normal_distribution<float> d(0.f, 0.05f);
    for (auto& v : host) v = __float2bfloat16(d(rng));
    wAll.put(host);
    norms.put(toBf16(randBf16(norms.n, 0.1f, 1.f)));
  }
  std::vector<Layer> layers(LAYERS);
  for (int l = 0; l < LAYERS; ++l) {
    bf16* p = wAll.p + perLayer * l;
    layers[l] = {p, p + (size_t)QKV * H, p + (size_t)QKV * H + (size_t)H * QD,
                 p + (size_t)QKV * H + (size_t)H * QD + (size_t)2 * INTER * H, norms.p + (size_t)l * 2 * H,
                 norms.p + (size_t)l * 2 * H + H};
  }
  const int T = 256;
  Dev<float> residual((size_t)T * H), ssq((size_t)(H / 32) * T);
  Dev<bf16> xn((size_t)T * H), qkv((size_t)T * QKV), attn((size_t)T * QD), gu((size_t)T * 2 * INTER),
      act((size_t)T * INTER);
  {
    std::vector<float> r((size_t)T * H, 0.5f), s(ssq.n, 256.f);
    residual.put(r);
    ssq.put(s);
    xn.put(toBf16(randBf16(xn.n, 1.f)));
    attn.put(toBf16(randBf16(attn.n, 1.f)));
    act.put(toBf16(randBf16(act.n, 1.f)));
  }
  Gemm gemm;
  gemm.setStream(stream);
  const float eps = 1e-6f;
  struct Op {
    const char* name;
    int n, k;
  };
  const Op ops[] = {{"qkv", QKV, H}, {"o", H, QD}, {"gate_up", 2 * INTER, H}, {"down", H, INTER}};
  auto weightOf = [&](int op, int l) {
    return op == 0 ? layers[l].qkv : op == 1 ? layers[l].o : op == 2 ? layers[l].gateUp : layers[l].down;
  };
  // The old path of each linear: cuBLAS plus the neighbour kernel the new one absorbs.
  auto oldOp = [&](int op, int l, int m) {
    if (op == 0) {
      launchRmsNorm(residual.p, nullptr, m, H, layers[l].inNorm, eps, xn.p, stream);
      gemm.linearBf16(xn.p, layers[l].qkv, qkv.p, m, QKV, H);
    } else if (op == 1) {
      gemm.linearF32(attn.p, layers[l].o, residual.p, m, H, QD, 1.f);
    } else if (op == 2) {
      launchRmsNorm(residual.p, nullptr, m, H, layers[l].postNorm, eps, xn.p, stream);
      gemm.linearBf16(xn.p, layers[l].gateUp, gu.p, m, 2 * INTER, H);
      launchSiluMul(gu.p, m, INTER, act.p, stream);
    } else {
      gemm.linearF32(act.p, layers[l].down, residual.p, m, H, INTER, 1.f);
    }
  };
  auto newOp = [&](int op, int l, int m, DecodeGemmTile tile) {
    DecodeGemmArgs a{};
    if (op == 0) a = {xn.p, ssq.p, eps, DecodeGemmOut::Bf16, qkv.p, nullptr, nullptr, nullptr, nullptr};
    if (op == 1)
      a = {attn.p, nullptr, eps, DecodeGemmOut::AddResidual, nullptr, residual.p, layers[l].postNorm, xn.p, ssq.p};
    if (op == 2) a = {xn.p, ssq.p, eps, DecodeGemmOut::SiluGateUp, act.p, nullptr, nullptr, nullptr, nullptr};
    if (op == 3)
      a = {act.p, nullptr, eps, DecodeGemmOut::AddResidual, nullptr, residual.p,
           l + 1 < LAYERS ? layers[l + 1].inNorm : nullptr, xn.p, ssq.p};
    launchDecodeGemm(a, weightOf(op, l), m, ops[op].n, ops[op].k, stream, tile);
  };
  const int ms[] = {16, 32, 64, 96, 128, 136, 192, 256};
  std::vector<std::string> summary;
  printf("\n-- per linear, us per launch (28 layers' weights, graph replays; old = cuBLAS + its norm / SiLU kernels)\n");
  for (int op = 0; op < 4; ++op)
    for (int m : ms) {
      const double tOld = timeGraph([&] {
        for (int l = 0; l < LAYERS; ++l) oldOp(op, l, m);
      }) / LAYERS;
      const DecodeGemmTile autoTile = decodeGemmTile(m, ops[op].n, ops[op].k);
      const double tNew = timeGraph([&] {
        for (int l = 0; l < LAYERS; ++l) newOp(op, l, m, {});
      }) / LAYERS;
      double best = 1e30;
      DecodeGemmTile bestTile{};
      for (const DecodeGemmTile& t : allTiles(ops[op].n, ops[op].k)) {
        if (t.mTile < 32 || (t.mTile > 32 && t.mTile / 2 >= m)) continue;  // tiles twice the batch are never better
        const double us = timeGraph([&] {
          for (int l = 0; l < LAYERS; ++l) newOp(op, l, m, t);
        }) / LAYERS;
        printf("  %-8s m %3d  tile %3dx%-3d C%-2d %7.2f us\n", ops[op].name, m, t.nTile, t.mTile, t.cluster, us);
        if (us < best) best = us, bestTile = t;
      }
      char line[240];
      snprintf(line, sizeof line, "%-8s m %3d  old %6.2f  new %6.2f (%dx%d C%d)  best %6.2f (%dx%d C%d)  old/new %.2fx",
               ops[op].name, m, tOld, tNew, autoTile.nTile, autoTile.mTile, autoTile.cluster, best, bestTile.nTile,
               bestTile.mTile, bestTile.cluster, tOld / tNew);
      printf("%s\n", line);
      summary.push_back(line);
    }
  printf("\n-- 28 layers x 4 linears chained (attention left out), us per step\n");
  for (int m : ms) {
    const double tOld = timeGraph([&] {
      for (int l = 0; l < LAYERS; ++l)
        for (int op = 0; op < 4; ++op) oldOp(op, l, m);
    });
    const double tNew = timeGraph([&] {
      launchRmsNorm(residual.p, nullptr, m, H, layers[0].inNorm, eps, xn.p, stream);
      for (int l = 0; l < LAYERS; ++l)
        for (int op = 0; op < 4; ++op) newOp(op, l, m, {});
    });
    char line[160];
    snprintf(line, sizeof line, "chain m %3d  old %8.1f  new %8.1f  saved %7.1f us per step (%.2fx)", m, tOld, tNew,
             tOld - tNew, tOld / tNew);
    printf("%s\n", line);
    summary.push_back(line);
  }
  printf("\n==== summary ====\n");
  for (auto& s : summary) printf("%s\n", s.c_str());
}

/** --one N K M [nTile mTile cluster]: three plain launches of one bf16 GEMM shape (for ncu). */
static void runOne(int n, int k, int m, DecodeGemmTile tile) {
  Dev<bf16> w((size_t)n * k), x((size_t)m * k), y((size_t)m * n);
  DSG_CUDA(cudaMemset(w.p, 0, w.n * sizeof(bf16)));
  DSG_CUDA(cudaMemset(x.p, 0, x.n * sizeof(bf16)));
  for (int i = 0; i < 3; ++i)
    launchDecodeGemm({x.p, nullptr, 1e-6f, DecodeGemmOut::Bf16, y.p, nullptr, nullptr, nullptr, nullptr}, w.p, m, n, k,
                     stream, tile);
  DSG_CUDA(cudaStreamSynchronize(stream));
}

int main(int argc, char** argv) {
  const bool checkOnly = argc > 1 && std::strcmp(argv[1], "--check-only") == 0;
  try {
    DSG_CUDA(cudaStreamCreate(&stream));
    if (!decodeGemmAvailable()) {
      printf("ERROR decode_gemm.cu was built without sm_90a: its kernels are empty\n");
      return 2;
    }
    if (argc >= 5 && std::strcmp(argv[1], "--one") == 0) {
      DecodeGemmTile t{};
      if (argc >= 8) t = {std::atoi(argv[5]), std::atoi(argv[6]), std::atoi(argv[7])};
      runOne(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]), t);
      return 0;
    }
    runChecks();
    if (!checkOnly) runTiming();
  } catch (const std::exception& e) {
    printf("ERROR %s\n", e.what());
    return 2;
  }
  printf(failures ? "FAILED (%d)\n" : "PASSED\n", failures);
  return failures ? 1 : 0;
}
