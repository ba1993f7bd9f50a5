// Check and timing of the tensor-core prefill attention (native/cuda/prefill_attention.cuh, which launchAttention
// dispatches to): every tile-shape variant is launched directly, as well as the one the engine runs.
// Correctness: random q/K/V (never zeros), a ragged batch of sequences with cached prefixes, page sizes 1 and 16,
// head_dim 64 and 128, GQA groups 1/2/4, outputs poisoned first (every element must be written and finite), against
// a float64 CPU reference (every row of short sequences, a sample of the rows of long ones).
// Timing (cudaEvents, median): the previous kernel (a copy below, the baseline) against each variant, Qwen3-0.6B
// shape (16 heads, 8 KV heads, head_dim 128, page 16), one sequence of 1024, 2048 and 4096 tokens.
// Build and run (GPU machine, repository root):
//   nvcc -std=c++17 -O3 -arch=sm_90 -lineinfo -I native/include -I native/cuda \
//     native/cuda/tests/prefill_attention_check.cu -o pfcheck && ./pfcheck          (--small: no timing, small batch)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "prefill_attention.cuh"
#include "check_util.cuh"

using namespace dsg;
using namespace dsg::cuda;
using namespace check;
using namespace dsg::cuda::prefill;

namespace legacy {
// The tensor-core prefill kernel this one replaces (commit af6911f), kept as the timing baseline: 64 query rows,
// 4 warps, synchronous 64-key K/V tiles, B fragments from 32-bit shared loads, V gathered 2 bytes at a time.
constexpr int kRows = 64, kKeys = 64, kPadL = 8;
template <int D>
constexpr size_t smemBytes() {
  return (size_t)(kRows + 2 * kKeys) * (D + kPadL) * sizeof(bf16);
}
__device__ __forceinline__ void mma(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack(bf16 lo, bf16 hi) {
  __nv_bfloat162 h;
  h.x = lo;
  h.y = hi;
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <int D>
__global__ void __launch_bounds__(128) kernel(const bf16* __restrict__ q, const bf16* __restrict__ kCache,
                                              const bf16* __restrict__ vCache, const int4* __restrict__ seqs,
                                              const int32_t* __restrict__ pageTable, int pageSize, int heads,
                                              int kvHeads, float scaleLog2, bf16* __restrict__ out) {
  constexpr int S = D + kPadL;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + kRows * S;
  bf16* sV = sK + kKeys * S;
  const int group = heads / kvHeads;
  const int tokensPerTile = kRows / group;
  const int sIdx = blockIdx.z, kvh = blockIdx.y;
  const int4 seq = seqs[sIdx];
  const int t0 = blockIdx.x * tokensPerTile;
  if (t0 >= seq.y) return;
  const int nTok = min(tokensPerTile, seq.y - t0);
  const int startPos = seq.z - seq.y;
  const int kEnd = startPos + t0 + nTok;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  for (int idx = threadIdx.x; idx < kRows * (D / 8); idx += blockDim.x) {
    const int r = idx / (D / 8), c = idx % (D / 8);
    const int tq = r / group;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (tq < nTok) {
      const int64_t token = seq.x + t0 + tq;
      v = *reinterpret_cast<const uint4*>(q + (token * heads + kvh * group + r % group) * D + c * 8);
    }
    *reinterpret_cast<uint4*>(sQ + r * S + c * 8) = v;
  }
  const int rA = warp * 16 + g, rB = rA + 8;
  const bool validA = rA / group < nTok, validB = rB / group < nTok;
  const int qposA = startPos + t0 + rA / group, qposB = startPos + t0 + rB / group;
  float mA = -INFINITY, mB = -INFINITY, lA = 0.f, lB = 0.f;
  float o[D / 8][4];
#pragma unroll
  for (int nd = 0; nd < D / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  for (int kt = 0; kt < kEnd; kt += kKeys) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kKeys * (D / 8); idx += blockDim.x) {
      const int key = idx / (D / 8), c = idx % (D / 8);
      const int kk = kt + key;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (kk < kEnd) {
        const int64_t page = pageTable[seq.w + kk / pageSize];
        const int64_t off = ((page * pageSize + kk % pageSize) * kvHeads + kvh) * D + c * 8;
        kv = *reinterpret_cast<const uint4*>(kCache + off);
        vv = *reinterpret_cast<const uint4*>(vCache + off);
      }
      *reinterpret_cast<uint4*>(sK + key * S + c * 8) = kv;
      *reinterpret_cast<uint4*>(sV + key * S + c * 8) = vv;
    }
    __syncthreads();
    float sc[kKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t a0 = ld32(sQ + rA * S + ks * 16 + 2 * t), a1 = ld32(sQ + rB * S + ks * 16 + 2 * t);
      const uint32_t a2 = ld32(sQ + rA * S + ks * 16 + 2 * t + 8), a3 = ld32(sQ + rB * S + ks * 16 + 2 * t + 8);
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
        const bf16* kr = sK + (nt * 8 + g) * S + ks * 16 + 2 * t;
        mma(sc[nt], a0, a1, a2, a3, ld32(kr), ld32(kr + 8));
      }
    }
    float tmA = -INFINITY, tmB = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = kt + nt * 8 + 2 * t + (e & 1);
        const bool ok = e < 2 ? (validA && key <= qposA) : (validB && key <= qposB);
        sc[nt][e] = ok ? sc[nt][e] * scaleLog2 : -INFINITY;
      }
      tmA = fmaxf(tmA, fmaxf(sc[nt][0], sc[nt][1]));
      tmB = fmaxf(tmB, fmaxf(sc[nt][2], sc[nt][3]));
    }
    tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 1));
    tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, 2));
    tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 1));
    tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, 2));
    const float nmA = fmaxf(mA, tmA), nmB = fmaxf(mB, tmB);
    const float baseA = nmA == -INFINITY ? 0.f : nmA, baseB = nmB == -INFINITY ? 0.f : nmB;
    const float alphaA = exp2f(mA - baseA), alphaB = exp2f(mB - baseB);
    float sumA = 0.f, sumB = 0.f;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      sc[nt][0] = exp2f(sc[nt][0] - baseA);
      sc[nt][1] = exp2f(sc[nt][1] - baseA);
      sc[nt][2] = exp2f(sc[nt][2] - baseB);
      sc[nt][3] = exp2f(sc[nt][3] - baseB);
      sumA += sc[nt][0] + sc[nt][1];
      sumB += sc[nt][2] + sc[nt][3];
    }
    sumA += __shfl_xor_sync(0xffffffffu, sumA, 1);
    sumA += __shfl_xor_sync(0xffffffffu, sumA, 2);
    sumB += __shfl_xor_sync(0xffffffffu, sumB, 1);
    sumB += __shfl_xor_sync(0xffffffffu, sumB, 2);
    lA = lA * alphaA + sumA;
    lB = lB * alphaB + sumB;
    mA = nmA;
    mB = nmB;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      o[nd][0] *= alphaA;
      o[nd][1] *= alphaA;
      o[nd][2] *= alphaB;
      o[nd][3] *= alphaB;
    }
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t a0 = pack(sc[2 * kk][0], sc[2 * kk][1]), a1 = pack(sc[2 * kk][2], sc[2 * kk][3]);
      const uint32_t a2 = pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      const uint32_t a3 = pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
      const bf16* v0 = sV + (kk * 16 + 2 * t) * S + g;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) {
        const bf16* vp = v0 + nd * 8;
        mma(o[nd], a0, a1, a2, a3, pack(vp[0], vp[S]), pack(vp[8 * S], vp[9 * S]));
      }
    }
  }
  const float invA = lA > 0.f ? 1.f / lA : 0.f, invB = lB > 0.f ? 1.f / lB : 0.f;
  if (validA) {
    const int64_t token = seq.x + t0 + rA / group;
    bf16* dst = out + (token * heads + kvh * group + rA % group) * D + 2 * t;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) = __floats2bfloat162_rn(o[nd][0] * invA, o[nd][1] * invA);
  }
  if (validB) {
    const int64_t token = seq.x + t0 + rB / group;
    bf16* dst = out + (token * heads + kvh * group + rB % group) * D + 2 * t;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd)
      *reinterpret_cast<__nv_bfloat162*>(dst + nd * 8) = __floats2bfloat162_rn(o[nd][2] * invB, o[nd][3] * invB);
  }
}

