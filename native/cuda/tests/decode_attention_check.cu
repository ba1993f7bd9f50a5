// Check and timing of the decode attention kernel (native/cuda/decode_attention.cu).
// Correctness: random q and KV pool (never zeros), random page tables, mixed kvLens, outputs poisoned with NaN,
// against a float64 CPU reference; through launchAttention's dispatch (DSG_WITH_DISPATCH) and launchDecodeAttention
// directly (cluster splits, caller splits + merge, load depths). Timing (unless --quick): the Qwen3-0.6B shape,
// the new kernel against the decode path of an earlier attention.cu (decode_attention_baseline.cu), each layer's
// launch in a CUDA graph behind an L2 flush, against the floor KV bytes / copy bandwidth.
// Build and run: native/cuda/tests/run_decode_attention_check.sh. Exits non-zero if any check fails.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common.cuh"
#include "kernels.h"
#include "check_util.cuh"

using namespace dsg;
using namespace dsg::cuda;
using namespace check;

namespace decode_check {
void baselineDecode(const bf16* q, const bf16* k, const bf16* v, const int4* seqs, const int32_t* pageTable,
                    int numSeqs, int pageSize, int heads, int kvHeads, int headDim, float scale, int numSplits,
                    bf16* out, float* partO, float* partLse, cudaStream_t stream);
void baselineMerge(const float* partO, const float* partLse, int numSplits, int numTokens, int heads, int headDim,
                   bf16* out, cudaStream_t stream);
int baselineSplits(int numSeqs, int kvHeads, int smCount);
void baselinePrepare();
}  // namespace decode_check

static std::mt19937_64 rng(20261127);


/** A decode batch: one query token per sequence, its pages a random subset of the pool. */
struct Batch {
  int D, heads, kvHeads, pageSize, numPages;
  std::vector<int4> seqs;  // qStart, qLen (1), kvLen, pageStart
  std::vector<int32_t> table;
  int64_t keys = 0;
};

static Batch makeBatch(int D, int heads, int kvHeads, int pageSize, const std::vector<int>& kvLens) {
  Batch b{D, heads, kvHeads, pageSize, 0, {}, {}, 0};
  int pagesNeeded = 0;
  for (int len : kvLens) pagesNeeded += (len + pageSize - 1) / pageSize;
  b.numPages = pagesNeeded + 3;
  std::vector<int32_t> perm(b.numPages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (size_t s = 0; s < kvLens.size(); ++s) {
    b.seqs.push_back(make_int4((int)s, 1, kvLens[s], (int)b.table.size()));
    for (int p = 0; p < (kvLens[s] + pageSize - 1) / pageSize; ++p) b.table.push_back(perm[b.table.size()]);
    b.keys += kvLens[s];
  }
  return b;
}

static std::vector<float> randBf16Values(size_t n) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = __bfloat162float(__float2bfloat16(d(rng)));
    if (x == 0.f) x = 0.5f;
  }
  return v;
}

enum class Path { Dispatch, Direct };

