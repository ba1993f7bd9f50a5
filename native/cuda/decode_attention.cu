// Decode attention (every sequence of the step has at most one query token) over the paged KV pool, written to run
// near memory bandwidth. Floor: each KV head's keys and values are read once for its whole GQA group,
// kvLen * kvHeads * headDim * 4 B per sequence per layer.
// Layout: a block = 4 warps = (sequence, KV head, split). A "row" of D/8 lanes reads one key with 16-byte loads
// (8 dims per lane) and holds the query of every head of the GQA group in registers, so K/V are read once per group.
// Each row takes U consecutive keys per iteration and issues all 2U loads before the first use; the page-table
// entries of the next iteration are fetched one iteration ahead. Scores are reduced across the row with shuffles,
// online softmax in f32 (base 2) per row; rows merge through registers (same warp) and shared memory (same block).
// Splits: the caller's numSplits > 1 writes partials for launchAttentionMerge (the old contract). With numSplits 1,
// smaller batches split each (sequence, KV head) across a thread-block cluster chosen from the batch size alone
// (graph replays stay valid for any kvLen): the blocks merge through distributed shared memory, no second kernel.
// Blocks are dispatched in the order of the sequence records: callers that pass them longest first (the CUDA
// backend does for decode steps) keep the long sequences from forming the tail of a variable-length batch.
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <cfloat>

#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kDecodeWarps = 4;
constexpr int kDefaultKeysPerRow = 4;
constexpr int kDeepKeysPerRow = 8;
constexpr int kDefaultStages = 0;  // 0: registers only; >= 2: cp.async ring depth
constexpr int kMaxClusterSplits = 8;  // portable cluster size
constexpr int kTargetBlocks = 512;    // ~4 resident 4-warp blocks per SM on 132 SMs

enum class OutMode : int { Direct = 0, Partials = 1, Cluster = 2 };

struct DecodeParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int4* seqs;  // qStart, qLen, kvLen, pageStart
  const int32_t* pageTable;
  int pageSize, pageShift;  // pageShift >= 0 when pageSize is a power of two
  int numTokens, heads, kvHeads;
  float scaleLog2;
  bf16* out;
  float* partO;
  float* partLse;
  OutMode mode;
};

// K/V rows are read once: bypass L1.
__device__ __forceinline__ uint4 ldStream(const bf16* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// 16-byte global -> shared copy; when !valid the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cpAsync16(uint4* dst, const bf16* src, bool valid) {
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ int slotOf(const DecodeParams& p, const int32_t* pages, int key) {
  if (p.pageShift >= 0) return pages[key >> p.pageShift] * p.pageSize + (key & (p.pageSize - 1));
  return pages[key / p.pageSize] * p.pageSize + key % p.pageSize;
}

// Scores of U keys for the G heads (dot products reduced across the row's kLanes lanes), then the online-softmax
// update of m, l and the row's 8 output dims per head. Keys at or past kStop count as masked.
template <int kLanes, int G, int U>
__device__ __forceinline__ void consumeKeys(const float (&qf)[G][8], const uint4 (&kr)[U], const uint4 (&vr)[U],
                                            int key0, int kStop, float (&m)[G], float (&l)[G], float (&acc)[G][8]) {
  float sc[U][G];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    float kf[8];
    unpack8(kr[u], kf);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) dot = fmaf(qf[g][i], kf[i], dot);
      sc[u][g] = dot;
    }
  }
#pragma unroll
  for (int off = kLanes / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int g = 0; g < G; ++g) sc[u][g] += __shfl_xor_sync(0xffffffffu, sc[u][g], off);
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (key0 + u >= kStop) {
#pragma unroll
      for (int g = 0; g < G; ++g) sc[u][g] = -INFINITY;
    }
  }
  float vf[U][8];
#pragma unroll
  for (int u = 0; u < U; ++u) unpack8(vr[u], vf[u]);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float mx = m[g];
#pragma unroll
    for (int u = 0; u < U; ++u) mx = fmaxf(mx, sc[u][g]);
    const float b = mx == -INFINITY ? 0.f : mx;  // nothing seen yet: keep everything finite
    const float alpha = exp2f(m[g] - b);
    l[g] *= alpha;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const float pu = exp2f(sc[u][g] - b);
      l[g] += pu;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(pu, vf[u][i], acc[g][i]);
    }
    m[g] = mx;
  }
}