template <int D>
void launch(const bf16* q, const bf16* k, const bf16* v, const AttnBatch& b, int heads, int kvHeads, float scale,
            bf16* out) {
  const int tokens = kRows / (heads / kvHeads);
  const dim3 grid((b.maxQLen + tokens - 1) / tokens, kvHeads, b.numSeqs);
  kernel<D><<<grid, 128, smemBytes<D>()>>>(q, k, v, b.seqs, b.pageTable, b.pageSize, heads, kvHeads,
                                           scale * 1.4426950408889634f, out);
  DSG_LAUNCHED("legacy prefill kernel");
}
template <int D>
void prepare() {
  DSG_CUDA(cudaFuncSetAttribute(kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smemBytes<D>()));
}
}  // namespace legacy

// Kernels under test: 0 = launchPrefillAttention (the shape the engine picks), 1 = the legacy baseline, 2.. = tile
// shapes (warps x m-tiles of 16 rows per warp, ring stages, min blocks per SM).
static const char* kKernelNames[] = {"engine pick", "legacy 4w 64r sync", "8w x1 2st", "4w x2 2st 2b",
                                     "8w x2 2st",   "4w x1 2st 2b",       "8w x2 3st"};
constexpr int kNumKernels = sizeof(kKernelNames) / sizeof(kKernelNames[0]);

