// Mid-batch linear layers of the decode step (9..256 tokens): y[m, n] = x[m, k] W[n, k]^T, bf16 operands, f32
// accumulation on the tensor cores (mma.sync m16n8k16: 16 weight rows against 8 tokens), with the step's small
// neighbour kernels folded in (native/cuda/NOTES-decode-gemm.md).
// Shapes (Qwen3-0.6B): qkv 4096 x 1024, o 1024 x 2048, gate|up 6144 x 1024, down 1024 x 3072. Floor: the weight
// bytes over the card's bandwidth (1-3 us each at 4.2 TB/s) up to ~64 tokens; above that the operands' trips from
// L2 to the SMs ((n/nTile) x m x k x 2 + (m/mTile) x n x k x 2 bytes) and, at 256 tokens, the FLOPs (2 m n k:
// 2.1 GFLOP for qkv, ~3 us on mma.sync).
// A block owns an nTile x mTile output tile and k / C of k; a cluster of C blocks splits k and reduces its partial
// tiles through distributed shared memory in a fixed order (deterministic). Weights and x stream through a
// 4-stage cp.async ring of 64-k slices (16-byte chunks XOR-swizzled by row so ldmatrix is conflict-free). The
// weight slices of the first stages are issued before griddepcontrol.wait: with programmatic dependent launch they
// stream while the previous kernel finishes. Fusions (what cuBLAS cannot do, and what cost a launch each):
// - RMSNorm on the input: x = bf16(residual * normWeight) is written by the kernel that updated the residual, with
//   the residual's sum of squares per 32 columns (ssq); this kernel scales its output rows by rsqrt(sum / k + eps).
// - SiLU(gate) * up on the output: a tile's first half of rows are gate rows, its second half the matching up rows.
// - residual add on the output (f32 +=), then the next RMSNorm's input and ssq as above.
#include <cooperative_groups.h>

#include <algorithm>
#include <string>

#include "common.cuh"
#include "gemm.h"

namespace dsg::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kKT = 64;     // k per stage: 8 chunks of 16 B per row
constexpr int kStages = 4;  // ring depth: 3 stages in flight while one is consumed
constexpr int kRedPad = 4;  // f32 tile row padding: the accumulator stores hit distinct banks
constexpr int kGroup = 32;  // columns per epilogue item (and per ssq partial)

struct Params {
  const bf16* w;
  int m, n, k;
  DecodeGemmArgs a;
};

__device__ __forceinline__ uint32_t smemAddr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