static void checkDecode(const char* label, int D, int heads, int kvHeads, int pageSize, const std::vector<int>& kvLens,
                        int numSplits, Path path, DecodeTuning tuning = {0, 0}) {
  const Batch b = makeBatch(D, heads, kvHeads, pageSize, kvLens);
  const int S = (int)b.seqs.size(), group = heads / kvHeads;
  const size_t poolElems = (size_t)b.numPages * pageSize * kvHeads * D;
  const auto kc = randBf16Values(poolElems), vc = randBf16Values(poolElems), q = randBf16Values((size_t)S * heads * D);
  Dev<bf16> dK(toBf16(kc)), dV(toBf16(vc)), dQ(toBf16(q)), dOut((size_t)S * heads * D);
  Dev<int4> dSeqs(b.seqs);
  Dev<int32_t> dTable(b.table);
  const int partRows = std::max(1, numSplits) * S * heads;
  Dev<float> dPartO((size_t)partRows * D), dPartLse((size_t)partRows);
  dOut.poison();
  dPartO.poison();
  dPartLse.poison();
  const float scale = 1.f / std::sqrt((float)D);
  const AttnBatch batch{dSeqs.p, dTable.p, S, 1, pageSize};
  bool launched = true;
  if (path == Path::Dispatch) {
#ifdef DSG_WITH_DISPATCH
    launchAttention(dQ.p, dK.p, dV.p, batch, S, heads, kvHeads, D, scale, numSplits, dOut.p, dPartO.p, dPartLse.p, 0);
#else
    printf("%-60s SKIP (built without attention.cu)\n", label);
    return;
#endif
  } else {
    launched = launchDecodeAttention(dQ.p, dK.p, dV.p, batch, S, heads, kvHeads, D, scale, numSplits, dOut.p, dPartO.p,
                                     dPartLse.p, 0, &tuning);
  }
  // The merge kernel is unchanged since the baseline commit: take it from there (no dependence on attention.cu).
  if (launched && numSplits > 1) decode_check::baselineMerge(dPartO.p, dPartLse.p, numSplits, S, heads, D, dOut.p, 0);
  DSG_CUDA(cudaDeviceSynchronize());
  if (!launched) {
    printf("%-60s FAIL  fast path refused the shape\n", label);
    ++failures;
    return;
  }
  const auto outB = dOut.get();
  double num = 0, den = 0, maxErr = 0;
  bool finite = true;
  std::vector<double> scores, refRow(D);
  for (int s = 0; s < S; ++s) {
    const int4 sq = b.seqs[s];
    for (int h = 0; h < heads; ++h) {
      referenceAttentionRow(&q[((size_t)s * heads + h) * D], kc.data(), vc.data(), &b.table[sq.w], pageSize, kvHeads,
                            h / group, D, sq.z, scale, scores, refRow.data());
      for (int d = 0; d < D; ++d) {
        const double ref = refRow[d];
        const double got = __bfloat162float(outB[((size_t)s * heads + h) * D + d]);
        if (!std::isfinite(got)) finite = false;
        num += (got - ref) * (got - ref);
        den += ref * ref;
        maxErr = std::max(maxErr, std::fabs(got - ref));
      }
    }
  }
  const double rel = finite ? std::sqrt(num / std::max(den, 1e-30)) : NAN;
  const bool ok = finite && rel <= 6e-3;
  if (!ok) ++failures;
  printf("%-60s %s  rel %.3e  max abs %.3e\n", label, ok ? "PASS" : "FAIL", rel, maxErr);
}

// ---- timing ----

// Pseudo-random bf16 in [-2, 2] \ {0} from a hash of the index: fills gigabytes without a host round trip.
__global__ void fillRandom(bf16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t x = (uint32_t)i * 0x9E3779B1u ^ seed ^ (uint32_t)(i >> 32) * 0x85EBCA77u;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    x ^= x >> 12;
    x *= 0x297A2D39u;
    x ^= x >> 15;
    float f = ((x & 0xFFFFFF) / 16777216.f) * 4.f - 2.f;
    if (f == 0.f) f = 0.25f;
    p[i] = __float2bfloat16(f);
  }
}

// Reads a buffer larger than the L2 (clean lines, so the next kernel's reads pay no write-backs).
__global__ void flushL2(const uint4* buf, size_t n, unsigned* sink) {
  unsigned x = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const uint4 v = buf[i];
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0x9E3779B9u) *sink = x;
}

