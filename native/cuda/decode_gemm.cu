// Mid-batch linear layers of the decode step (9..256 tokens; the backend uses them up to 64): y[m, n] = x[m, k]
// W[n, k]^T, bf16 operands, f32 accumulation on the tensor cores (wgmma, sm_90a: 64 weight rows against all of a
// tile's tokens per instruction), with the step's small neighbour kernels folded in (native/cuda/NOTES-decode-gemm.md).
// Builds without sm_90a compile the kernels empty and decodeGemmAvailable() says so: the backend then keeps cuBLAS.
// Shapes (Qwen3-0.6B): qkv 4096 x 1024, o 1024 x 2048, gate|up 6144 x 1024, down 1024 x 3072. Floor: the weight
// bytes over the card's bandwidth (1-3 us each at 4.2 TB/s) up to ~64 tokens; above that the operands' trips from
// L2 to the SMs ((m/mTile) x n x k x 2 + (n/nTile) x m x k x 2 bytes, ~5 TB/s) and, at 256 tokens, the FLOPs
// (2 m n k: 2.1 GFLOP for qkv, ~3 us at 700 TFLOP/s).
// A block owns an nTile x mTile output tile and k / C of k; a cluster of C blocks splits k and reduces its partial
// tiles through distributed shared memory in a fixed order (deterministic). Weights and x arrive by TMA (one thread
// issues a stage's boxes, completing on the slot's mbarrier) in a ring of up to 8 slots of 64-k slices, 128-byte
// swizzled as wgmma's descriptors read them. Every slot's weights are requested before griddepcontrol.wait: with
// programmatic dependent launch they stream while the previous kernel finishes. Fusions (what cuBLAS cannot do, and
// what cost a launch each):
// - RMSNorm on the input: x = bf16(residual * normWeight) is written by the kernel that updated the residual, with
//   the residual's sum of squares per 32 columns (ssq); this kernel scales its output rows by rsqrt(sum / k + eps).
// - SiLU(gate) * up on the output: a tile's first half of rows are gate rows, its second half the matching up rows.
// - residual add on the output (f32 +=), then the next RMSNorm's input and ssq as above.
#include <cooperative_groups.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled: the driver entry point, fetched through the runtime

#include <algorithm>
#include <string>

#include "common.cuh"
#include "gemm.h"
#include "wgmma.cuh"

namespace dsg::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kKT = 64;       // k per stage: one 128-byte row of bf16 per weight row / token (the swizzle width)
constexpr int kMaxSlots = 8;  // ring depth limit: stages in flight per block
constexpr int kRedPad = 4;    // f32 tile row padding: the accumulator stores hit distinct banks
constexpr int kGroup = 32;    // columns per ssq partial (the residual's sum of squares)

struct Params {
  int m, n, k;
  int slots;  // ring slots (stages in flight), <= min(k slice / kKT, kMaxSlots): see ringSlotsFor
  DecodeGemmArgs a;
};

#if defined(DSG_HAS_WGMMA)  // device helpers of the kernel body, which only sm_90a builds compile
__device__ __forceinline__ uint32_t smemAddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbarInit(uint32_t bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
}
/** Arrives on the barrier and adds `bytes` to the bytes its phase waits for (the TMA loads complete them). */
__device__ __forceinline__ void mbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
/** One box of a 2-D tensor map (coordinates: column, row) into shared memory, completing on `bar`. */
__device__ __forceinline__ void tmaLoad2d(uint32_t dst, const CUtensorMap* map, int col, int row, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(bar)
      : "memory");
}
/** 8 consecutive floats of shared memory (16-byte aligned) in two vector loads. */
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
#endif

__host__ __device__ constexpr int threadsFor(int nt) { return nt / 64 * 128; }  // one warpgroup per 64 weight rows
/** Bytes of the stage ring, which the f32 tile reuses after the k loop. */
__host__ __device__ constexpr size_t ringBytes(int nt, int mt, int slots) {
  const size_t ring = (size_t)slots * (nt + mt) * kKT * sizeof(bf16);
  const size_t tile = (size_t)mt * (nt + kRedPad) * sizeof(float);
  return ring > tile ? ring : tile;
}
/** The ring (1024-byte aligned: up to 1024 bytes of slack), the row scales [mt] and one mbarrier per slot. */
constexpr size_t smemFor(int nt, int mt, int slots) {
  return 1024 + ringBytes(nt, mt, slots) + mt * sizeof(float) + kMaxSlots * sizeof(uint64_t);
}