/** 16 bytes global -> shared; bytes < 16 zero-fills the rest (0: the whole chunk, the source is not read). */
__device__ __forceinline__ void cpAsync16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smemAddr(dst)), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(p)));
}
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm(  // a pure register operation: not volatile, so the compiler may schedule it among the shared-memory loads
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/** 8 consecutive floats of shared memory (16-byte aligned) in two vector loads. */
__device__ __forceinline__ void load8(const float* p, float* f) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

/** Element offset of (row, 16-byte chunk) in a stage tile of 64-k rows: chunks XOR-swizzled by the row's low bits. */
__device__ __forceinline__ int swz(int row, int chunk) { return row * kKT + ((chunk ^ (row & 7)) << 3); }

constexpr int threadsFor(int nt, int mt) { return (nt / 32) * (mt <= 64 ? mt / 32 : mt / 64) * 32; }
/** The stage ring, or the f32 tile and row scales that reuse it after the k loop. */
constexpr size_t smemFor(int nt, int mt) {
  const size_t ring = (size_t)kStages * (nt + mt) * kKT * sizeof(bf16);
  const size_t tile = (size_t)mt * (nt + kRedPad) * sizeof(float) + mt * sizeof(float);
  return ring > tile ? ring : tile;
}

/**
 * Block = (NT / 32) x (MT / MW) warps; a warp owns 32 weight rows x MW tokens (2 x MW/8 mma tiles).
 * blockIdx.x = (tileN * mTiles + tileM) * C + rank.
 */
template <int NT, int MT, int C>
__global__ void __launch_bounds__(threadsFor(NT, MT)) decodeGemmKernel(Params p) {
  constexpr int MW = MT <= 64 ? 32 : 64;  // tokens per warp
  constexpr int WN = NT / 32, WM = MT / MW, THREADS = WN * WM * 32, MF = MW / 8;
  constexpr int STAGE = (NT + MT) * kKT;  // bf16 elements per stage
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* ring = reinterpret_cast<bf16*>(smem);

  const int mTiles = (p.m + MT - 1) / MT;
  const int rank = C > 1 ? (int)(blockIdx.x % C) : 0;
  const int tile = blockIdx.x / C, tileN = tile / mTiles, tileM = tile % mTiles;
  const int mBase = tileM * MT, kSlice = p.k / C, kBase = rank * kSlice, nK = kSlice / kKT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warpN = warp % WN, warpM = warp / WN;
  const bool siluOut = p.a.out == DecodeGemmOut::SiluGateUp;

  // This thread's weight rows in the stage loads: gate|up tiles take half their rows from each half of W.
  auto weightRow = [&](int r) -> int64_t {
    if (!siluOut) return (int64_t)tileN * NT + r;
    const int half = NT / 2;
    return r < half ? (int64_t)tileN * half + r : (int64_t)(p.n / 2) + (int64_t)tileN * half + (r - half);
  };
  auto loadW = [&](int stage, int kb) {
    bf16* dst = ring + stage * STAGE;
    const int k0 = kBase + kb * kKT;
    for (int i = threadIdx.x; i < NT * 8; i += THREADS) {
      const int r = i >> 3, c = i & 7;
      cpAsync16(dst + swz(r, c), p.w + weightRow(r) * p.k + k0 + c * 8, 16);
    }
  };
  auto loadX = [&](int stage, int kb) {
    bf16* dst = ring + stage * STAGE + NT * kKT;
    const int k0 = kBase + kb * kKT;
    for (int i = threadIdx.x; i < MT * 8; i += THREADS) {
      const int t = i >> 3, c = i & 7, token = mBase + t;
      const bool live = token < p.m;
      cpAsync16(dst + swz(t, c), p.a.x + (int64_t)(live ? token : 0) * p.k + k0 + c * 8, live ? 16 : 0);
    }
  };

  // Weights first (they do not depend on earlier kernels), then wait for the previous kernel before reading x.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nK) loadW(s, s);
    cpAsyncCommit();
  }
  waitPreviousGrid();
  allowNextGrid();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nK) loadX(s, s);
    cpAsyncCommit();
  }
  // Group accounting: before iteration kb, 2 (S - 1) + kb groups are committed and stage kb's last group is number
  // S - 1 + kb, so waiting until S - 2 remain pending covers it.

  float acc[2][MF][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < MF; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

  // Warps whose tokens are all padding (the last m-tile's tail) only help load.
  const bool warpLive = mBase + warpM * MW < p.m;
  // ldmatrix offsets inside a stage (swz, split into row and column parts): A rows warpN*32 + i*16 + lane%16 at chunk
  // 2kk + lane/16; B tokens warpM*MW + 16jj + lane%8 + 8(lane/16) at chunk 2kk + (lane/8)%2. Rows of one fragment
  // share row % 8, so the XOR swizzle of each (fragment kind, kk) is one value per thread.
  int aRow[2], bRow[MF / 2], aCol[kKT / 16], bCol[kKT / 16];
#pragma unroll
  for (int i = 0; i < 2; ++i) aRow[i] = (warpN * 32 + i * 16 + (lane & 15)) * kKT;
#pragma unroll
  for (int jj = 0; jj < MF / 2; ++jj) bRow[jj] = (warpM * MW + jj * 16 + (lane & 7) + ((lane >> 4) << 3)) * kKT;
#pragma unroll
  for (int kk = 0; kk < kKT / 16; ++kk) {
    aCol[kk] = ((kk * 2 + (lane >> 4)) ^ (lane & 7)) << 3;
    bCol[kk] = ((kk * 2 + ((lane >> 3) & 1)) ^ (lane & 7)) << 3;
  }
  for (int kb = 0; kb < nK; ++kb) {
    cpAsyncWait<kStages - 2>();
    __syncthreads();  // stage kb landed for every thread; stage kb - 1 has been consumed by every warp
    const int next = kb + kStages - 1;
    if (next < nK) {
      loadW(next % kStages, next);
      loadX(next % kStages, next);
    }
    cpAsyncCommit();
    if (!warpLive) continue;
    const bf16* sw = ring + (kb % kStages) * STAGE;
    const bf16* sx = sw + NT * kKT;
    // Fragments of k16 step kk + 1 are loaded before the mma of step kk (two register sets): the ldmatrix latency
    // hides behind the tensor work instead of preceding it.
    uint32_t a[2][2][4], b[2][MF][2];
    auto loadFragments = [&](int buf, int kk) {
#pragma unroll
      for (int i = 0; i < 2; ++i) ldmatrix4(a[buf][i], sw + aRow[i] + aCol[kk]);
#pragma unroll
      for (int j = 0; j < MF; j += 2) {
        uint32_t r[4];
        ldmatrix4(r, sx + bRow[j / 2] + bCol[kk]);
        b[buf][j][0] = r[0];
        b[buf][j][1] = r[1];
        b[buf][j + 1][0] = r[2];
        b[buf][j + 1][1] = r[3];
      }
    };
    loadFragments(0, 0);
#pragma unroll
    for (int kk = 0; kk < kKT / 16; ++kk) {
      if (kk + 1 < kKT / 16) loadFragments((kk + 1) & 1, kk + 1);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < MF; ++j) mma16816(acc[i][j], a[kk & 1][i], b[kk & 1][j][0], b[kk & 1][j][1]);
    }
  }
  cpAsyncWait<0>();
  __syncthreads();  // the ring is free: it becomes the f32 tile red[MT][NT + kRedPad]

  constexpr int LD = NT + kRedPad;
  float* red = reinterpret_cast<float*>(smem);
  float* rowScale = red + MT * LD;  // [MT]
  {
    const int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < MF; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = warpN * 32 + i * 16 + g + (e >> 1) * 8, t = warpM * MW + j * 8 + 2 * q + (e & 1);
          red[t * LD + row] = acc[i][j][e];
        }
  }
  const int live = min(MT, p.m - mBase);  // tokens of this tile that exist; rank r finishes tokens t % C == r
  if constexpr (C > 1) {
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const float* parts[C];
#pragma unroll
    for (int r = 0; r < C; ++r) parts[r] = cluster.map_shared_rank(red, r);
    const int mine = (live - rank + C - 1) / C, vecs = NT / 4;
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
  }
  // Row scales (input RMSNorm) of the tokens this rank finishes.
  for (int t = rank + (int)threadIdx.x * C; t < live; t += THREADS * C) {
    float s = 1.f;
    if (p.a.ssqIn != nullptr) {
      // 8 independent loads per round trip (the partials sit p.m floats apart).
      float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      const int parts = p.k / kGroup;
      const float* src = p.a.ssqIn + mBase + t;
      int j = 0;
      for (; j + 8 <= parts; j += 8)
#pragma unroll
        for (int e = 0; e < 8; ++e) part[e] += src[(int64_t)(j + e) * p.m];
      for (; j < parts; ++j) part[0] += src[(int64_t)j * p.m];
      const float ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      s = rsqrtf(ss / p.k + p.a.eps);
    }
    rowScale[t] = s;
  }
  __syncthreads();

  const int groups = siluOut ? NT / (2 * kGroup) : NT / kGroup;
  const int mine = (live - rank + C - 1) / C;
  for (int i = threadIdx.x; i < mine * groups; i += THREADS) {
    const int t = rank + (i / groups) * C, grp = i % groups, token = mBase + t;
    const float* v = red + t * LD + grp * kGroup;
    const float s = rowScale[t];
    if (p.a.out == DecodeGemmOut::Bf16) {
      bf16* y = p.a.y + (int64_t)token * p.n + tileN * NT + grp * kGroup;
#pragma unroll
      for (int c = 0; c < kGroup; c += 8) {
        float f[8];
        load8(v + c, f);
#pragma unroll
        for (int e = 0; e < 8; ++e) f[e] *= s;
        *reinterpret_cast<uint4*>(y + c) = pack8(f);
      }
    } else if (siluOut) {
      const float* up = v + NT / 2;
      bf16* y = p.a.y + (int64_t)token * (p.n / 2) + tileN * (NT / 2) + grp * kGroup;
#pragma unroll
      for (int c = 0; c < kGroup; c += 8) {
        float f[8], u[8];
        load8(v + c, f);
        load8(up + c, u);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float g = f[e] * s;
          f[e] = g / (1.f + __expf(-g)) * (u[e] * s);
        }
        *reinterpret_cast<uint4*>(y + c) = pack8(f);
      }
    } else {
      const int col0 = tileN * NT + grp * kGroup;
      float* res = p.a.residual + (int64_t)token * p.n + col0;
      float ss = 0.f;
#pragma unroll
      for (int c = 0; c < kGroup; c += 8) {
        float4 r0 = *reinterpret_cast<const float4*>(res + c), r1 = *reinterpret_cast<const float4*>(res + c + 4);
        float d[8];
        load8(v + c, d);
        r0.x += d[0] * s;
        r0.y += d[1] * s;
        r0.z += d[2] * s;
        r0.w += d[3] * s;
        r1.x += d[4] * s;
        r1.y += d[5] * s;
        r1.z += d[6] * s;
        r1.w += d[7] * s;
        *reinterpret_cast<float4*>(res + c) = r0;
        *reinterpret_cast<float4*>(res + c + 4) = r1;
        if (p.a.nextNorm != nullptr) {
          const float f[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
          float wn[8], o[8];
          unpack8(*reinterpret_cast<const uint4*>(p.a.nextNorm + col0 + c), wn);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            ss += f[e] * f[e];
            o[e] = f[e] * wn[e];
          }
          *reinterpret_cast<uint4*>(p.a.xNext + (int64_t)token * p.n + col0 + c) = pack8(o);
        }
      }
      if (p.a.nextNorm != nullptr) p.a.ssqOut[(int64_t)(col0 / kGroup) * p.m + token] = ss;
    }
  }
  if constexpr (C > 1) cg::this_cluster().sync();  // the other ranks have read this block's shared memory
}