template <int D>
static void prepareAll() {
  legacy::prepare<D>();
  preparePrefillAttention<D>();
  preparePrefillTc<D, 8, 2, 1, 1>();
  preparePrefillTc<D, 4, 2, 2, 2>();
  preparePrefillTc<D, 8, 2, 2, 1>();
  preparePrefillTc<D, 4, 2, 1, 2>();
  preparePrefillTc<D, 8, 3, 2, 1>();
}

template <int D>
static void runKernel(int which, const bf16* q, const bf16* k, const bf16* v, const AttnBatch& b, int numTokens,
                      int heads, int kvHeads, float scale, bf16* out) {
  switch (which) {
    case 0: launchPrefillAttention<D>(q, k, v, b, numTokens, heads, kvHeads, scale, out, 0); break;
    case 1: legacy::launch<D>(q, k, v, b, heads, kvHeads, scale, out); break;
    case 2: launchPrefillTc<D, 8, 2, 1, 1>(q, k, v, b, heads, kvHeads, scale, out, 0); break;
    case 3: launchPrefillTc<D, 4, 2, 2, 2>(q, k, v, b, heads, kvHeads, scale, out, 0); break;
    case 4: launchPrefillTc<D, 8, 2, 2, 1>(q, k, v, b, heads, kvHeads, scale, out, 0); break;
    case 5: launchPrefillTc<D, 4, 2, 1, 2>(q, k, v, b, heads, kvHeads, scale, out, 0); break;
    case 6: launchPrefillTc<D, 8, 3, 2, 1>(q, k, v, b, heads, kvHeads, scale, out, 0); break;
  }
}
static void run(int D, int which, const bf16* q, const bf16* k, const bf16* v, const AttnBatch& b, int numTokens,
                int heads, int kvHeads, float scale, bf16* out) {
  if (D == 64) runKernel<64>(which, q, k, v, b, numTokens, heads, kvHeads, scale, out);
  else runKernel<128>(which, q, k, v, b, numTokens, heads, kvHeads, scale, out);
}

static std::mt19937_64 rng(20261127);


struct Seq {
  int qLen, kvLen;
};