/** Writes 1 where this build's device code has the wgmma main loop (sm_90a), 0 elsewhere. */
__global__ void wgmmaBuiltKernel(int* out) {
#if defined(DSG_HAS_WGMMA)
  *out = 1;
#else
  *out = 0;
#endif
}

/**
 * Block = NT / 64 warpgroups; warpgroup g owns weight rows 64 g .. 64 g + 63 of the tile against all MT tokens (one
 * wgmma m64 x MT x k16 per k16 step, accumulators in registers). blockIdx.x = (tileN * mTiles + tileM) * C + rank.
 * wMap: W [n][k] in boxes of 64 k x NT rows (NT / 2 for gate|up, whose tiles take half their rows from each half of
 * W); xMap: x [m][k] in boxes of 64 k x MT tokens (rows past m read as zeros). Both 128-byte swizzled.
 */
template <int NT, int MT, int C>
__global__ void __launch_bounds__(threadsFor(NT))
    decodeGemmKernel(const __grid_constant__ CUtensorMap wMap, const __grid_constant__ CUtensorMap xMap, Params p) {
#if defined(DSG_HAS_WGMMA)
  constexpr int THREADS = threadsFor(NT);
  constexpr uint32_t W_BYTES = NT * kKT * sizeof(bf16), STAGE_BYTES = (NT + MT) * kKT * sizeof(bf16);
  extern __shared__ __align__(128) unsigned char smemRaw[];
  // The 128-byte swizzle (TMA's writes, wgmma's reads) is a function of address bits 4-9: stages start 1024-aligned.
  unsigned char* smem = smemRaw + ((1024 - (smemAddr(smemRaw) & 1023)) & 1023);

  const int mTiles = (p.m + MT - 1) / MT;
  const int rank = C > 1 ? (int)(blockIdx.x % C) : 0;
  const int tile = blockIdx.x / C, tileN = tile / mTiles, tileM = tile % mTiles;
  const int mBase = tileM * MT, kSlice = p.k / C, kBase = rank * kSlice, nK = kSlice / kKT;
  const bool siluOut = p.a.out == DecodeGemmOut::SiluGateUp;
  const int slots = p.slots;
  const uint32_t ringAddr = smemAddr(smem);
  float* rowScale = reinterpret_cast<float*>(smem + ringBytes(NT, MT, slots));
  const uint32_t barAddr = smemAddr(rowScale + MT);  // slots mbarriers, 8 bytes each
  auto slotAddr = [&](int slot) { return ringAddr + (uint32_t)slot * STAGE_BYTES; };
  // Thread 0 issues every load: a stage is one or two weight boxes and one x box, all completing on the slot's barrier.
  auto loadW = [&](int slot, int kb) {
    const int k0 = kBase + kb * kKT;
    const uint32_t bar = barAddr + 8u * slot;
    mbarArriveExpectTx(bar, STAGE_BYTES);
    if (!siluOut) {
      tmaLoad2d(slotAddr(slot), &wMap, k0, tileN * NT, bar);
    } else {
      tmaLoad2d(slotAddr(slot), &wMap, k0, tileN * (NT / 2), bar);
      tmaLoad2d(slotAddr(slot) + W_BYTES / 2, &wMap, k0, p.n / 2 + tileN * (NT / 2), bar);
    }
  };
  auto loadX = [&](int slot, int kb) {
    tmaLoad2d(slotAddr(slot) + W_BYTES, &xMap, kBase + kb * kKT, mBase, barAddr + 8u * slot);
  };

  if (threadIdx.x == 0) {
    for (int s = 0; s < slots; ++s) mbarInit(barAddr + 8u * s, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    // Every slot's weights before the wait: they do not depend on earlier kernels, and with a k slice of at most
    // p.slots stages all of them stream while the previous kernel finishes.
    for (int s = 0; s < slots; ++s) loadW(s, s);
  }
  waitPreviousGrid();
  allowNextGrid();
  if (threadIdx.x == 0)
    for (int s = 0; s < slots; ++s) loadX(s, s);
  __syncthreads();  // the barriers are initialised before anyone waits on them

  // Row scales (input RMSNorm) of the tokens this rank finishes, while the stages stream: all of a token's partial
  // sums are loaded at once (they sit p.m floats apart), not in dependent rounds after the k loop.
  const int live = min(MT, p.m - mBase);  // tokens of this tile that exist; rank r finishes tokens t % C == r
  for (int t = rank + (int)threadIdx.x * C; t < live; t += THREADS * C) {
    float sc = 1.f;
    if (p.a.ssqIn != nullptr) {
      float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      const int parts = p.k / kGroup;
      const float* src = p.a.ssqIn + mBase + t;
      int j = 0;
#pragma unroll 4
      for (; j + 8 <= parts; j += 8)
#pragma unroll
        for (int e = 0; e < 8; ++e) part[e] += src[(int64_t)(j + e) * p.m];
      for (; j < parts; ++j) part[0] += src[(int64_t)j * p.m];
      const float ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      sc = rsqrtf(ss / p.k + p.a.eps);
    }
    rowScale[t] = sc;
  }

  // The residual add's global reads of this thread's first epilogue item (see the output loop), issued now so their
  // latency hides behind the k loop: nothing else writes these elements while this kernel runs.
  constexpr int kChunk = 8;
  const int mine = (live - rank + C - 1) / C;  // tokens this rank finishes
  const int chunks = (siluOut ? NT / 2 : NT) / kChunk;
  const bool addOut = p.a.out == DecodeGemmOut::AddResidual;
  float4 firstRes0 = make_float4(0.f, 0.f, 0.f, 0.f), firstRes1 = firstRes0;
  uint4 firstNorm = make_uint4(0, 0, 0, 0);
  if (addOut && (int)threadIdx.x < mine * chunks) {
    const int t = rank + ((int)threadIdx.x / chunks) * C, col0 = tileN * NT + ((int)threadIdx.x % chunks) * kChunk;
    const float* res = p.a.residual + (int64_t)(mBase + t) * p.n + col0;
    firstRes0 = *reinterpret_cast<const float4*>(res);
    firstRes1 = *reinterpret_cast<const float4*>(res + 4);
    if (p.a.nextNorm != nullptr) firstNorm = *reinterpret_cast<const uint4*>(p.a.nextNorm + col0);
  }

  float acc[MT / 2];
#pragma unroll
  for (int i = 0; i < MT / 2; ++i) acc[i] = 0.f;
  const int group = threadIdx.x / 128;
  for (int kb = 0; kb < nK; ++kb) {
    const int slot = kb % slots;
    mbarWait(barAddr + 8u * slot, (uint32_t)(kb / slots) & 1u);
    const uint64_t descW = wgmmaDescSw128(slotAddr(slot) + group * 64 * kKT * sizeof(bf16));
    const uint64_t descX = wgmmaDescSw128(slotAddr(slot) + W_BYTES);
    wgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kKT / 16; ++kk) wgmmaBf16<MT>(acc, descW + 2 * kk, descX + 2 * kk);
    wgmmaCommit();
    // Stage kb's products stay in flight; stage kb - 1's are complete, so once every warpgroup is here its slot
    // takes stage kb - 1 + slots, the slot's next use.
    wgmmaWait<1>();
    const int next = kb - 1 + slots;
    if (kb >= 1 && next < nK) {
      __syncthreads();
      if (threadIdx.x == 0) {
        loadW(next % slots, next);
        loadX(next % slots, next);
      }
    }
  }
  wgmmaWait<0>();
  wgmmaFenceRegisters<MT / 2>(acc);
  __syncthreads();  // the ring is free: it becomes the f32 tile red[MT][NT + kRedPad]

  constexpr int LD = NT + kRedPad;
  float* red = reinterpret_cast<float*>(smem);
  {
    // wgmma's fragment: d[i] is weight row 16 w + lane / 4 + 8 ((i / 2) % 2), token 8 (i / 4) + 2 (lane % 4) + i % 2.
    const int lane = threadIdx.x & 31, w = (threadIdx.x >> 5) & 3, rowBase = group * 64 + w * 16 + (lane >> 2);
#pragma unroll
    for (int i = 0; i < MT / 2; ++i) {
      const int row = rowBase + ((i >> 1) & 1) * 8, t = (i >> 2) * 8 + 2 * (lane & 3) + (i & 1);
      red[t * LD + row] = acc[i];
    }
  }
  if constexpr (C > 1) {
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const float* parts[C];
#pragma unroll
    for (int r = 0; r < C; ++r) parts[r] = cluster.map_shared_rank(red, r);
    constexpr int vecs = NT / 4;
    for (int i = threadIdx.x; i < mine * vecs; i += THREADS) {
      const int t = rank + (i / vecs) * C, at = t * LD + (i % vecs) * 4;
      float4 s = *reinterpret_cast<const float4*>(parts[0] + at);
#pragma unroll
      for (int r = 1; r < C; ++r) {
        const float4 v = *reinterpret_cast<const float4*>(parts[r] + at);
        s.x += v.x;
        s.y += v.y;
        s.z += v.z;
        s.w += v.w;
      }
      // Own rows only: the other ranks read this block's rows of their own tokens, never these.
      *reinterpret_cast<float4*>(red + at) = s;
    }
    // Done reading the other blocks' shared memory; the matching wait is at the very end, so the output below runs
    // while slower ranks finish their reads of this block's.
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
  }
  __syncthreads();

  // One item = 8 output columns of one token (a 16-byte bf16 store); 4 consecutive lanes cover a 32-column ssq group.
  for (int base = 0; base < mine * chunks; base += THREADS) {
    const int i = base + (int)threadIdx.x;
    const bool active = i < mine * chunks;
    const int t = rank + (i / chunks) * C, chunk = i % chunks, token = mBase + t;
    float ss = 0.f;
    if (active) {
      float f[8];
      load8(red + t * LD + chunk * kChunk, f);
      const float s = rowScale[t];
      if (p.a.out == DecodeGemmOut::Bf16) {
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] *= s;
        *reinterpret_cast<uint4*>(p.a.y + (int64_t)token * p.n + tileN * NT + chunk * kChunk) = pack8(f);
      } else if (siluOut) {
        float u[8];
        load8(red + t * LD + NT / 2 + chunk * kChunk, u);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float g = f[e] * s;
          f[e] = g / (1.f + __expf(-g)) * (u[e] * s);
        }
        *reinterpret_cast<uint4*>(p.a.y + (int64_t)token * (p.n / 2) + tileN * (NT / 2) + chunk * kChunk) = pack8(f);
      } else {
        const int col0 = tileN * NT + chunk * kChunk;
        float* res = p.a.residual + (int64_t)token * p.n + col0;
        float4 r0 = firstRes0, r1 = firstRes1;
        if (base > 0) r0 = *reinterpret_cast<const float4*>(res), r1 = *reinterpret_cast<const float4*>(res + 4);
        r0.x += f[0] * s;
        r0.y += f[1] * s;
        r0.z += f[2] * s;
        r0.w += f[3] * s;
        r1.x += f[4] * s;
        r1.y += f[5] * s;
        r1.z += f[6] * s;
        r1.w += f[7] * s;
        *reinterpret_cast<float4*>(res) = r0;
        *reinterpret_cast<float4*>(res + 4) = r1;
        if (p.a.nextNorm != nullptr) {
          const float r[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
          float wn[8], o[8];
          uint4 normBits = firstNorm;
          if (base > 0) normBits = *reinterpret_cast<const uint4*>(p.a.nextNorm + col0);
          unpack8(normBits, wn);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            ss += r[e] * r[e];
            o[e] = r[e] * wn[e];
          }
          *reinterpret_cast<uint4*>(p.a.xNext + (int64_t)token * p.n + col0) = pack8(o);
        }
      }
    }
    if (p.a.out == DecodeGemmOut::AddResidual && p.a.nextNorm != nullptr) {
      // Every lane takes part (inactive ones add 0); lanes 4j .. 4j + 3 hold one token's 32-column group.
      ss += __shfl_xor_sync(0xffffffffu, ss, 1);
      ss += __shfl_xor_sync(0xffffffffu, ss, 2);
      if (active && (i & 3) == 0)
        p.a.ssqOut[(int64_t)((tileN * NT + chunk * kChunk) / kGroup) * p.m + token] = ss;
    }
  }
  // The other ranks have read this block's shared memory (their arrive above) before it goes away.
  if constexpr (C > 1) asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif  // DSG_HAS_WGMMA
}

