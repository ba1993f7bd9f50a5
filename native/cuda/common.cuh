// Shared helpers of the CUDA backend: error checks, bf16 vector loads, warp/block reductions.
// Every CUDA and cuBLAS call is checked; a failure throws dsg::EngineError("LLM_ERR_DEVICE", ...) naming the call.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "backend.h"

namespace dsg::cuda {

using bf16 = __nv_bfloat16;

inline void checkCuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    throw EngineError("LLM_ERR_DEVICE", std::string("CUDA error in ") + what + " (" + file + ":" +
                                            std::to_string(line) + "): " + cudaGetErrorString(err));
  }
}
#define DSG_CUDA(call) ::dsg::cuda::checkCuda((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at once (asynchronous faults surface at the next sync).
#define DSG_LAUNCHED(name) ::dsg::cuda::checkCuda(cudaGetLastError(), name, __FILE__, __LINE__)

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/** Block-wide sum; every thread gets the result. `scratch` holds >= 32 floats; blockDim.x a multiple of 32. */
__device__ __forceinline__ float blockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[lane] : 0.f;
  return warpSum(v);
}

// Programmatic dependent launch (sm_90): a kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization
// may start before the previous kernel on its stream has finished; it must wait before touching anything that
// kernel writes or reads, and lets the next one start early once it is running. No-ops for ordinary launches.
// (griddepcontrol is sm_90; older targets run the kernels without the overlap, so these compile to nothing there.)
__device__ __forceinline__ void waitPreviousGrid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void allowNextGrid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/**
 * Launches `kernel` on `stream`, optionally with programmatic dependent launch (the kernel must call
 * waitPreviousGrid before it touches what earlier kernels write) and, when clusterX > 0, as thread-block clusters of
 * clusterX blocks along x (gridDim.x a multiple of it).
 */
template <class... KernelArgs, class... Args>
void launchKernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smemBytes, cudaStream_t stream,
                  bool overlapPrevious, int clusterX, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smemBytes;
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2];
  int count = 0;
  attrs[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[count++].val.programmaticStreamSerializationAllowed = overlapPrevious ? 1 : 0;
  if (clusterX > 0) {
    attrs[count].id = cudaLaunchAttributeClusterDimension;
    attrs[count].val.clusterDim.x = (unsigned)clusterX;
    attrs[count].val.clusterDim.y = 1;
    attrs[count++].val.clusterDim.z = 1;
  }
  cfg.attrs = attrs;
  cfg.numAttrs = count;
  DSG_CUDA(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

/** 8 bf16 in one 16-byte word, converted to/from f32. */
__device__ __forceinline__ void unpack8(const uint4& u, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ uint4 pack8(const float* f) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return u;
}

}  // namespace dsg::cuda