struct Flusher {
  size_t n = (size_t)160 << 20 >> 4;  // 160 MB of uint4
  Dev<uint4> buf{n};
  Dev<unsigned> sink{1};
  Flusher() { DSG_CUDA(cudaMemset(buf.p, 0x5A, n * sizeof(uint4))); }
  void run(cudaStream_t s) {
    flushL2<<<1056, 512, 0, s>>>(buf.p, n, sink.p);
    DSG_LAUNCHED("flushL2");
  }
};

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/** Median time of one launch (microseconds): a graph of kLayers (flush, launch) pairs minus a graph of the flushes. */
template <class F>
static double timeLaunch(Flusher& fl, cudaStream_t st, F&& launch) {
  constexpr int kLayers = 16, kReps = 11;
  auto capture = [&](bool withLaunch) {
    cudaGraph_t g;
    cudaGraphExec_t e;
    DSG_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < kLayers; ++i) {
      fl.run(st);
      if (withLaunch) launch(st);
    }
    DSG_CUDA(cudaStreamEndCapture(st, &g));
    DSG_CUDA(cudaGraphInstantiate(&e, g, 0));
    DSG_CUDA(cudaGraphDestroy(g));
    return e;
  };
  cudaGraphExec_t both = capture(true), flushes = capture(false);
  cudaEvent_t a, b;
  DSG_CUDA(cudaEventCreate(&a));
  DSG_CUDA(cudaEventCreate(&b));
  std::vector<double> tBoth, tFlush;
  for (int r = 0; r < kReps + 2; ++r) {
    for (int which = 0; which < 2; ++which) {
      DSG_CUDA(cudaEventRecord(a, st));
      DSG_CUDA(cudaGraphLaunch(which ? flushes : both, st));
      DSG_CUDA(cudaEventRecord(b, st));
      DSG_CUDA(cudaEventSynchronize(b));
      float ms = 0;
      DSG_CUDA(cudaEventElapsedTime(&ms, a, b));
      if (r >= 2) (which ? tFlush : tBoth).push_back(ms * 1e3);
    }
  }
  DSG_CUDA(cudaEventDestroy(a));
  DSG_CUDA(cudaEventDestroy(b));
  DSG_CUDA(cudaGraphExecDestroy(both));
  DSG_CUDA(cudaGraphExecDestroy(flushes));
  return (median(tBoth) - median(tFlush)) / kLayers;
}

static double copyBandwidthTBs(cudaStream_t st) {
  const size_t bytes = (size_t)1 << 30;
  Dev<uint8_t> src(bytes), dst(bytes);
  DSG_CUDA(cudaMemset(src.p, 1, bytes));
  cudaEvent_t a, b;
  DSG_CUDA(cudaEventCreate(&a));
  DSG_CUDA(cudaEventCreate(&b));
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    DSG_CUDA(cudaEventRecord(a, st));
    DSG_CUDA(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, st));
    DSG_CUDA(cudaEventRecord(b, st));
    DSG_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    DSG_CUDA(cudaEventElapsedTime(&ms, a, b));
    if (r >= 2) t.push_back(ms * 1e-3);
  }
  DSG_CUDA(cudaEventDestroy(a));
  DSG_CUDA(cudaEventDestroy(b));
  return 2.0 * bytes / median(t) / 1e12;
}

struct TimingRow {
  int bs, ctx;
  double mb, floorUs, oldUs, newUs, bestUs;
  std::string best;
  int oldSplits;
};

