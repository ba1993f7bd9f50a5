// Small-batch linear layers (decode at m <= kGemvMaxTokens tokens): y[m, n] = x[m, k] W[n, k]^T, W bf16 row-major,
// f32 accumulation on the tensor cores (mma.sync m16n8k16: 16 weight rows against 8 tokens). Memory-bound: the
// floor is n * k * 2 bytes over the card's bandwidth (Qwen3-0.6B: 4-12.6 MB per matrix, 1-3 us at 4.2 TB/s).
// Layout trick: a lane reads 16 consecutive bytes of a weight row (8 k values) and the same 8 k of its token from
// x; the dot product does not care in which order k is summed, so both operands use one fixed k permutation and
// every weight access is a 16-byte load. A warp owns 16 rows x 256 k (16 loads of 16 B per lane, all in flight
// before the first mma); a block owns 16 rows x k/C; a cluster of C blocks splits k (C > 1 when n / 16 tiles
// alone cannot fill the SMs) and rank 0 sums the partials through distributed shared memory in a fixed order,
// so results are deterministic. The input x is built in shared memory by the block (fusions): a bf16 matrix as is,
// RMSNorm(f32 residual) * weight, or SiLU(gate) * up from the fused gate|up output. Output: bf16, or f32 added
// into the residual stream (y += x W^T, the residual add). With programmatic dependent launch (GemvOverlap) a block
// issues its weight loads, then waits for the previous kernel (griddepcontrol.wait) before it reads x or y.
#include <cooperative_groups.h>

#include <string>

#include "common.cuh"
#include "gemm.h"

namespace dsg::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kWarpK = 256;          // k per warp: 8 steps of 32
constexpr int kSteps = kWarpK / 32;  // 16-byte loads per lane per row half
constexpr int kPadK = 32;            // x row padding (64 B): the 8 lanes of a shared-memory phase hit distinct banks

__device__ __forceinline__ uint4 loadStreaming(const bf16* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ void mma16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

struct GemvParams {
  const bf16* w;
  int m, n, k;
  GemvInput in;
  bf16* yBf16;     // y = x W^T, or
  float* yAddF32;  // y += x W^T
  GemvOverlap overlap;
};

/**
 * Builds x[:, k0 : k0 + kSlice] (rows >= m zero) as bf16 in shared memory, row stride kSlice + kPadK. Thread c owns
 * the 8 columns k0 + 8c .. k0 + 8c + 7 of every token (blockDim.x == kSlice / 8); tokens go in batches whose loads
 * are all issued before the first use, so m <= 4 costs one round trip to L2.
 */
template <GemvInputKind IN, int MT, int C>
__device__ __forceinline__ void buildInput(const GemvParams& p, int rank, int kSlice, bf16* xs) {
  constexpr int TB = IN == GemvInputKind::RmsNorm ? (C >= 4 ? 1 : 4 / C) : 4;  // tokens per batch
  const int stride = kSlice + kPadK, c = threadIdx.x, k0 = rank * kSlice;
  int t0 = 0;
  for (; t0 < p.m; t0 += TB) {  // m is uniform across the block: the barriers inside are reached by every thread
    float f[TB][8];
    if constexpr (IN == GemvInputKind::RmsNorm) {
      // Sum of squares over the whole row (all C slices), then scale this thread's columns.
      __shared__ float ssWarp[16][TB];
      const float* res = static_cast<const float*>(p.in.data);
      float4 v[TB][C][2];
#pragma unroll
      for (int b = 0; b < TB; ++b)
#pragma unroll
        for (int r = 0; r < C; ++r) {
          const bool live = t0 + b < p.m;
          const float4* src = reinterpret_cast<const float4*>(res + (int64_t)(t0 + b) * p.k + r * kSlice + c * 8);
          v[b][r][0] = live ? src[0] : make_float4(0.f, 0.f, 0.f, 0.f);
          v[b][r][1] = live ? src[1] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
      float w[8];
      unpack8(*reinterpret_cast<const uint4*>(p.in.normWeight + k0 + c * 8), w);
      float ss[TB];
#pragma unroll
      for (int b = 0; b < TB; ++b) {
        ss[b] = 0.f;
#pragma unroll
        for (int r = 0; r < C; ++r)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            ss[b] += v[b][r][h].x * v[b][r][h].x + v[b][r][h].y * v[b][r][h].y + v[b][r][h].z * v[b][r][h].z +
                     v[b][r][h].w * v[b][r][h].w;
        ss[b] = warpSum(ss[b]);
      }
      __syncthreads();  // the previous batch has read ssWarp
      if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int b = 0; b < TB; ++b) ssWarp[threadIdx.x >> 5][b] = ss[b];
      __syncthreads();
#pragma unroll
      for (int b = 0; b < TB; ++b) {
        float tot = 0.f;
        for (int wi = 0; wi < (int)(blockDim.x >> 5); ++wi) tot += ssWarp[wi][b];
        const float inv = rsqrtf(tot / p.k + p.in.eps);
        // This thread's own slice: r == rank (compile-time index through the unrolled loop).
#pragma unroll
        for (int r = 0; r < C; ++r)
          if (r == rank) {
            const float4 a = v[b][r][0], d = v[b][r][1];
            f[b][0] = a.x * inv * w[0];
            f[b][1] = a.y * inv * w[1];
            f[b][2] = a.z * inv * w[2];
            f[b][3] = a.w * inv * w[3];
            f[b][4] = d.x * inv * w[4];
            f[b][5] = d.y * inv * w[5];
            f[b][6] = d.z * inv * w[6];
            f[b][7] = d.w * inv * w[7];
          }
      }
    } else if constexpr (IN == GemvInputKind::SiluMul) {
      const bf16* gu = static_cast<const bf16*>(p.in.data);  // [m, 2k]: gate | up
      uint4 g[TB], u[TB];
#pragma unroll
      for (int b = 0; b < TB; ++b) {
        const bf16* row = gu + (int64_t)(t0 + b) * 2 * p.k + k0 + c * 8;
        const bool live = t0 + b < p.m;
        g[b] = live ? *reinterpret_cast<const uint4*>(row) : make_uint4(0, 0, 0, 0);
        u[b] = live ? *reinterpret_cast<const uint4*>(row + p.k) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int b = 0; b < TB; ++b) {
        float a[8], e[8];
        unpack8(g[b], a);
        unpack8(u[b], e);
#pragma unroll
        for (int j = 0; j < 8; ++j) f[b][j] = a[j] / (1.f + __expf(-a[j])) * e[j];
      }
    } else {
      const bf16* x = static_cast<const bf16*>(p.in.data);
      uint4 raw[TB];
#pragma unroll
      for (int b = 0; b < TB; ++b)
        raw[b] = t0 + b < p.m ? *reinterpret_cast<const uint4*>(x + (int64_t)(t0 + b) * p.k + k0 + c * 8)
                              : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int b = 0; b < TB; ++b) unpack8(raw[b], f[b]);
    }
#pragma unroll
    for (int b = 0; b < TB; ++b)
      *reinterpret_cast<uint4*>(xs + (t0 + b) * stride + c * 8) = t0 + b < p.m ? pack8(f[b]) : make_uint4(0, 0, 0, 0);
  }
  for (; t0 < MT; ++t0) *reinterpret_cast<uint4*>(xs + t0 * stride + c * 8) = make_uint4(0, 0, 0, 0);
}