// S == 0: K/V loaded straight into registers; S >= 2: through a per-warp cp.async ring of S stages.
template <int D, int G, int U, int S>
__global__ void __launch_bounds__(kDecodeWarps * 32) decodeAttentionKernel(const DecodeParams p) {
  constexpr int kLanes = D / 8;               // lanes per key row
  constexpr int kRowsPerWarp = 32 / kLanes;
  constexpr int kRows = kDecodeWarps * kRowsPerWarp;
  constexpr int kStep = kRows * U;            // keys per block iteration
  __shared__ __align__(16) float sAcc[kDecodeWarps][G][D];
  __shared__ float sM[kDecodeWarps][G], sL[kDecodeWarps][G];
  __shared__ float sResM[G], sResL[G];

  const int split = blockIdx.x, kvh = blockIdx.y, numSplits = gridDim.x;
  const int4 seq = p.seqs[blockIdx.z];
  if (seq.y <= 0) return;  // no query token (uniform over a cluster: same sequence)
  const int kvLen = seq.z;
  int chunk = (kvLen + numSplits - 1) / numSplits;
  chunk = (chunk + 15) & ~15;
  const int kBegin = min(kvLen, split * chunk), kStop = min(kvLen, kBegin + chunk);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = warp * kRowsPerWarp + lane / kLanes;
  const int dim0 = (lane % kLanes) * 8;
  const int64_t token = seq.x;
  // Programmatic dependent launch: the lines above read only the step's inputs (copied before the graph runs); q and
  // the newest key/value are the previous kernel's output (q/k-norm + RoPE + KV write), so wait for it here, then let
  // the next kernel (the o projection) start streaming its weights while this one runs.
  waitPreviousGrid();
  allowNextGrid();

  float qf[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    unpack8(*reinterpret_cast<const uint4*>(p.q + (token * p.heads + kvh * G + g) * D + dim0), qf[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qf[g][i] *= p.scaleLog2;
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  }

  const int32_t* pages = p.pageTable + seq.w;
  const int64_t slotStride = (int64_t)p.kvHeads * D;
  const bf16* kBase = p.k + (int64_t)kvh * D + dim0;
  const bf16* vBase = p.v + (int64_t)kvh * D + dim0;

  if constexpr (S == 0) {
    // Registers: this iteration's 2U loads issued together, the next iteration's page entries fetched meanwhile.
    int slot[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = kBegin + row * U + u;
      slot[u] = key < kStop ? slotOf(p, pages, key) : -1;
    }
    for (int base = kBegin; base < kStop; base += kStep) {
      if (base + warp * kRowsPerWarp * U >= kStop) break;  // this warp's keys are all past the end (warp-uniform)
      uint4 kr[U], vr[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
        if (slot[u] >= 0) {
          kr[u] = ldStream(kBase + slot[u] * slotStride);
          vr[u] = ldStream(vBase + slot[u] * slotStride);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int key = base + kStep + row * U + u;
        slot[u] = key < kStop ? slotOf(p, pages, key) : -1;
      }
      consumeKeys<kLanes, G, U>(qf, kr, vr, base + row * U, kStop, m, l, acc);
    }
  } else {
    // Shared-memory ring of S iterations per warp (cp.async, zero-filled past the end): S - 1 iterations' loads stay
    // in flight while one is consumed. Each lane reads back only what it copied itself, so no barrier is needed.
    extern __shared__ __align__(16) uint4 sRing[];  // [warp][S][U][K, V][32 lanes]
    uint4* ring = sRing + warp * (S * U * 2 * 32) + lane;
    int slots[S][U];  // page slots of the iteration that will next be copied into each stage
#pragma unroll
    for (int st = 0; st < S; ++st) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int key = kBegin + st * kStep + row * U + u;
        slots[st][u] = key < kStop ? slotOf(p, pages, key) : -1;
      }
    }
    auto issue = [&](int st, int it) {  // st: compile-time after unrolling
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int sl = slots[st][u];
        const int64_t off = sl >= 0 ? sl * slotStride : 0;
        cpAsync16(ring + ((st * U + u) * 2 + 0) * 32, kBase + off, sl >= 0);
        cpAsync16(ring + ((st * U + u) * 2 + 1) * 32, vBase + off, sl >= 0);
        const int key = kBegin + (it + S) * kStep + row * U + u;
        slots[st][u] = key < kStop ? slotOf(p, pages, key) : -1;
      }
      cpAsyncCommit();
    };
#pragma unroll
    for (int st = 0; st < S - 1; ++st) issue(st, st);
    bool done = false;
    for (int it0 = 0; !done; it0 += S) {
#pragma unroll
      for (int st = 0; st < S; ++st) {
        const int it = it0 + st;
        const int base = kBegin + it * kStep;
        if (base + warp * kRowsPerWarp * U >= kStop) {
          done = true;
          break;
        }
        issue((st + S - 1) % S, it + S - 1);
        cpAsyncWait<S - 1>();
        uint4 kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          kr[u] = ring[((st * U + u) * 2 + 0) * 32];
          vr[u] = ring[((st * U + u) * 2 + 1) * 32];
        }
        consumeKeys<kLanes, G, U>(qf, kr, vr, base + row * U, kStop, m, l, acc);
      }
    }
    cpAsyncWait<0>();  // no copy may land after the block's shared memory is reused
  }

  // Rows of one warp hold the same dims: merge them with shuffles.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float mm = m[g];