static TimingRow timeShape(Flusher& fl, cudaStream_t st, int bs, int ctx, double copyTBs, int smCount) {
  const int D = 128, heads = 16, kvHeads = 8, P = 16;
  const Batch b = makeBatch(D, heads, kvHeads, P, std::vector<int>(bs, ctx));
  const size_t poolElems = (size_t)b.numPages * P * kvHeads * D;
  Dev<bf16> dK(poolElems), dV(poolElems), dQ((size_t)bs * heads * D), outOld((size_t)bs * heads * D),
      outNew((size_t)bs * heads * D);
  fillRandom<<<2048, 256>>>(dK.p, poolElems, 11);
  fillRandom<<<2048, 256>>>(dV.p, poolElems, 22);
  fillRandom<<<256, 256>>>(dQ.p, dQ.n, 33);
  DSG_LAUNCHED("fillRandom");
  DSG_CUDA(cudaDeviceSynchronize());  // the timing stream does not wait for the legacy stream
  Dev<int4> dSeqs(b.seqs);
  Dev<int32_t> dTable(b.table);
  Dev<float> partO((size_t)16 * bs * heads * D), partLse((size_t)16 * bs * heads);
  const float scale = 1.f / std::sqrt((float)D);
  const AttnBatch batch{dSeqs.p, dTable.p, bs, 1, P};
  const int oldSplits = decode_check::baselineSplits(bs, kvHeads, smCount);

  auto runOld = [&](cudaStream_t s) {
    decode_check::baselineDecode(dQ.p, dK.p, dV.p, dSeqs.p, dTable.p, bs, P, heads, kvHeads, D, scale, oldSplits,
                                 outOld.p, partO.p, partLse.p, s);
  };
  auto runNew = [&](cudaStream_t s, DecodeTuning t) {
    if (!launchDecodeAttention(dQ.p, dK.p, dV.p, batch, bs, heads, kvHeads, D, scale, 1, outNew.p, partO.p, partLse.p,
                               s, &t))
      throw EngineError("LLM_ERR_DEVICE", "decode fast path refused the Qwen3 shape");
  };
  // Same output as the baseline (both bf16 over the same inputs).
  outNew.poison();
  runOld(st);
  runNew(st, {0, 0});
  DSG_CUDA(cudaStreamSynchronize(st));
  {
    const auto o = outOld.get(), n = outNew.get();
    double num = 0, den = 0;
    bool finite = true;
    for (size_t i = 0; i < o.size(); ++i) {
      const double x = __bfloat162float(o[i]), y = __bfloat162float(n[i]);
      if (!std::isfinite(y)) finite = false;
      num += (x - y) * (x - y);
      den += x * x;
    }
    const double rel = finite ? std::sqrt(num / den) : NAN;
    const bool ok = finite && rel < 1e-2;
    if (!ok) ++failures;
    printf("timing shape bs %3d ctx %4d: new vs baseline output rel %.2e %s\n", bs, ctx, rel, ok ? "PASS" : "FAIL");
  }

  TimingRow row{bs, ctx, 0, 0, 0, 0, 0, "", oldSplits};
  const double bytes = (double)b.keys * kvHeads * D * 2 * 2;
  row.mb = bytes / 1e6;
  row.floorUs = bytes / (copyTBs * 1e12) * 1e6;
  row.oldUs = timeLaunch(fl, st, runOld);
  row.newUs = timeLaunch(fl, st, [&](cudaStream_t s) { runNew(s, {0, 0}); });
  row.bestUs = row.newUs;
  row.best = "auto";
  // Load-depth variants at the automatic cluster size, then cluster sizes for two of them.
  struct Variant {
    const char* name;
    DecodeTuning t;
  };
  std::vector<Variant> variants = {{"U4 regs", {0, 4, 1}}, {"U2 regs", {0, 2, 1}}, {"U8 regs", {0, 8, 1}},
                                   {"U4 S2", {0, 4, 2}},   {"U4 S3", {0, 4, 3}},   {"U4 S4", {0, 4, 4}},
                                   {"U2 S4", {0, 2, 4}},   {"U2 S6", {0, 2, 6}}};
  for (int c : {1, 2, 4, 8}) {
    variants.push_back({c == 1 ? "C1 U4 regs" : c == 2 ? "C2 U4 regs" : c == 4 ? "C4 U4 regs" : "C8 U4 regs", {c, 4, 1}});
    variants.push_back({c == 1 ? "C1 U4 S3" : c == 2 ? "C2 U4 S3" : c == 4 ? "C4 U4 S3" : "C8 U4 S3", {c, 4, 3}});
  }
  std::string line;
  for (const auto& v : variants) {
    const double t = timeLaunch(fl, st, [&](cudaStream_t s) { runNew(s, v.t); });
    char buf[64];
    snprintf(buf, sizeof buf, " %s %.2f", v.name, t);
    line += buf;
    if (t < row.bestUs) {
      row.bestUs = t;
      row.best = v.name;
    }
  }
  printf("  sweep bs %d ctx %d (us):%s\n", bs, ctx, line.c_str());
  printf("  bs %3d ctx %4d  baseline (splits %d): %8.2f us   new auto: %8.2f us\n", bs, ctx, oldSplits, row.oldUs,
         row.newUs);
  return row;
}

