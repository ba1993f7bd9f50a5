// Sampling and logprobs on the GPU, following native/include/sampling.h (the CPU reference is native/src/sampling.cpp).
// Banned ids (min_tokens) are masked to -inf by launchMaskBanned before launchSample: every path below gives such a
// token weight 0 (expf(-inf) = 0, and its key sorts last), so it is never drawn, and logprobs see the masked logits.
// Shapes: logits [numSeqs, vocab] f32 (Qwen3: vocab 151936, 594 KB per sequence); one 1024-thread block per sequence.
// Greedy is one pass (argmax, ties to the lowest id). Sorted-order filters need no sort: candidates are ranked by a
// unique 64-bit key (ordered logit bits, then inverted id), and every "shortest prefix whose weight reaches a target"
// question (top-k by count, top-p by mass, the final draw by mass) is a radix select over that key: 8 passes of an
// 8-bit histogram. Masses are fixed-point integers (p * 2^40, p <= 1 relative to the max), so the sums do not depend
// on atomic order and a seed replays bit-exactly. Floor: one read of the logits, ~0.2 us per sequence at 3 TB/s;
// the filtered path reads them ~26 times (from L2), so it costs tens of microseconds.
#include <algorithm>
#include <cfloat>
#include <climits>

#include "common.cuh"
#include "kernels.h"
#include "sampling.h"

namespace dsg::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxLoads = 8;                                       // float4 loads per thread, all in flight
constexpr int kArgmaxChunk = kArgmaxThreads * kArgmaxLoads * 4;       // logits per block pass (32 KB)
constexpr int kMaxArgmaxBlocks = 64;                                  // per sequence
constexpr double kFixedOne = 1099511627776.0;  // 2^40

__device__ __forceinline__ uint32_t orderedBits(float z) {
  const uint32_t u = __float_as_uint(z);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Larger key = earlier candidate: logit descending, then id ascending. Unique per token.
__device__ __forceinline__ uint64_t sortedKey(float z, int i) {
  return ((uint64_t)orderedBits(z) << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)i);
}

struct SampleShared {
  unsigned long long hist[256];
  unsigned long long u64[32];
  float f32[32];
  double f64[32];
  int i32[32];
  unsigned long long prefix, target;
  int count;
  unsigned long long topKeys[MAX_TOP_LOGPROBS];
};

__device__ unsigned long long blockSumU64(unsigned long long v, SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh.u64[warp] = v;
  __syncthreads();
  v = sh.u64[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ double blockSumF64(double v, SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) sh.f64[warp] = v;
  __syncthreads();
  v = sh.f64[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/** Which tokens count, and with what weight, in a prefix search. */
struct Filter {
  float zmax, invT, minP;
  unsigned long long keyFloor;  // candidates with a smaller key are out (top-k / top-p cut)
  bool mass;                    // weight p * 2^40 (else 1 per token)
  bool byId;                    // order by id ascending instead of by logit (the unfiltered draw)
};

__device__ __forceinline__ unsigned long long keyOf(const Filter& f, float z, int i) {
  return f.byId ? (unsigned long long)(0xFFFFFFFFu - (uint32_t)i) : sortedKey(z, i);
}

// Weight of token i under the filter, 0 when excluded.
__device__ __forceinline__ unsigned long long weightOf(const Filter& f, float z, unsigned long long key) {
  if (key < f.keyFloor) return 0;
  if (!f.mass && f.minP <= 0.f) return 1;
  const float p = expf((z - f.zmax) * f.invT);
  if (f.minP > 0.f && p < f.minP) return 0;
  return f.mass ? (unsigned long long)((double)p * kFixedOne) : 1ull;
}

__device__ unsigned long long sumWeights(const float* z, int vocab, const Filter& f, SampleShared& sh) {
  unsigned long long s = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += weightOf(f, z[i], keyOf(f, z[i], i));
  return blockSumU64(s, sh);
}

/**
 * Key of the candidate at which the running weight (in key-descending order) first reaches `target`
 * (>= target, or > target when strict). Radix select, 8 bits per pass from the top.
 */
__device__ unsigned long long findPrefixEnd(const float* z, int vocab, const Filter& f, unsigned long long target,
                                            bool strict, SampleShared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.target = target;
  }
  const int topShift = f.byId ? 24 : 56;
  for (int shift = topShift; shift >= 0; shift -= 8) {
    __syncthreads();
    if (threadIdx.x < 256) sh.hist[threadIdx.x] = 0;
    __syncthreads();
    const unsigned long long highMask = shift + 8 >= 64 ? 0ull : (~0ull << (shift + 8));
    const unsigned long long prefix = sh.prefix;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float zi = z[i];
      const unsigned long long key = keyOf(f, zi, i);
      if ((key & highMask) != prefix) continue;
      const unsigned long long w = weightOf(f, zi, key);
      if (w) atomicAdd(&sh.hist[(key >> shift) & 255], w);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned long long t = sh.target;
      unsigned long long acc = 0;
      int chosen = -1, last = -1;
      for (int b = 255; b >= 0; --b) {
        const unsigned long long h = sh.hist[b];
        if (!h) continue;
        last = b;
        if (strict ? acc + h > t : acc + h >= t) {
          chosen = b;
          break;
        }
        acc += h;
      }
      if (chosen < 0) {  // target beyond the total (rounding): take the last candidate
        chosen = last < 0 ? 0 : last;
        sh.target = sh.hist[chosen];
      } else {
        sh.target = t - acc;
      }
      sh.prefix = prefix | ((unsigned long long)chosen << shift);
    }
  }
  __syncthreads();
  const unsigned long long result = sh.prefix;
  __syncthreads();  // every thread has read it before the next search resets it
  return result;
}

/** Block-wide argmax (ties to the lower id) into f32[0] / i32[0] (32 entries each, shared), seen by every thread. */
__device__ void blockArgmax(float best, int bestId, float* f32, int* i32) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bestId, o);
    if (ov > best || (ov == best && oi < bestId)) {
      best = ov;
      bestId = oi;
    }
  }
  __syncthreads();
  if (lane == 0) {
    f32[warp] = best;
    i32[warp] = bestId;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < (int)(blockDim.x >> 5) ? f32[lane] : -INFINITY;
    bestId = lane < (int)(blockDim.x >> 5) ? i32[lane] : INT_MAX;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bestId, o);
      if (ov > best || (ov == best && oi < bestId)) {
        best = ov;
        bestId = oi;
      }
    }
    if (lane == 0) {
      f32[0] = best;
      i32[0] = bestId;
    }
  }
  __syncthreads();
}