// blockIdx.x = tile * C + rank (a cluster of C consecutive blocks shares one 16-row tile). NT: 8-token tiles.
template <int NT, int C, GemvInputKind IN, bool ADD>
__global__ void __launch_bounds__(512) gemvKernel(GemvParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int MT = NT * 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int tile = blockIdx.x / C, rank = C > 1 ? (int)(blockIdx.x % C) : 0;
  const int kSlice = p.k / C, k0 = rank * kSlice;
  const int g = lane >> 2, q = lane & 3;
  const int kWarp = warp * kWarpK;  // this warp's first k inside the slice

  // Weights do not depend on the previous kernel: start streaming them before waiting for it.
  const bf16* w0 = p.w + (int64_t)(tile * 16 + g) * p.k + k0 + kWarp + q * 8;
  const bf16* w1 = w0 + 8 * (int64_t)p.k;
  uint4 wa[kSteps], wb[kSteps];
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    wa[s] = loadStreaming(w0 + s * 32);
    wb[s] = loadStreaming(w1 + s * 32);
  }
  if (p.overlap == GemvOverlap::AtStart) allowNextGrid();
  waitPreviousGrid();
  if (p.overlap == GemvOverlap::AfterWait) allowNextGrid();

  bf16* xs = reinterpret_cast<bf16*>(smem);
  const int stride = kSlice + kPadK;
  buildInput<IN, MT, C>(p, rank, kSlice, xs);
  __syncthreads();

  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int kx = kWarp + s * 32 + q * 8;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const uint4 b = *reinterpret_cast<const uint4*>(xs + (t * 8 + g) * stride + kx);
      mma16816(acc[t], wa[s].x, wb[s].x, wa[s].y, wb[s].y, b.x, b.y);
      mma16816(acc[t], wa[s].z, wb[s].z, wa[s].w, wb[s].w, b.z, b.w);
    }
  }

  // Sum over warps (fixed order), then over the cluster's ranks (fixed order) on rank 0.
  float* red = reinterpret_cast<float*>(smem + (size_t)MT * stride * sizeof(bf16));  // [warps][NT * 128]
  float* part = red + warps * NT * 128;                                              // [NT * 128]
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) red[warp * NT * 128 + t * 128 + lane * 4 + j] = acc[t][j];
  __syncthreads();
  for (int e = threadIdx.x; e < NT * 128; e += blockDim.x) {
    float v = 0.f;
    for (int wi = 0; wi < warps; ++wi) v += red[wi * NT * 128 + e];
    part[e] = v;
  }
  if constexpr (C > 1) {
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    if (rank == 0) {
      for (int e = threadIdx.x; e < NT * 128; e += blockDim.x) {
        float v = part[e];
#pragma unroll
        for (int r = 1; r < C; ++r) v += cluster.map_shared_rank(part, r)[e];
        part[e] = v;
      }
    }
    cluster.sync();  // the other ranks' shared memory stays valid until rank 0 has read it
    if (rank != 0) return;
  }
  __syncthreads();
  // Element e = (t, lane l, j): row tile*16 + l/4 (+8 for j >= 2), token t*8 + (l%4)*2 + (j&1).
  for (int e = threadIdx.x; e < NT * 128; e += blockDim.x) {
    const int t = e / 128, l = (e / 4) % 32, j = e % 4;
    const int row = tile * 16 + (l >> 2) + (j >= 2 ? 8 : 0);
    const int token = t * 8 + (l & 3) * 2 + (j & 1);
    if (token >= p.m) continue;
    const int64_t at = (int64_t)token * p.n + row;
    if constexpr (ADD) p.yAddF32[at] += part[e];
    else p.yBf16[at] = __float2bfloat16(part[e]);
  }
}