PFN_cuTensorMapEncodeTiled_v12000 tensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    DSG_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr)
      throw EngineError("LLM_ERR_DEVICE", "the CUDA driver does not provide cuTensorMapEncodeTiled (needs CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

/** A 2-D bf16 tensor [rows][cols] (row-major) read in 128-byte-swizzled boxes of 64 columns x boxRows rows. */
CUtensorMap tensorMap2d(const bf16* base, int rows, int cols, int boxRows, const char* what) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
  const cuuint64_t strides[1] = {(cuuint64_t)cols * sizeof(bf16)};
  const cuuint32_t box[2] = {(cuuint32_t)kKT, (cuuint32_t)boxRows};
  const cuuint32_t elementStrides[2] = {1, 1};
  const CUresult r = tensorMapEncoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(base), dims, strides,
                                        box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw EngineError("LLM_ERR_INTERNAL", std::string("launchDecodeGemm: cuTensorMapEncodeTiled failed for ") + what +
                                              " (error " + std::to_string((int)r) + ", " + std::to_string(rows) + " x " +
                                              std::to_string(cols) + ", box rows " + std::to_string(boxRows) + ")");
  return map;
}

struct DeviceLimits {
  int sms, smemPerSm;
};
const DeviceLimits& deviceLimits() {
  thread_local int cachedDevice = -1;
  thread_local DeviceLimits limits{};
  int device = 0;
  DSG_CUDA(cudaGetDevice(&device));
  if (device != cachedDevice) {
    DSG_CUDA(cudaDeviceGetAttribute(&limits.sms, cudaDevAttrMultiProcessorCount, device));
    DSG_CUDA(cudaDeviceGetAttribute(&limits.smemPerSm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    cachedDevice = device;
  }
  return limits;
}

/**
 * Ring slots for a grid of `blocks` blocks with nK stages each: as deep as the k slice and kMaxSlots allow (every
 * slot's weights load before the wait, and more bytes in flight per SM), but no deeper than lets the grid's blocks
 * share the SMs in one wave with room for as many blocks of the next kernel (measured: a ring that keeps the next
 * linear's blocks off the SM until this one ends loses their early weight loads, up to 1.6x slower in a chain); at
 * least 2 (where nK allows) so loads overlap the tensor work.
 */
int ringSlotsFor(int nt, int mt, int nK, int blocks) {
  const DeviceLimits& d = deviceLimits();
  const int perSm = std::max(1, (blocks + d.sms - 1) / d.sms);
  const size_t budget = (size_t)d.smemPerSm / (2 * perSm) - 1024;  // the runtime reserves 1 KB per block
  int slots = std::min(nK, kMaxSlots);
  while (slots > std::min(nK, 2) && smemFor(nt, mt, slots) > budget) --slots;
  return slots;
}

template <int NT, int MT, int C>
void launchTyped(const bf16* w, const Params& params, int mTiles, cudaStream_t stream) {
  auto kernel = decodeGemmKernel<NT, MT, C>;
  const bool silu = params.a.out == DecodeGemmOut::SiluGateUp;
  const int blocks = params.n / NT * mTiles * C;
  Params p = params;
  p.slots = ringSlotsFor(NT, MT, p.k / C / kKT, blocks);
  const CUtensorMap wMap = tensorMap2d(w, p.n, p.k, silu ? NT / 2 : NT, "the weights");
  const CUtensorMap xMap = tensorMap2d(p.a.x, p.m, p.k, MT, "the input");
  const size_t smem = smemFor(NT, MT, p.slots);
  // Once per process and device is enough, but the calls are cheap and graph capture tolerates them.
  DSG_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  if (C > 8) DSG_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  launchKernel(kernel, dim3((unsigned)blocks), dim3(threadsFor(NT)), smem, stream, true, C > 1 ? C : 0,
               wMap, xMap, p);
  DSG_LAUNCHED("decodeGemmKernel");
}

template <int NT, int MT>
void launchWithCluster(const bf16* w, const Params& p, int mTiles, int c, cudaStream_t stream) {
  switch (c) {
    case 1: launchTyped<NT, MT, 1>(w, p, mTiles, stream); break;
    case 2: launchTyped<NT, MT, 2>(w, p, mTiles, stream); break;
    case 4: launchTyped<NT, MT, 4>(w, p, mTiles, stream); break;
    case 8: launchTyped<NT, MT, 8>(w, p, mTiles, stream); break;
    default: launchTyped<NT, MT, 16>(w, p, mTiles, stream); break;
  }
}

template <int NT>
void launchWithM(const bf16* w, const Params& p, int mt, int c, cudaStream_t stream) {
  const int mTiles = (p.m + mt - 1) / mt;
  switch (mt) {
    case 32: launchWithCluster<NT, 32>(w, p, mTiles, c, stream); break;
    case 64: launchWithCluster<NT, 64>(w, p, mTiles, c, stream); break;
    case 128: launchWithCluster<NT, 128>(w, p, mTiles, c, stream); break;
    default: launchWithCluster<NT, 256>(w, p, mTiles, c, stream); break;
  }
}

bool validTile(const DecodeGemmTile& t, int n, int k) {
  const bool nt = t.nTile == 64 || t.nTile == 128, mt = t.mTile == 32 || t.mTile == 64 || t.mTile == 128 ||
                                                       t.mTile == 256;
  const bool c = t.cluster == 1 || t.cluster == 2 || t.cluster == 4 || t.cluster == 8 || t.cluster == 16;
  return nt && mt && c && n % t.nTile == 0 && k % (kKT * t.cluster) == 0;
}

}  // namespace

bool decodeGemmAvailable() {
  int* flag = nullptr;
  int built = 0;
  DSG_CUDA(cudaMalloc(&flag, sizeof(int)));
  wgmmaBuiltKernel<<<1, 1>>>(flag);
  const cudaError_t launched = cudaGetLastError();
  const cudaError_t copied = cudaMemcpy(&built, flag, sizeof(int), cudaMemcpyDeviceToHost);
  DSG_CUDA(cudaFree(flag));
  DSG_CUDA(launched);
  DSG_CUDA(copied);
  return built == 1;
}

bool decodeGemmSupports(int m, int n, int k) {
  return m >= 1 && m <= kDecodeGemmMaxTokens && n > 0 && n % 64 == 0 && k > 0 && k % kKT == 0;
}

DecodeGemmTile decodeGemmTile(int m, int n, int k, DecodeGemmTile want) {
  DecodeGemmTile t = want;
  // From decode_gemm_check's tile sweep on an H200 (NOTES-decode-gemm.md): token tiles of 32 or 64 (larger ones run
  // long serial k loops on fewer SMs); above 64 tokens 128 weight rows (two warpgroups), which halves the trips of
  // x from L2; k split until the grid holds about one warpgroup per SM.
  if (t.mTile == 0) t.mTile = m <= 32 ? 32 : 64;
  if (t.nTile == 0) t.nTile = m > 64 && n % 128 == 0 ? 128 : 64;
  if (t.cluster == 0) {
    const int tiles = n / t.nTile * ((m + t.mTile - 1) / t.mTile);
    const int want = deviceLimits().sms * 7 / 8 / (t.nTile / 64);
    t.cluster = 1;
    while (t.cluster < 8 && tiles * t.cluster < want && k % (kKT * t.cluster * 2) == 0) t.cluster *= 2;
  }
  return t;
}

void launchDecodeGemm(const DecodeGemmArgs& a, const bf16* w, int m, int n, int k, cudaStream_t stream,
                      DecodeGemmTile want) {
  const std::string shape = " (m " + std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k) + ")";
  if (!decodeGemmSupports(m, n, k)) throw EngineError("LLM_ERR_INTERNAL", "launchDecodeGemm: unsupported shape" + shape);
  const bool add = a.out == DecodeGemmOut::AddResidual;
  if (add ? a.residual == nullptr : a.y == nullptr)
    throw EngineError("LLM_ERR_INTERNAL", "launchDecodeGemm: missing output buffer" + shape);
  if (add && a.nextNorm != nullptr && (a.xNext == nullptr || a.ssqOut == nullptr || n % kGroup != 0))
    throw EngineError("LLM_ERR_INTERNAL", "launchDecodeGemm: nextNorm needs xNext and ssqOut" + shape);
  if (a.ssqIn != nullptr && k % kGroup != 0)
    throw EngineError("LLM_ERR_INTERNAL", "launchDecodeGemm: ssqIn needs k % 32 == 0" + shape);
  const DecodeGemmTile t = decodeGemmTile(m, n, k, want);
  if (!validTile(t, n, k))
    throw EngineError("LLM_ERR_INTERNAL", "launchDecodeGemm: tile " + std::to_string(t.nTile) + "x" +
                                              std::to_string(t.mTile) + " cluster " + std::to_string(t.cluster) +
                                              " does not fit" + shape);
  const Params p{m, n, k, 0, a};
  if (t.nTile == 128) launchWithM<128>(w, p, t.mTile, t.cluster, stream);
  else launchWithM<64>(w, p, t.mTile, t.cluster, stream);
}

}  // namespace dsg::cuda