/** Partial argmax of one slice of one sequence's logits: part[(s * kMaxArgmaxBlocks + b) * 2] = {logit bits, id}. */
__global__ void __launch_bounds__(kArgmaxThreads) argmaxPartialKernel(const float* __restrict__ logits, int vocab,
                                                                      const SampleParams* __restrict__ params,
                                                                      int32_t* __restrict__ part) {
  __shared__ float f32[32];
  __shared__ int i32[32];
  const int s = blockIdx.y;
  if (!params[s].sample) return;
  const float* z = logits + (int64_t)s * vocab;
  const int slice = ((vocab + gridDim.x - 1) / gridDim.x + 3) / 4 * 4;  // whole float4s
  const int lo = blockIdx.x * slice, hi = min(vocab, lo + slice);
  float best = -INFINITY;
  int bestId = vocab;
  for (int c0 = lo; c0 < hi; c0 += kArgmaxChunk) {
    float v[kArgmaxLoads][4];
#pragma unroll
    for (int j = 0; j < kArgmaxLoads; ++j) {
      const int i = c0 + (j * kArgmaxThreads + threadIdx.x) * 4;
      if ((vocab & 3) == 0 && i + 3 < hi) {
        const float4 q = *reinterpret_cast<const float4*>(z + i);
        v[j][0] = q.x;
        v[j][1] = q.y;
        v[j][2] = q.z;
        v[j][3] = q.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[j][e] = i + e < hi ? z[i + e] : -INFINITY;
      }
    }
#pragma unroll
    for (int j = 0; j < kArgmaxLoads; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = c0 + (j * kArgmaxThreads + threadIdx.x) * 4 + e;
        if (i < hi && (v[j][e] > best || (v[j][e] == best && i < bestId))) {
          best = v[j][e];
          bestId = i;
        }
      }
  }
  blockArgmax(best, bestId, f32, i32);
  if (threadIdx.x == 0) {
    part[((int64_t)s * kMaxArgmaxBlocks + blockIdx.x) * 2] = __float_as_int(f32[0]);
    part[((int64_t)s * kMaxArgmaxBlocks + blockIdx.x) * 2 + 1] = i32[0];
  }
}