template <int NT, int MT, int C>
void launchTyped(const Params& p, int mTiles, cudaStream_t stream) {
  auto kernel = decodeGemmKernel<NT, MT, C>;
  constexpr size_t smem = smemFor(NT, MT);
  // Once per process and device is enough, but the call is cheap and graph capture tolerates it.
  DSG_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  launchKernel(kernel, dim3((unsigned)(p.n / NT * mTiles * C)), dim3(threadsFor(NT, MT)), smem, stream, true, C > 1 ? C : 0, p);
  DSG_LAUNCHED("decodeGemmKernel");
}

template <int NT, int MT>
void launchWithCluster(const Params& p, int mTiles, int c, cudaStream_t stream) {
  switch (c) {
    case 1: launchTyped<NT, MT, 1>(p, mTiles, stream); break;
    case 2: launchTyped<NT, MT, 2>(p, mTiles, stream); break;
    case 4: launchTyped<NT, MT, 4>(p, mTiles, stream); break;
    default: launchTyped<NT, MT, 8>(p, mTiles, stream); break;
  }
}

template <int NT>
void launchWithM(const Params& p, int mt, int c, cudaStream_t stream) {
  const int mTiles = (p.m + mt - 1) / mt;
  switch (mt) {
    case 32: launchWithCluster<NT, 32>(p, mTiles, c, stream); break;
    case 64: launchWithCluster<NT, 64>(p, mTiles, c, stream); break;
    case 128: launchWithCluster<NT, 128>(p, mTiles, c, stream); break;
    default: launchWithCluster<NT, 256>(p, mTiles, c, stream); break;
  }
}

