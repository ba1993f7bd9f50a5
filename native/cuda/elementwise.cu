// Row-wise kernels of the CUDA backend: embedding gather, RMSNorm over the f32 residual stream, SiLU*mul, page copy.
// Shapes: tokens T, hidden H (Qwen3-0.6B: 1024), intermediate F (3072). All are memory-bound, one pass each:
// floor = bytes moved / bandwidth (e.g. RMSNorm at T = 1: 4 KB read, 2 KB written: launch latency dominates).
#include <cuda_fp16.h>

#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda {

namespace {

// One block per token; 16-byte loads of 8 bf16 each (hidden % 8 == 0 checked at load). The table holds rows
// [vocabStart, vocabStart + rows) of the vocabulary (all of it without tensor parallelism); other tokens embed to zeros.
__global__ void embedGatherKernel(const int32_t* __restrict__ ids, const bf16* __restrict__ embed, int hidden,
                                  int vocabStart, int rows, float* __restrict__ residual) {
  const int t = blockIdx.x;
  const int64_t id = (int64_t)ids[t] - vocabStart;
  const bool inShard = id >= 0 && id < rows;
  const uint4* src = reinterpret_cast<const uint4*>(embed + (inShard ? id : 0) * hidden);
  float4* dst = reinterpret_cast<float4*>(residual + (int64_t)t * hidden);
  for (int c = threadIdx.x; c < hidden / 8; c += blockDim.x) {
    float f[8] = {};
    if (inShard) unpack8(src[c], f);
    dst[2 * c] = make_float4(f[0], f[1], f[2], f[3]);
    dst[2 * c + 1] = make_float4(f[4], f[5], f[6], f[7]);
  }
}

// RMSNorm, vector path (hidden % 8 == 0, 16-byte aligned): a row is spread over warpsPerRow warps, each lane holding
// kVecs groups of 8 elements (two float4 of the residual, one uint4 of the weight) in registers, so the row and the
// weight are fetched in one round trip (all loads issued before the first use) and never read twice. Launched with
// programmatic dependent launch: the block starts (and loads the weight) while the previous kernel drains.
// blockDim = (32 * warpsPerRow, rowsPerBlock); rows past numRows only join the reduction's barrier.
template <int kVecs>
__global__ void __launch_bounds__(128) rmsNormVecKernel(const float* __restrict__ residual,
                                                       const int32_t* __restrict__ rows, int numRows, int hidden,
                                                       const bf16* __restrict__ weight, float eps,
                                                       bf16* __restrict__ out) {
  __shared__ float scratch[128 / 32];
  const int r = blockIdx.x * blockDim.y + threadIdx.y;
  const int groups = hidden / 8, stride = blockDim.x;
  const bool live = r < numRows;
  const uint4* w = reinterpret_cast<const uint4*>(weight);
  uint4 wv[kVecs];
  float4 xv[2 * kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int g = threadIdx.x + i * stride;
    wv[i] = live && g < groups ? w[g] : make_uint4(0, 0, 0, 0);
  }
  // The weight is constant: fetched while the previous kernel finishes (programmatic dependent launch).
  waitPreviousGrid();
  allowNextGrid();
  const int64_t src = live ? (rows ? rows[r] : r) : 0;
  const float4* x = reinterpret_cast<const float4*>(residual + src * hidden);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int g = threadIdx.x + i * stride;
    const bool ok = live && g < groups;
    xv[2 * i] = ok ? x[2 * g] : make_float4(0.f, 0.f, 0.f, 0.f);
    xv[2 * i + 1] = ok ? x[2 * g + 1] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < 2 * kVecs; ++i) ss += xv[i].x * xv[i].x + xv[i].y * xv[i].y + xv[i].z * xv[i].z + xv[i].w * xv[i].w;
  ss = warpSum(ss);
  if (blockDim.x > 32) {  // several warps per row: combine through shared memory (block-uniform branch)
    const int lane = threadIdx.x & 31, warpInRow = threadIdx.x >> 5, warpsPerRow = blockDim.x >> 5;
    if (lane == 0) scratch[threadIdx.y * warpsPerRow + warpInRow] = ss;
    __syncthreads();
    ss = 0.f;
    for (int i = 0; i < warpsPerRow; ++i) ss += scratch[threadIdx.y * warpsPerRow + i];
  }
  if (!live) return;
  const float inv = rsqrtf(ss / hidden + eps);
  uint4* o = reinterpret_cast<uint4*>(out + (int64_t)r * hidden);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const int g = threadIdx.x + i * stride;
    if (g >= groups) continue;
    float wf[8], y[8];
    unpack8(wv[i], wf);
    const float4 a = xv[2 * i], b = xv[2 * i + 1];
    y[0] = a.x * inv * wf[0];
    y[1] = a.y * inv * wf[1];
    y[2] = a.z * inv * wf[2];
    y[3] = a.w * inv * wf[3];
    y[4] = b.x * inv * wf[4];
    y[5] = b.y * inv * wf[5];
    y[6] = b.z * inv * wf[6];
    y[7] = b.w * inv * wf[7];
    o[g] = pack8(y);
  }
}