#pragma unroll
    for (int off = kLanes; off < 32; off <<= 1) mm = fmaxf(mm, __shfl_xor_sync(0xffffffffu, mm, off));
    const float a = exp2f(m[g] - (mm == -INFINITY ? 0.f : mm));
    l[g] *= a;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] *= a;
#pragma unroll
    for (int off = kLanes; off < 32; off <<= 1) {
      l[g] += __shfl_xor_sync(0xffffffffu, l[g], off);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], off);
    }
    m[g] = mm;
  }
  if (lane < kLanes) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float4* dst = reinterpret_cast<float4*>(&sAcc[warp][g][dim0]);
      dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
      dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
      if (lane == 0) {
        sM[warp][g] = m[g];
        sL[warp][g] = l[g];
      }
    }
  }
  __syncthreads();

  // Block merge: one thread per output element of the group (each element is read and rewritten by its owner only).
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, sM[w][g]);
    const float b = M == -INFINITY ? 0.f : M;
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float e = exp2f(sM[w][g] - b);
      L = fmaf(sL[w][g], e, L);
      A = fmaf(sAcc[w][g][d], e, A);
    }
    const int head = kvh * G + g;
    if (p.mode == OutMode::Direct) {
      p.out[(token * p.heads + head) * D + d] = __float2bfloat16(L > 0.f ? A / L : 0.f);
    } else if (p.mode == OutMode::Partials) {
      const int64_t prow = ((int64_t)split * p.numTokens + token) * p.heads + head;
      p.partO[prow * D + d] = L > 0.f ? A / L : 0.f;
      if (d == 0) p.partLse[prow] = L > 0.f ? M + log2f(L) : -INFINITY;
    } else {
      sAcc[0][g][d] = A;
      if (d == 0) {
        sResM[g] = M;
        sResL[g] = L;
      }
    }
  }
  if (p.mode != OutMode::Cluster) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // clusters are Hopper's; the host never asks for them before

  // Cluster merge: the blocks of one (sequence, KV head) read each other's results from distributed shared memory;
  // each block writes a share of the output elements.
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const int rank = (int)cluster.block_rank(), ranks = (int)cluster.num_blocks();
  for (int idx = rank * blockDim.x + threadIdx.x; idx < G * D; idx += ranks * blockDim.x) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
    for (int r = 0; r < ranks; ++r) M = fmaxf(M, *cluster.map_shared_rank(&sResM[g], r));
    const float b = M == -INFINITY ? 0.f : M;
    float L = 0.f, A = 0.f;
    for (int r = 0; r < ranks; ++r) {
      const float e = exp2f(*cluster.map_shared_rank(&sResM[g], r) - b);
      L = fmaf(*cluster.map_shared_rank(&sResL[g], r), e, L);
      A = fmaf(*cluster.map_shared_rank(&sAcc[0][g][d], r), e, A);
    }
    p.out[(token * p.heads + kvh * G + g) * D + d] = __float2bfloat16(L > 0.f ? A / L : 0.f);
  }
  cluster.sync();  // no block leaves (freeing its shared memory) while another still reads it
#endif
}