__global__ void __launch_bounds__(kThreads) sampleKernel(const float* __restrict__ logits, int vocab,
                                                          const SampleParams* __restrict__ params, int topN,
                                                          int32_t* __restrict__ tokens, float* __restrict__ logprobs,
                                                          int32_t* __restrict__ topIds,
                                                          float* __restrict__ topLogprobs,
                                                          const int32_t* __restrict__ argmaxPart, int argmaxBlocks) {
  __shared__ SampleShared sh;
  const int s = blockIdx.x;
  const SampleParams sp = params[s];
  const float* z = logits + (int64_t)s * vocab;
  if (!sp.sample) {
    if (threadIdx.x == 0) {
      tokens[s] = -1;
      logprobs[s] = __int_as_float(0x7fc00000);
    }
    for (int i = threadIdx.x; i < topN; i += blockDim.x) {
      topIds[(int64_t)s * topN + i] = -1;
      topLogprobs[(int64_t)s * topN + i] = __int_as_float(0x7fc00000);
    }
    return;
  }

  // Argmax, ties to the lowest id: from argmaxPartialKernel's per-slice results when given, else one pass here.
  float best = -INFINITY;
  int bestId = vocab;
  if (argmaxBlocks > 0) {
    for (int j = threadIdx.x; j < argmaxBlocks; j += blockDim.x) {
      const float v = __int_as_float(argmaxPart[((int64_t)s * kMaxArgmaxBlocks + j) * 2]);
      const int id = argmaxPart[((int64_t)s * kMaxArgmaxBlocks + j) * 2 + 1];
      if (v > best || (v == best && id < bestId)) {
        best = v;
        bestId = id;
      }
    }
  } else {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = z[i];
      if (v > best || (v == best && i < bestId)) {
        best = v;
        bestId = i;
      }
    }
  }
  blockArgmax(best, bestId, sh.f32, sh.i32);
  const float zmax = sh.f32[0];
  const int argmax = sh.i32[0];
  __syncthreads();

  int chosen = argmax;
  if (!(sp.temperature == 0.f || sp.topK == 1)) {
    Filter f{zmax, 1.f / sp.temperature, 0.f, 0ull, true, false};
    const double u = samplingUniform(((uint64_t)sp.seedHi << 32) | sp.seedLo, sp.outputIndex);
    const bool filtered = sp.topK > 0 || sp.topP < 1.f || sp.minP > 0.f;
    unsigned long long key;
    if (!filtered) {
      f.byId = true;
      const unsigned long long mass = sumWeights(z, vocab, f, sh);
      key = findPrefixEnd(z, vocab, f, (unsigned long long)(u * (double)mass), true, sh);
      chosen = (int)(0xFFFFFFFFu - (uint32_t)key);
    } else {
      if (sp.topK > 0 && sp.topK < vocab) {
        Filter count = f;
        count.mass = false;
        f.keyFloor = findPrefixEnd(z, vocab, count, (unsigned long long)sp.topK, false, sh);
      }
      if (sp.topP < 1.f) {
        const unsigned long long kept = sumWeights(z, vocab, f, sh);
        const double limit = (double)sp.topP * (double)kept;
        unsigned long long t = (unsigned long long)limit;
        if ((double)t < limit) ++t;
        f.keyFloor = findPrefixEnd(z, vocab, f, t, false, sh);
      }
      f.minP = sp.minP;
      const unsigned long long kept = sumWeights(z, vocab, f, sh);
      key = findPrefixEnd(z, vocab, f, (unsigned long long)(u * (double)kept), true, sh);
      chosen = (int)(0xFFFFFFFFu - (uint32_t)(key & 0xFFFFFFFFull));
    }
  }

  if (sp.logprobs < 0) {
    if (threadIdx.x == 0) {
      tokens[s] = chosen;
      logprobs[s] = __int_as_float(0x7fc00000);
    }
    for (int i = threadIdx.x; i < topN; i += blockDim.x) {
      topIds[(int64_t)s * topN + i] = -1;
      topLogprobs[(int64_t)s * topN + i] = __int_as_float(0x7fc00000);
    }
    return;
  }
  float part = 0.f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) part += expf(z[i] - zmax);
  const double lse = (double)zmax + log(blockSumF64((double)part, sh));
  if (threadIdx.x == 0) {
    tokens[s] = chosen;
    logprobs[s] = (float)((double)z[chosen] - lse);
  }
  const int n = min(sp.logprobs, min(vocab, topN));
  if (n > 0) {
    const Filter count{zmax, 1.f, 0.f, 0ull, false, false};
    const unsigned long long floorKey = findPrefixEnd(z, vocab, count, (unsigned long long)n, false, sh);
    if (threadIdx.x == 0) sh.count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const unsigned long long key = sortedKey(z[i], i);
      if (key >= floorKey) sh.topKeys[atomicAdd(&sh.count, 1)] = key;
    }
    __syncthreads();
    if (threadIdx.x < n) {
      const unsigned long long key = sh.topKeys[threadIdx.x];
      int rank = 0;
      for (int j = 0; j < n; ++j) rank += sh.topKeys[j] > key;
      const int id = (int)(0xFFFFFFFFu - (uint32_t)(key & 0xFFFFFFFFull));
      topIds[(int64_t)s * topN + rank] = id;
      topLogprobs[(int64_t)s * topN + rank] = (float)((double)z[id] - lse);
    }
  }
  for (int i = max(n, 0) + threadIdx.x; i < topN; i += blockDim.x) {
    topIds[(int64_t)s * topN + i] = -1;
    topLogprobs[(int64_t)s * topN + i] = __int_as_float(0x7fc00000);
  }
}