// RMSNorm for any hidden % 4 == 0 (or unaligned pointers): one block per row, the row read twice (the second read
// hits L1/L2).
__global__ void rmsNormKernel(const float* __restrict__ residual, const int32_t* __restrict__ rows, int hidden,
                              const bf16* __restrict__ weight, float eps, bf16* __restrict__ out) {
  __shared__ float scratch[32];
  const int r = blockIdx.x;
  const int64_t src = rows ? rows[r] : r;
  const float4* x = reinterpret_cast<const float4*>(residual + src * hidden);
  float ss = 0.f;
  for (int c = threadIdx.x; c < hidden / 4; c += blockDim.x) {
    const float4 v = x[c];
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  ss = blockSum(ss, scratch);
  const float inv = rsqrtf(ss / hidden + eps);
  __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(out + (int64_t)r * hidden);
  const __nv_bfloat162* w = reinterpret_cast<const __nv_bfloat162*>(weight);
  for (int c = threadIdx.x; c < hidden / 4; c += blockDim.x) {
    const float4 v = x[c];
    const float2 w0 = __bfloat1622float2(w[2 * c]), w1 = __bfloat1622float2(w[2 * c + 1]);
    o[2 * c] = __floats2bfloat162_rn(v.x * inv * w0.x, v.y * inv * w0.y);
    o[2 * c + 1] = __floats2bfloat162_rn(v.z * inv * w1.x, v.w * inv * w1.y);
  }
}

// SiLU*mul, 16-byte path: blockIdx.x = token, blockIdx.y * blockDim.x + threadIdx.x = group of 8 outputs (no 64-bit
// division per element, unlike a flat grid-stride loop); silu(a) = a / (1 + e^-a) with the fast divide (bf16 out).
__global__ void __launch_bounds__(128) siluMulKernel(const bf16* __restrict__ gateUp, int inter, bf16* __restrict__ out) {
  waitPreviousGrid();  // launched with programmatic dependent launch
  allowNextGrid();
  const int groupsPerRow = inter / 8;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= groupsPerRow) return;
  const int64_t t = blockIdx.x;
  const uint4* row = reinterpret_cast<const uint4*>(gateUp + t * 2 * inter);
  const uint4 ga = row[c], ub = row[groupsPerRow + c];
  float a[8], b[8], o[8];
  unpack8(ga, a);
  unpack8(ub, b);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = __fdividef(a[i], 1.f + __expf(-a[i])) * b[i];
  reinterpret_cast<uint4*>(out + t * inter)[c] = pack8(o);
}

// Any intermediate size (e.g. stories260K's 172): one output per thread.
__global__ void siluMulScalarKernel(const bf16* __restrict__ gateUp, int64_t n, int inter, bf16* __restrict__ out) {
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < n; g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t t = g / inter;
    const int i = (int)(g % inter);
    const float a = __bfloat162float(gateUp[t * 2 * inter + i]), b = __bfloat162float(gateUp[t * 2 * inter + inter + i]);
    out[g] = __float2bfloat16(a / (1.f + __expf(-a)) * b);
  }
}

// blockIdx.x = page entry, blockIdx.y = tensor (layer * 2 + k/v); 16-byte copies.
__global__ void pageCopyKernel(bf16* pool, int64_t poolTensorElems, int64_t pageElems, const int32_t* pages,
                               bf16* staging, bool toStaging) {
  const int i = blockIdx.x, tensor = blockIdx.y;
  uint4* p = reinterpret_cast<uint4*>(pool + tensor * poolTensorElems + (int64_t)pages[i] * pageElems);
  uint4* s = reinterpret_cast<uint4*>(staging + ((int64_t)i * gridDim.y + tensor) * pageElems);
  for (int64_t c = threadIdx.x; c < pageElems / 8; c += blockDim.x) {
    if (toStaging) s[c] = p[c]; else p[c] = s[c];
  }
}