int deviceSms() {
  int device = 0, sms = 0;
  DSG_CUDA(cudaGetDevice(&device));
  DSG_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

bool validTile(const DecodeGemmTile& t, int n, int k) {
  const bool nt = t.nTile == 64 || t.nTile == 128, mt = t.mTile == 32 || t.mTile == 64 || t.mTile == 128 ||
                                                       t.mTile == 256;
  const bool c = t.cluster == 1 || t.cluster == 2 || t.cluster == 4 || t.cluster == 8;
  return nt && mt && c && n % t.nTile == 0 && k % (kKT * t.cluster) == 0;
}

}  // namespace

bool decodeGemmSupports(int m, int n, int k) {
  return m >= 1 && m <= kDecodeGemmMaxTokens && n > 0 && n % 64 == 0 && k > 0 && k % kKT == 0;
}

DecodeGemmTile decodeGemmTile(int m, int n, int k, DecodeGemmTile want) {
  DecodeGemmTile t = want;
  // From decode_gemm_check's tile sweep on an H200 (NOTES-decode-gemm.md): 64-row tiles, m-tiles of 32 / 64 / 128
  // rows by batch (256-row tiles need 192 KB of shared memory and run in two waves).
  if (t.mTile == 0) t.mTile = m <= 32 ? 32 : m <= 128 ? 64 : 128;
  if (t.nTile == 0) t.nTile = 64;
  if (t.cluster == 0) {
    // Enough blocks for ~3/4 of the SMs' first two slots, as long as they fit in one wave; k / C whole stages.
    const int sms = deviceSms(), tiles = n / t.nTile * ((m + t.mTile - 1) / t.mTile);
    const size_t smem = smemFor(t.nTile, t.mTile);
    const int perSm = std::max(1, (int)std::min<size_t>((227u << 10) / smem, 2048 / threadsFor(t.nTile, t.mTile)));
    const int want = sms * std::min(perSm, 2) * 3 / 4;
    t.cluster = 1;
    while (t.cluster < 8 && tiles * t.cluster < want && k % (kKT * t.cluster * 2) == 0) t.cluster *= 2;
    if (t.cluster > 1 && tiles * t.cluster > sms * perSm) t.cluster /= 2;
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
  const Params p{w, m, n, k, a};
  if (t.nTile == 128) launchWithM<128>(p, t.mTile, t.cluster, stream);
  else launchWithM<64>(p, t.mTile, t.cluster, stream);
}

}  // namespace dsg::cuda