// One ragged batch in device memory: q [tokens, heads, D], a paged pool with shuffled pages, random values.
struct Problem {
  int D, heads, kvHeads, pageSize, numTokens = 0, maxQ = 0;
  std::vector<int4> seqs;
  std::vector<int32_t> table;
  std::vector<float> q, k, v;  // bf16-exact values
  Problem(int D_, int heads_, int kvHeads_, int pageSize_, const std::vector<Seq>& specs)
      : D(D_), heads(heads_), kvHeads(kvHeads_), pageSize(pageSize_) {
    int pages = 0;
    for (auto& s : specs) {
      numTokens += s.qLen;
      maxQ = std::max(maxQ, s.qLen);
      pages += (s.kvLen + pageSize - 1) / pageSize;
    }
    const int numPages = pages + 5;
    std::vector<int32_t> perm(numPages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    int qStart = 0;
    for (auto& s : specs) {
      seqs.push_back(make_int4(qStart, s.qLen, s.kvLen, (int)table.size()));
      for (int p = 0; p < (s.kvLen + pageSize - 1) / pageSize; ++p) table.push_back(perm[table.size()]);
      qStart += s.qLen;
    }
    std::normal_distribution<float> nd(0.f, 1.f);
    auto fill = [&](std::vector<float>& x, size_t n, float std) {
      x.resize(n);
      for (auto& e : x) {
        e = __bfloat162float(__float2bfloat16(nd(rng) * std));
        if (e == 0.f) e = 0.5f;
      }
    };
    const size_t cache = (size_t)numPages * pageSize * kvHeads * D;
    fill(q, (size_t)numTokens * heads * D, 1.f);
    fill(k, cache, 1.f);
    fill(v, cache, 1.f);
  }
};


// Rows (token index into the batch) the reference covers: all of a short sequence, a stride sample plus both
// ends of a long one.
static std::vector<int> sampledTokens(const Problem& p) {
  std::vector<int> rows;
  for (auto& s : p.seqs)
    for (int t = 0; t < s.y; ++t)
      if (s.y <= 300 || t % 13 == 0 || t < 3 || t >= s.y - 3 || (t >= 60 && t < 70)) rows.push_back(s.x + t);
  return rows;
}

// float64 reference for the sampled rows, all heads; out indexed like the kernel's output.
static std::vector<double> reference(const Problem& p, const std::vector<int>& rows) {
  const int D = p.D, heads = p.heads, group = p.heads / p.kvHeads;
  std::vector<double> ref((size_t)p.numTokens * heads * D, 0.0);
  std::vector<int> seqOf(p.numTokens);
  for (size_t si = 0; si < p.seqs.size(); ++si)
    for (int t = 0; t < p.seqs[si].y; ++t) seqOf[p.seqs[si].x + t] = (int)si;
  const double scale = 1.0 / std::sqrt((double)D);
  std::atomic<size_t> next{0};
  const size_t jobs = rows.size() * heads;
  auto worker = [&]() {
    std::vector<double> sc;
    for (size_t j; (j = next.fetch_add(1)) < jobs;) {
      const int token = rows[j / heads], h = (int)(j % heads);
      const int4 s = p.seqs[seqOf[token]];
      const size_t at = ((size_t)token * heads + h) * D;
      referenceAttentionRow(&p.q[at], p.k.data(), p.v.data(), &p.table[s.w], p.pageSize, p.kvHeads, h / group, D,
                            s.z - s.y + (token - s.x) + 1, scale, sc, &ref[at]);
    }
  };
  const unsigned n = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < n; ++i) pool.emplace_back(worker);
  for (auto& th : pool) th.join();
  return ref;
}

static void checkConfig(int pageSize, int D, int group, const std::vector<Seq>& specs, bool verbose) {
  const int heads = 16, kvHeads = heads / group;
  Problem p(D, heads, kvHeads, pageSize, specs);
  const auto rows = sampledTokens(p);
  const auto ref = reference(p, rows);
  Dev<bf16> dQ(toBf16(p.q)), dK(toBf16(p.k)), dV(toBf16(p.v)), dOut((size_t)p.numTokens * heads * D);
  Dev<int4> dSeqs(p.seqs);
  Dev<int32_t> dTable(p.table);
  const AttnBatch batch{dSeqs.p, dTable.p, (int)p.seqs.size(), p.maxQ, pageSize};
  const float scale = 1.f / std::sqrt((float)D);
  for (int which = 0; which < kNumKernels; ++which) {
    dOut.poison();
    run(D, which, dQ.p, dK.p, dV.p, batch, p.numTokens, heads, kvHeads, scale, dOut.p);
    DSG_CUDA(cudaDeviceSynchronize());
    const auto out = dOut.get();
    size_t unwritten = 0;
    for (auto& x : out) unwritten += !std::isfinite(__bfloat162float(x));
    double num = 0, den = 0;
    for (int token : rows)
      for (int i = 0; i < heads * D; ++i) {
        const size_t e = (size_t)token * heads * D + i;
        const double diff = __bfloat162float(out[e]) - ref[e];
        num += diff * diff;
        den += ref[e] * ref[e];
      }
    const double err = unwritten ? NAN : std::sqrt(num / den);
    const bool ok = std::isfinite(err) && err <= 6e-3;
    if (!ok) ++failures;
    if (verbose || !ok)
      printf("%-20s page %2d D%3d group %d  rows %5zu  %s  rel err %.3e  non-finite %zu\n", kKernelNames[which],
             pageSize, D, group, rows.size(), ok ? "PASS" : "FAIL", err, unwritten);
  }
}