__global__ void toBf16Kernel(const void* src, bool srcF16, int64_t n, bf16* dst) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = __float2bfloat16(srcF16 ? __half2float(static_cast<const __half*>(src)[i]) : static_cast<const float*>(src)[i]);
}

}  // namespace

void launchToBf16(const void* src, bool srcF16, int64_t n, bf16* dst, cudaStream_t stream) {
  if (n <= 0) return;
  const int64_t blocks = (n + 255) / 256;
  toBf16Kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(src, srcF16, n, dst);
  DSG_LAUNCHED("toBf16Kernel");
}

void launchEmbedGather(const int32_t* ids, int numTokens, const bf16* embed, int hidden, int vocabStart, int rows,
                       float* residual, cudaStream_t stream) {
  if (numTokens <= 0) return;
  embedGatherKernel<<<numTokens, 128, 0, stream>>>(ids, embed, hidden, vocabStart, rows, residual);
  DSG_LAUNCHED("embedGatherKernel");
}

void launchRmsNorm(const float* residual, const int32_t* rows, int numRows, int hidden, const bf16* weight, float eps,
                   bf16* out, cudaStream_t stream) {
  if (numRows <= 0) return;
  const int groups = hidden / 8;
  const bool vec = hidden % 8 == 0 && groups <= 32 * 4 * 4 && ((uintptr_t)residual & 15) == 0 &&
                   ((uintptr_t)weight & 15) == 0 && ((uintptr_t)out & 15) == 0;
  if (!vec) {
    rmsNormKernel<<<numRows, 256, 0, stream>>>(residual, rows, hidden, weight, eps, out);
    DSG_LAUNCHED("rmsNormKernel");
    return;
  }
  // Few rows (latency-bound): up to 4 warps per row, so each lane's share (and its serial work) is small, one row per
  // block. Many rows (bandwidth-bound): one warp per row up to hidden 1024 (no barrier), up to 4 groups per lane,
  // 128-thread blocks.
  const bool fewRows = numRows < 1024;
  const int kVecs = fewRows ? (groups <= 128 ? 1 : (groups <= 256 ? 2 : 4)) : (groups <= 32 ? 1 : (groups <= 64 ? 2 : 4));
  const int warpsPerRow = (groups + 32 * kVecs - 1) / (32 * kVecs);
  const int rowsPerBlock = fewRows ? 1 : 4 / warpsPerRow;
  const dim3 block(32 * warpsPerRow, rowsPerBlock);
  const unsigned blocks = (unsigned)((numRows + rowsPerBlock - 1) / rowsPerBlock);
  auto kernel = kVecs == 1 ? rmsNormVecKernel<1> : (kVecs == 2 ? rmsNormVecKernel<2> : rmsNormVecKernel<4>);
  launchKernel(kernel, dim3(blocks), block, 0, stream, true, 0, residual, rows, numRows, hidden, weight, eps, out);
  DSG_LAUNCHED("rmsNormVecKernel");
}

void launchSiluMul(const bf16* gateUp, int numTokens, int inter, bf16* out, cudaStream_t stream) {
  if (numTokens <= 0 || inter <= 0) return;
  if (inter % 8 != 0) {
    const int64_t n = (int64_t)numTokens * inter;
    const int64_t blocks = (n + 255) / 256;
    siluMulScalarKernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, stream>>>(gateUp, n, inter, out);
    DSG_LAUNCHED("siluMulScalarKernel");
    return;
  }
  const int threads = 128;
  const dim3 grid((unsigned)numTokens, (unsigned)((inter / 8 + threads - 1) / threads));
  launchKernel(siluMulKernel, grid, dim3(threads), 0, stream, true, 0, gateUp, inter, out);
  DSG_LAUNCHED("siluMulKernel");
}

void launchPageCopy(bf16* pool, int64_t poolTensorElems, int numTensors, int64_t pageElems, const int32_t* pages, int n,
                    bf16* staging, bool toStaging, cudaStream_t stream) {
  if (n <= 0) return;
  pageCopyKernel<<<dim3(n, numTensors), 256, 0, stream>>>(pool, poolTensorElems, pageElems, pages, staging, toStaging);
  DSG_LAUNCHED("pageCopyKernel");
}

}  // namespace dsg::cuda