// One thread per (row, slot) of the banned table: a handful of scattered stores.
__global__ void maskBannedKernel(float* __restrict__ logits, int rows, int vocab, const int32_t* __restrict__ banned, int cap) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * cap) return;
  const int id = banned[i];
  if (id >= 0 && id < vocab) logits[(int64_t)(i / cap) * vocab + id] = -INFINITY;
}

// Grammar bitmasks: one thread per (row, mask word); a row whose maskRows entry is -1 returns at once, so a step with
// no masked sequence costs one near-empty launch (the kernel stays in the captured graph at fixed addresses).
__global__ void maskBitmaskKernel(float* __restrict__ logits, int rows, int vocab, const int32_t* __restrict__ maskRows,
                                  const int32_t* __restrict__ masks, int maskWords) {
  const int r = blockIdx.y;
  const int w = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows || w >= maskWords) return;
  const int row = maskRows[r];
  if (row < 0) return;
  const uint32_t bits = (uint32_t)masks[(int64_t)row * maskWords + w];
  if (bits == 0xffffffffu) return;
  float* z = logits + (int64_t)r * vocab;
  const int end = min(vocab, w * 32 + 32);
  for (int id = w * 32; id < end; ++id)
    if (!((bits >> (id - w * 32)) & 1u)) z[id] = -INFINITY;
}

}  // namespace

void launchMaskBitmask(float* logits, int rows, int vocab, const int32_t* maskRows, const int32_t* masks, int maskWords,
                       cudaStream_t stream) {
  if (rows <= 0 || maskWords <= 0) return;
  const int threads = 256;
  const dim3 grid((maskWords + threads - 1) / threads, rows);
  maskBitmaskKernel<<<grid, threads, 0, stream>>>(logits, rows, vocab, maskRows, masks, maskWords);
  DSG_LAUNCHED("maskBitmaskKernel");
}

void launchMaskBanned(float* logits, int rows, int vocab, const int32_t* banned, int cap, cudaStream_t stream) {
  if (rows <= 0 || cap <= 0) return;
  const int threads = 128, blocks = (rows * cap + threads - 1) / threads;
  maskBannedKernel<<<blocks, threads, 0, stream>>>(logits, rows, vocab, banned, cap);
  DSG_LAUNCHED("maskBannedKernel");
}

size_t sampleScratchBytes(int numSeqs) { return (size_t)numSeqs * kMaxArgmaxBlocks * 2 * sizeof(int32_t); }

void launchSample(const float* logits, int numSeqs, int vocab, const SampleParams* params, int topN, int32_t* tokens,
                  float* logprobs, int32_t* topIds, float* topLogprobs, cudaStream_t stream, int32_t* scratch) {
  if (numSeqs <= 0) return;
  int argmaxBlocks = 0;
  if (scratch) {
    argmaxBlocks = std::min(kMaxArgmaxBlocks, (vocab + kArgmaxChunk - 1) / kArgmaxChunk);
    argmaxPartialKernel<<<dim3(argmaxBlocks, numSeqs), kArgmaxThreads, 0, stream>>>(logits, vocab, params, scratch);
    DSG_LAUNCHED("argmaxPartialKernel");
  }
  sampleKernel<<<numSeqs, kThreads, 0, stream>>>(logits, vocab, params, topN, tokens, logprobs, topIds, topLogprobs,
                                                 scratch, argmaxBlocks);
  DSG_LAUNCHED("sampleKernel");
}

}  // namespace dsg::cuda