static void timeShape(int N, int reps) {
  const int D = 128, heads = 16, kvHeads = 8, pageSize = 16;
  Problem p(D, heads, kvHeads, pageSize, {{N, N}});
  Dev<bf16> dQ(toBf16(p.q)), dK(toBf16(p.k)), dV(toBf16(p.v)), dOut((size_t)p.numTokens * heads * D),
      dRef((size_t)p.numTokens * heads * D);
  Dev<int4> dSeqs(p.seqs);
  Dev<int32_t> dTable(p.table);
  const AttnBatch batch{dSeqs.p, dTable.p, 1, N, pageSize};
  const float scale = 1.f / std::sqrt((float)D);
  const double flops = 4.0 * heads * D * ((double)N * (N + 1) / 2);
  cudaEvent_t e0, e1;
  DSG_CUDA(cudaEventCreate(&e0));
  DSG_CUDA(cudaEventCreate(&e1));
  run(D, 1, dQ.p, dK.p, dV.p, batch, N, heads, kvHeads, scale, dRef.p);
  DSG_CUDA(cudaDeviceSynchronize());
  const auto refOut = dRef.get();
  double legacyUs = 0;
  for (int which = 0; which < kNumKernels; ++which) {
    for (int w = 0; w < 3; ++w) run(D, which, dQ.p, dK.p, dV.p, batch, p.numTokens, heads, kvHeads, scale, dOut.p);
    std::vector<float> ms(reps);
    for (int r = 0; r < reps; ++r) {
      DSG_CUDA(cudaEventRecord(e0));
      run(D, which, dQ.p, dK.p, dV.p, batch, p.numTokens, heads, kvHeads, scale, dOut.p);
      DSG_CUDA(cudaEventRecord(e1));
      DSG_CUDA(cudaEventSynchronize(e1));
      DSG_CUDA(cudaEventElapsedTime(&ms[r], e0, e1));
    }
    std::sort(ms.begin(), ms.end());
    const double us = ms[reps / 2] * 1e3, lo = ms[reps / 10] * 1e3, hi = ms[reps - 1 - reps / 10] * 1e3;
    if (which == 1) legacyUs = us;
    const auto out = dOut.get();
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double a = __bfloat162float(out[i]), b = __bfloat162float(refOut[i]);
      num += (a - b) * (a - b);
      den += b * b;
    }
    printf("TIME N=%5d %-20s %9.1f us (p10 %.1f p90 %.1f)  %6.1f TFLOP/s  x28 layers %6.2f ms  vs legacy %5.2fx  "
           "diff vs legacy %.1e\n",
           N, kKernelNames[which], us, lo, hi, flops / (us * 1e-6) / 1e12, us * 28 / 1e3,
           legacyUs > 0 ? legacyUs / us : 0.0, std::sqrt(num / den));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

int main(int argc, char** argv) {
  const bool small = argc > 1 && strcmp(argv[1], "--small") == 0;
  try {
    cudaDeviceProp prop;
    DSG_CUDA(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    prepareAll<64>();
    prepareAll<128>();
    const std::vector<Seq> full = {{4096, 4096}, {100, 100}, {37, 300}, {1000, 1530}, {1, 50}};
    const std::vector<Seq> reduced = {{130, 130}, {100, 100}, {37, 300}, {1, 50}, {65, 200}};
    for (int ps : {1, 16})
      for (int D : {64, 128})
        for (int group : {1, 2, 4}) checkConfig(ps, D, group, small ? reduced : full, !small);
    // Odd page size, a single-token chunk only, and a chunk that starts mid-tile.
    checkConfig(7, 128, 2, {{3, 3}, {1, 90}, {129, 1000}}, !small);
    printf("%s: %d check(s) failed\n", failures ? "FAILED" : "ALL CHECKS PASSED", failures);
    if (!small) {
      timeShape(1024, 50);
      timeShape(2048, 40);
      timeShape(4096, 30);
    }
    DSG_CUDA(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    printf("ERROR: %s\n", e.what());
    return 2;
  }
  return failures ? 1 : 0;
}