template <int D, int G, int U, int S>
void launchDecodeKernel(const DecodeParams& p, int numSeqs, int splits, cudaStream_t stream) {
  constexpr int kRingBytes = S * U * 2 * 32 * 16 * kDecodeWarps;
  if constexpr (kRingBytes > 0) {
    // Ring + static shared memory may pass the default 48 KB; the opt-in is per device (engines of one process may
    // drive several devices).
    static std::atomic<uint64_t> ready{0};
    int dev = 0;
    DSG_CUDA(cudaGetDevice(&dev));
    if (!(ready.load() >> dev & 1)) {
      DSG_CUDA(cudaFuncSetAttribute(decodeAttentionKernel<D, G, U, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    kRingBytes));
      ready.fetch_or(uint64_t{1} << dev);
    }
  }
  // Programmatic dependent launch: see waitPreviousGrid in the kernel; Cluster mode merges the splits over DSMEM.
  launchKernel(decodeAttentionKernel<D, G, U, S>, dim3(splits, p.kvHeads, numSeqs), dim3(kDecodeWarps * 32), kRingBytes,
               stream, true, p.mode == OutMode::Cluster ? splits : 0, p);
  DSG_LAUNCHED("decodeAttentionKernel");
}

template <int D, int G>
bool launchForGroup(const DecodeParams& p, int numSeqs, int splits, int keysPerRow, int stages, cudaStream_t stream) {
  if (keysPerRow == kDefaultKeysPerRow && stages == kDefaultStages) {
    launchDecodeKernel<D, G, kDefaultKeysPerRow, kDefaultStages>(p, numSeqs, splits, stream);
    return true;
  }
  if constexpr (D <= 128 && G <= 2) {  // the deeper register path the automatic choice takes at mid batch sizes
    if (keysPerRow == kDeepKeysPerRow && stages == 0) {
      launchDecodeKernel<D, G, kDeepKeysPerRow, 0>(p, numSeqs, splits, stream);
      return true;
    }
  }
  if constexpr (D == 128 && G == 2) {  // the Qwen3 shape: other load depths for tuning runs
    switch (keysPerRow * 16 + stages) {
      case 2 * 16 + 0: return launchDecodeKernel<D, G, 2, 0>(p, numSeqs, splits, stream), true;
      case 4 * 16 + 0: return launchDecodeKernel<D, G, 4, 0>(p, numSeqs, splits, stream), true;
      case 8 * 16 + 0: return launchDecodeKernel<D, G, 8, 0>(p, numSeqs, splits, stream), true;
      case 4 * 16 + 2: return launchDecodeKernel<D, G, 4, 2>(p, numSeqs, splits, stream), true;
      case 4 * 16 + 3: return launchDecodeKernel<D, G, 4, 3>(p, numSeqs, splits, stream), true;
      case 4 * 16 + 4: return launchDecodeKernel<D, G, 4, 4>(p, numSeqs, splits, stream), true;
      case 2 * 16 + 4: return launchDecodeKernel<D, G, 2, 4>(p, numSeqs, splits, stream), true;
      case 2 * 16 + 6: return launchDecodeKernel<D, G, 2, 6>(p, numSeqs, splits, stream), true;
      default: return false;
    }
  }
  return false;
}

template <int D>
bool launchForDim(const DecodeParams& p, int group, int numSeqs, int splits, int keysPerRow, int stages,
                  cudaStream_t stream) {
  switch (group) {
    case 1: return launchForGroup<D, 1>(p, numSeqs, splits, keysPerRow, stages, stream);
    case 2: return launchForGroup<D, 2>(p, numSeqs, splits, keysPerRow, stages, stream);
    case 4: return launchForGroup<D, 4>(p, numSeqs, splits, keysPerRow, stages, stream);
    case 8:
      if constexpr (D <= 128) return launchForGroup<D, 8>(p, numSeqs, splits, keysPerRow, stages, stream);
      return false;
    default: return false;
  }
}