size_t smemBytes(int nt, int kSlice, int warps) {
  return (size_t)nt * 8 * (kSlice + kPadK) * sizeof(bf16) + (size_t)(warps + 1) * nt * 128 * sizeof(float);
}

/** Blocks per 16-row tile: enough tiles * C to cover the SMs, k / C a whole number of warps. */
int clusterFor(int n, int k, int sms) {
  const int tiles = n / 16;
  int c = 1;
  while (c < 4 && tiles * c < sms * 3 / 4 && (k / (2 * c)) % kWarpK == 0 && k / (2 * c) >= kWarpK) c *= 2;
  return c;
}

template <int NT, int C, GemvInputKind IN, bool ADD>
void launchTyped(const GemvParams& p, cudaStream_t stream) {
  const int kSlice = p.k / C, warps = kSlice / kWarpK;
  const size_t smem = smemBytes(NT, kSlice, warps);
  auto kernel = gemvKernel<NT, C, IN, ADD>;
  if (smem > 48 * 1024)
    DSG_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  launchKernel(kernel, dim3((unsigned)(p.n / 16 * C)), dim3((unsigned)(warps * 32)), smem, stream,
               p.overlap != GemvOverlap::None, C > 1 ? C : 0, p);
  DSG_LAUNCHED("gemvKernel");
}

template <int NT, GemvInputKind IN, bool ADD>
void launchWithCluster(const GemvParams& p, int c, cudaStream_t stream) {
  switch (c) {
    case 1: launchTyped<NT, 1, IN, ADD>(p, stream); break;
    case 2: launchTyped<NT, 2, IN, ADD>(p, stream); break;
    default: launchTyped<NT, 4, IN, ADD>(p, stream); break;
  }
}

template <GemvInputKind IN, bool ADD>
void launchWithTiles(const GemvParams& p, int c, cudaStream_t stream) {
  if (p.m <= 8) launchWithCluster<1, IN, ADD>(p, c, stream);
  else if (p.m <= 16) launchWithCluster<2, IN, ADD>(p, c, stream);
  else launchWithCluster<4, IN, ADD>(p, c, stream);
}

}  // namespace

bool gemvSupports(int m, int n, int k) {
  return m >= 1 && m <= kGemvMaxTokens && n % 16 == 0 && n > 0 && k % kWarpK == 0 && k > 0 && k <= 3072;
}

void launchGemv(const GemvInput& in, const bf16* w, int m, int n, int k, bf16* yBf16, float* yAddF32, GemvOverlap overlap,
                cudaStream_t stream) {
  if (!gemvSupports(m, n, k))
    throw EngineError("LLM_ERR_INTERNAL", "launchGemv: unsupported shape m " + std::to_string(m) + " n " +
                                              std::to_string(n) + " k " + std::to_string(k));
  if ((yBf16 == nullptr) == (yAddF32 == nullptr))
    throw EngineError("LLM_ERR_INTERNAL", "launchGemv: exactly one of yBf16 / yAddF32 must be given");
  int device = 0, sms = 0;
  DSG_CUDA(cudaGetDevice(&device));
  DSG_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const GemvParams p{w, m, n, k, in, yBf16, yAddF32, overlap};
  const int c = clusterFor(n, k, sms);
  const bool add = yAddF32 != nullptr;
  switch (in.kind) {
    case GemvInputKind::RmsNorm:
      add ? launchWithTiles<GemvInputKind::RmsNorm, true>(p, c, stream)
          : launchWithTiles<GemvInputKind::RmsNorm, false>(p, c, stream);
      break;
    case GemvInputKind::SiluMul:
      add ? launchWithTiles<GemvInputKind::SiluMul, true>(p, c, stream)
          : launchWithTiles<GemvInputKind::SiluMul, false>(p, c, stream);
      break;
    default:
      add ? launchWithTiles<GemvInputKind::Bf16, true>(p, c, stream)
          : launchWithTiles<GemvInputKind::Bf16, false>(p, c, stream);
      break;
  }
}

}  // namespace dsg::cuda