/**
 * Variable-length decode batches like a serving step's (contexts uniform in [lo, hi]): one launch per variant of
 * cluster size (0 = automatic) x keys per row, with the sequence records as given or sorted longest first (the
 * order blocks are dispatched in). Prints one table row per (bs, order) with each variant's time and the best.
 */
static void timeMix(Flusher& fl, cudaStream_t st, int bs, int lo, int hi, double copyTBs) {
  const int D = 128, heads = 16, kvHeads = 8, P = 16;
  std::uniform_int_distribution<int> len(lo, hi);
  std::vector<int> lens(bs);
  for (int& l : lens) l = len(rng);
  Batch b = makeBatch(D, heads, kvHeads, P, lens);
  const size_t poolElems = (size_t)b.numPages * P * kvHeads * D;
  Dev<bf16> dK(poolElems), dV(poolElems), dQ((size_t)bs * heads * D), out((size_t)bs * heads * D);
  fillRandom<<<2048, 256>>>(dK.p, poolElems, 11);
  fillRandom<<<2048, 256>>>(dV.p, poolElems, 22);
  fillRandom<<<256, 256>>>(dQ.p, dQ.n, 33);
  DSG_LAUNCHED("fillRandom");
  DSG_CUDA(cudaDeviceSynchronize());
  std::vector<int4> sorted = b.seqs;
  std::stable_sort(sorted.begin(), sorted.end(), [](const int4& x, const int4& y) { return x.z > y.z; });
  Dev<int4> dGiven(b.seqs), dSorted(sorted);
  Dev<int32_t> dTable(b.table);
  Dev<float> partO(1), partLse(1);
  const float scale = 1.f / std::sqrt((float)D);
  const double mb = (double)b.keys * kvHeads * D * 2 * 2 / 1e6;
  const double floorUs = mb / (copyTBs * 1e6) * 1e6;
  for (int order = 0; order < 2; ++order) {
    const AttnBatch batch{order ? dSorted.p : dGiven.p, dTable.p, bs, 1, P};
    std::string line;
    double best = 1e30, autoUs = 0;
    std::string bestName;
    for (int c : {0, 1, 2, 4, 8})
      for (int u : {4, 8}) {
        const DecodeTuning t{c, u, 1};
        const double us = timeLaunch(fl, st, [&](cudaStream_t s) {
          if (!launchDecodeAttention(dQ.p, dK.p, dV.p, batch, bs, heads, kvHeads, D, scale, 1, out.p, partO.p,
                                     partLse.p, s, &t))
            throw EngineError("LLM_ERR_DEVICE", "decode fast path refused the Qwen3 shape");
        });
        char name[32], buf[48];
        snprintf(name, sizeof name, "C%s U%d", c ? std::to_string(c).c_str() : "auto", u);
        snprintf(buf, sizeof buf, " %s %.1f", name, us);
        line += buf;
        if (c == 0 && u == 4) autoUs = us;
        if (us < best) {
          best = us;
          bestName = name;
        }
      }
    printf("| %d | [%d, %d] | %s | %.1f | %.2f | %.2f (%.2f TB/s) | %.2f %s (%.2f TB/s) |%s |\n", bs, lo, hi,
           order ? "longest first" : "as given", mb, floorUs, autoUs, mb / autoUs, best, bestName.c_str(), mb / best,
           line.c_str());
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool mixOnly = argc > 1 && std::strcmp(argv[1], "--mix") == 0;  // correctness, then variable-length timing
  try {
    cudaDeviceProp prop;
    DSG_CUDA(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    decode_check::baselinePrepare();
#ifdef DSG_WITH_DISPATCH
    prepareAttentionKernels();
#endif
    const std::vector<int> lens7 = {1, 15, 16, 17, 192, 882, 2048};
    auto mixed = [&](int bs) {
      std::vector<int> v(bs);
      for (int i = 0; i < bs; ++i) v[i] = lens7[(i * 5 + bs) % 7];
      return v;
    };
    const Path X = Path::Direct, DP = Path::Dispatch;
    // head_dim 128, GQA 2 (Qwen3-0.6B): every output mode and load depth, page sizes 16, 1 and 5.
    checkDecode("D128 16/8 p16 bs7 auto (cluster 8)", 128, 16, 8, 16, mixed(7), 1, X);
    checkDecode("D128 16/8 p1 bs7 C1 (direct)", 128, 16, 8, 1, mixed(7), 1, X, {1, 0});
    checkDecode("D128 16/8 p16 bs7 C2", 128, 16, 8, 16, mixed(7), 1, X, {2, 0});
    checkDecode("D128 16/8 p5 bs7 C4", 128, 16, 8, 5, mixed(7), 1, X, {4, 0});
    checkDecode("D128 16/8 p16 bs7 splits 3 + merge", 128, 16, 8, 16, mixed(7), 3, X);
    checkDecode("D128 16/8 p1 bs7 U2", 128, 16, 8, 1, mixed(7), 1, X, {0, 2});
    checkDecode("D128 16/8 p16 bs7 U8 C2", 128, 16, 8, 16, mixed(7), 1, X, {2, 8});
    // The cp.async ring (per-warp shared-memory stages) at several depths.
    checkDecode("D128 16/8 p16 bs7 U4 S2", 128, 16, 8, 16, mixed(7), 1, X, {0, 4, 2});
    checkDecode("D128 16/8 p1 bs7 U4 S3 C2", 128, 16, 8, 1, mixed(7), 1, X, {2, 4, 3});
    checkDecode("D128 16/8 p5 bs7 U4 S4 C1", 128, 16, 8, 5, mixed(7), 1, X, {1, 4, 4});
    checkDecode("D128 16/8 p16 bs7 U2 S4 C8", 128, 16, 8, 16, mixed(7), 1, X, {8, 2, 4});
    checkDecode("D128 16/8 p16 bs7 U2 S6 splits 3 + merge", 128, 16, 8, 16, mixed(7), 3, X, {0, 2, 6});
    checkDecode("D128 16/8 p16 bs7 U8 regs C4", 128, 16, 8, 16, mixed(7), 1, X, {4, 8, 1});
    // Other groups and head dims.
    checkDecode("D64 16/4 (G4) p16 bs5", 64, 16, 4, 16, {1, 17, 192, 15, 300}, 1, X);
    checkDecode("D64 8/8 (G1) p1 bs4 C1", 64, 8, 8, 1, {33, 2, 16, 129}, 1, X, {1, 0});
    checkDecode("D256 8/4 (G2) p16 bs3", 256, 8, 4, 16, {882, 1, 40}, 1, X);
    checkDecode("D128 8/8 (G1) p5 bs4 splits 2 + merge", 128, 8, 8, 5, {1, 16, 17, 300}, 2, X);
    checkDecode("D128 32/4 (G8) p16 bs3", 128, 32, 4, 16, {192, 17, 5}, 1, X);
    // Through launchAttention: fast path, caller splits, and the shapes that fall back to the general kernel.
    checkDecode("dispatch D128 16/8 p16 bs7", 128, 16, 8, 16, mixed(7), 1, DP);
    checkDecode("dispatch D128 16/8 p16 bs7 splits 4 + merge", 128, 16, 8, 16, mixed(7), 4, DP);
    checkDecode("dispatch fallback D128 16/1 (G16) p16 bs3", 128, 16, 1, 16, {192, 17, 1}, 1, DP);
    checkDecode("dispatch fallback D32 8/2 p16 bs3", 32, 8, 2, 16, {192, 17, 1}, 1, DP);
    if (!quick && !mixOnly) {
      for (int bs : {1, 8, 32, 64, 256}) {
        const std::string name = "D128 16/8 p16 mixed bs" + std::to_string(bs) + " auto";
        checkDecode(name.c_str(), 128, 16, 8, 16, mixed(bs), 1, X);
      }
      checkDecode("D128 16/8 p1 mixed bs64 auto", 128, 16, 8, 1, mixed(64), 1, X);
      checkDecode("D128 16/8 p16 bs1 ctx2048 auto", 128, 16, 8, 16, {2048}, 1, X);
      checkDecode("D64 8/8 (G1) p1 mixed bs33", 64, 8, 8, 1, mixed(33), 1, X);
      checkDecode("D128 16/4 (G4) p16 mixed bs32", 128, 16, 4, 16, mixed(32), 1, X);
      checkDecode("dispatch D128 16/8 p16 mixed bs128", 128, 16, 8, 16, mixed(128), 1, DP);
      checkDecode("D128 16/8 p16 mixed bs64 U4 S3", 128, 16, 8, 16, mixed(64), 1, X, {0, 4, 3});
      checkDecode("D128 16/8 p1 mixed bs256 U2 S4", 128, 16, 8, 1, mixed(256), 1, X, {0, 2, 4});
    }
    printf("correctness: %d failure(s)\n", failures);
    if (mixOnly) {
      cudaStream_t st;
      DSG_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      const double copyTBs = copyBandwidthTBs(st);
      Flusher fl;
      printf("copy bandwidth %.3f TB/s; variable-length decode batches, per layer (us), Qwen3-0.6B shape, page 16\n", copyTBs);
      printf("| bs | kvLen | order | KV MB | floor us | auto C U4 | best | all |\n|---|---|---|---|---|---|---|---|\n");
      for (int bs : {256, 192, 128, 96, 64, 32, 16}) timeMix(fl, st, bs, 100, 2000, copyTBs);
      timeMix(fl, st, 256, 100, 1024, copyTBs);
      timeMix(fl, st, 64, 1000, 2000, copyTBs);
    }
    if (!quick && !mixOnly) {
      cudaStream_t st;
      DSG_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      const double copyTBs = copyBandwidthTBs(st);
      printf("copy bandwidth %.3f TB/s (read + write)\n", copyTBs);
      Flusher fl;
      std::vector<TimingRow> rows;
      for (int ctx : {192, 882})
        for (int bs : {1, 8, 32, 64, 128, 256}) rows.push_back(timeShape(fl, st, bs, ctx, copyTBs, prop.multiProcessorCount));
      printf("\nDecode attention per layer, Qwen3-0.6B shape (16/8 heads, D128, page 16, bf16), %s; L2 flushed before each\n"
             "launch; floor = KV bytes / copy %.2f TB/s. old = attentionKernel<128> (+merge) with the old split rule.\n",
             prop.name, copyTBs);
      printf("| bs | ctx | KV MB | floor us | old us (splits) | new us (auto) | new TB/s | new/floor | speedup | best sweep |\n");
      printf("|---|---|---|---|---|---|---|---|---|---|\n");
      for (const auto& r : rows)
        printf("| %d | %d | %.1f | %.2f | %.2f (%d) | %.2f | %.2f | %.0f%% | %.2fx | %.2f us %s |\n", r.bs, r.ctx, r.mb,
               r.floorUs, r.oldUs, r.oldSplits, r.newUs, r.mb / r.newUs, 100.0 * r.floorUs / r.newUs,
               r.oldUs / r.newUs, r.bestUs, r.best.c_str());
    }
  } catch (const std::exception& e) {
    printf("ERROR %s\n", e.what());
    return 2;
  }
  printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