// Whether the current device launches thread-block clusters (sm_90+), asked once per device.
bool clusterLaunchSupported() {
  static std::atomic<uint64_t> known{0}, supported{0};
  int dev = 0;
  DSG_CUDA(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t{1} << dev;
  if (!(known.load() & bit)) {
    int value = 0;
    DSG_CUDA(cudaDeviceGetAttribute(&value, cudaDevAttrClusterLaunch, dev));
    if (value) supported.fetch_or(bit);
    known.fetch_or(bit);
  }
  return (supported.load() & bit) != 0;
}

/** Cluster size and keys per row for a batch of numSeqs sequences (from the batch size alone, so graph replays stay
 *  valid). Measured on an H200 (NOTES-decode-attention.md, "Variable-length batches") with contexts uniform in
 *  [100, 2000] and records longest first: from 128 sequences one block per (sequence, KV head) at 4 keys per row
 *  runs at the copy bandwidth; below, the chip fills only with splits, and more keys in flight per row shorten the
 *  serial chain of the long sequences that finish last. Tiny batches keep the 512-block rule. */
struct DecodeLaunchChoice {
  int splits, keysPerRow;
};
DecodeLaunchChoice decodeLaunchChoice(int numSeqs, int kvHeads, bool deepAvailable) {
  const int deep = deepAvailable ? kDeepKeysPerRow : kDefaultKeysPerRow;
  if (numSeqs >= 128) return {1, kDefaultKeysPerRow};
  if (numSeqs >= 80) return {1, deep};
  if (numSeqs >= 48) return {2, kDefaultKeysPerRow};
  if (numSeqs >= 24) return {2, deep};
  if (numSeqs >= 12) return {4, deep};
  int splits = 1;
  while (splits < kMaxClusterSplits && (int64_t)numSeqs * kvHeads * splits < kTargetBlocks) splits *= 2;
  return {splits, kDefaultKeysPerRow};
}

}  // namespace

bool decodeAttentionFastPath(int heads, int kvHeads, int headDim) {
  if (kvHeads <= 0 || heads % kvHeads != 0) return false;
  const int group = heads / kvHeads;
  const bool groupOk = group == 1 || group == 2 || group == 4 || (group == 8 && headDim <= 128);
  return groupOk && (headDim == 64 || headDim == 128 || headDim == 256);
}

bool launchDecodeAttention(const bf16* q, const bf16* kCache, const bf16* vCache, const AttnBatch& batch,
                           int numTokens, int heads, int kvHeads, int headDim, float scale, int numSplits, bf16* out,
                           float* partO, float* partLse, cudaStream_t stream, const DecodeTuning* tuning) {
  if (batch.maxQLen != 1 || batch.numSeqs <= 0 || !decodeAttentionFastPath(heads, kvHeads, headDim)) return false;
  DecodeParams p;
  p.q = q;
  p.k = kCache;
  p.v = vCache;
  p.seqs = batch.seqs;
  p.pageTable = batch.pageTable;
  p.pageSize = batch.pageSize;
  p.pageShift = (batch.pageSize & (batch.pageSize - 1)) == 0 ? __builtin_ctz((unsigned)batch.pageSize) : -1;
  p.numTokens = numTokens;
  p.heads = heads;
  p.kvHeads = kvHeads;
  p.scaleLog2 = scale * 1.4426950408889634f;
  p.out = out;
  p.partO = partO;
  p.partLse = partLse;
  const int group = heads / kvHeads;
  const DecodeLaunchChoice choice = decodeLaunchChoice(batch.numSeqs, kvHeads, headDim <= 128 && group <= 2);
  int splits = numSplits;
  if (numSplits > 1) {
    p.mode = OutMode::Partials;
  } else {
    splits = tuning && tuning->clusterSplits > 0 ? std::min(tuning->clusterSplits, kMaxClusterSplits) : choice.splits;
    if (!clusterLaunchSupported()) splits = 1;  // pre-Hopper: one block per (sequence, KV head)
    p.mode = splits > 1 ? OutMode::Cluster : OutMode::Direct;
  }
  const int keysPerRow = tuning && tuning->keysPerRow > 0 ? tuning->keysPerRow
                         : numSplits > 1                  ? kDefaultKeysPerRow
                                                          : choice.keysPerRow;
  const int stages = !tuning || tuning->stages == 0 ? kDefaultStages : tuning->stages == 1 ? 0 : tuning->stages;
  switch (headDim) {
    case 64: return launchForDim<64>(p, group, batch.numSeqs, splits, keysPerRow, stages, stream);
    case 128: return launchForDim<128>(p, group, batch.numSeqs, splits, keysPerRow, stages, stream);
    case 256: return launchForDim<256>(p, group, batch.numSeqs, splits, keysPerRow, stages, stream);
    default: return false;
  }
}

}  // namespace dsg::cuda
