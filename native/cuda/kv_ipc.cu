// CUDA IPC KV transfer: pool export, remote pool mapping and the token-row pull kernel (see kv_ipc.h).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "common.cuh"
#include "kv_ipc.h"

namespace dsg::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // 16-byte loads in flight per thread before the stores: remote reads have long latency

/**
 * dst row (k, dstPages[t / dstPs] * dstPs + t % dstPs) = src row (k, srcPages[s / srcPs] * srcPs + s % srcPs) with
 * s = srcToken0 + t, for tensor k < tensors and token t < numTokens; rows of vecsPerRow 16-byte words. Consecutive
 * threads take consecutive words of a row, so both sides are read and written in full 16-byte-aligned runs.
 */
__global__ void kvRowPullKernel(const uint4* __restrict__ src, int64_t srcStrideVecs, int srcPs, const int32_t* __restrict__ srcPages,
                                int srcToken0, uint4* __restrict__ dst, int64_t dstStrideVecs, int dstPs,
                                const int32_t* __restrict__ dstPages, int numTokens, int tensors, int vecsPerRow) {
  const int64_t total = (int64_t)tensors * numTokens * vecsPerRow;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t base = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; base < total; base += stride * kUnroll) {
    uint4 v[kUnroll];
    int64_t to[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * stride;
      to[u] = -1;
      if (i < total) {
        const int vec = (int)(i % vecsPerRow);
        const int64_t row = i / vecsPerRow;
        const int t = (int)(row % numTokens);
        const int64_t k = row / numTokens;
        const int s = srcToken0 + t;
        const int64_t srcRow = (int64_t)srcPages[s / srcPs] * srcPs + s % srcPs;
        const int64_t dstRow = (int64_t)dstPages[t / dstPs] * dstPs + t % dstPs;
        v[u] = src[k * srcStrideVecs + srcRow * vecsPerRow + vec];
        to[u] = k * dstStrideVecs + dstRow * vecsPerRow + vec;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (to[u] >= 0) dst[to[u]] = v[u];
  }
}

EngineError transferError(const std::string& message) { return EngineError("LLM_ERR_KV_TRANSFER", message); }

}  // namespace

KvIpcPool exportKvPool(const LocalKvPool& pool) {
  DSG_CUDA(cudaSetDevice(pool.deviceId));
  cudaIpcMemHandle_t handle;
  const cudaError_t err = cudaIpcGetMemHandle(&handle, pool.base);
  if (err != cudaSuccess) throw transferError(std::string("cudaIpcGetMemHandle on the KV pool failed: ") + cudaGetErrorString(err));
  KvIpcPool out;
  static_assert(sizeof(handle) == sizeof(out.handle), "cudaIpcMemHandle_t is 64 bytes");
  std::memcpy(out.handle, &handle, sizeof(handle));
  out.tensors = pool.tensors;
  out.tensorStrideElems = pool.tensorStrideElems;
  out.rowElems = pool.rowElems;
  out.pageSize = pool.pageSize;
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof(bus), pool.deviceId) == cudaSuccess) out.pciBusId = bus;
  return out;
}

KvIpcPeers::~KvIpcPeers() {
  for (auto& [id, r] : remotes_) cudaIpcCloseMemHandle(r.base);
  if (dPages_) cudaFree(dPages_);
  if (start_) cudaEventDestroy(start_);
  if (stop_) cudaEventDestroy(stop_);
}

int32_t KvIpcPeers::open(const KvIpcPool& remote, const LocalKvPool& local) {
  if (remote.tensors != local.tensors || remote.rowElems != local.rowElems)
    throw transferError("the remote KV pool holds " + std::to_string(remote.tensors) + " tensors of " + std::to_string(remote.rowElems) +
                        " elements per token, this engine " + std::to_string(local.tensors) + " of " + std::to_string(local.rowElems));
  if (remote.pageSize < 1 || remote.tensorStrideElems % (remote.pageSize * remote.rowElems) != 0)
    throw transferError("the remote KV pool's geometry is inconsistent (page size " + std::to_string(remote.pageSize) + ", tensor stride " +
                        std::to_string(remote.tensorStrideElems) + ")");
  if ((remote.rowElems * 2) % 16 != 0) throw transferError("KV rows of " + std::to_string(remote.rowElems) + " bf16 are not 16-byte multiples");
  DSG_CUDA(cudaSetDevice(local.deviceId));
  cudaIpcMemHandle_t handle;
  std::memcpy(&handle, remote.handle, sizeof(handle));
  void* base = nullptr;
  const cudaError_t err = cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so the next call does not report it
    char bus[32] = {};
    cudaDeviceGetPCIBusId(bus, sizeof(bus), local.deviceId);
    throw transferError("cudaIpcOpenMemHandle of the prefill worker's KV pool (GPU " + remote.pciBusId + ") on this GPU (" + bus +
                        ") failed: " + cudaGetErrorString(err) +
                        " (both GPUs must be visible to both processes, e.g. CUDA_VISIBLE_DEVICES=1,0 rather than 1, and peer access must be possible)");
  }
  const int32_t id = nextId_++;
  remotes_[id] = Remote{base, remote};
  return id;
}

KvPullStats KvIpcPeers::pull(int32_t remote, const int32_t* srcPages, int32_t numSrcPages, int32_t srcToken0, const LocalKvPool& local,
                             const int32_t* dstPages, int32_t numDstPages, int32_t numTokens, cudaStream_t stream) {
  auto it = remotes_.find(remote);
  if (it == remotes_.end()) throw transferError("KV pool " + std::to_string(remote) + " is not open");
  const KvIpcPool& r = it->second.desc;
  const int64_t remotePages = r.tensorStrideElems / (r.pageSize * r.rowElems);
  if (numTokens < 0 || srcToken0 < 0 || (int64_t)srcToken0 + numTokens > (int64_t)numSrcPages * r.pageSize)
    throw transferError("pull of tokens [" + std::to_string(srcToken0) + ", " + std::to_string((int64_t)srcToken0 + numTokens) + ") from " +
                        std::to_string(numSrcPages) + " remote pages of " + std::to_string(r.pageSize) + " tokens");
  if ((int64_t)numTokens > (int64_t)numDstPages * local.pageSize)
    throw transferError("pull of " + std::to_string(numTokens) + " tokens into " + std::to_string(numDstPages) + " pages of " +
                        std::to_string(local.pageSize));
  for (int32_t i = 0; i < numSrcPages; ++i)
    if (srcPages[i] < 0 || srcPages[i] >= remotePages)
      throw transferError("remote page " + std::to_string(srcPages[i]) + " at index " + std::to_string(i) + " out of range [0, " +
                          std::to_string(remotePages) + ")");
  KvPullStats stats;
  if (numTokens == 0) return stats;
  DSG_CUDA(cudaSetDevice(local.deviceId));
  const size_t need = (size_t)numSrcPages + numDstPages;
  if (need > dPagesCap_) {
    if (dPages_) cudaFree(dPages_);
    dPages_ = nullptr;
    dPagesCap_ = 0;
    DSG_CUDA(cudaMalloc(&dPages_, need * sizeof(int32_t)));
    dPagesCap_ = need;
  }
  if (!start_) DSG_CUDA(cudaEventCreate(&start_));
  if (!stop_) DSG_CUDA(cudaEventCreate(&stop_));
  const auto t0 = std::chrono::steady_clock::now();
  DSG_CUDA(cudaMemcpyAsync(dPages_, srcPages, (size_t)numSrcPages * 4, cudaMemcpyHostToDevice, stream));
  DSG_CUDA(cudaMemcpyAsync(dPages_ + numSrcPages, dstPages, (size_t)numDstPages * 4, cudaMemcpyHostToDevice, stream));
  const int vecsPerRow = (int)(r.rowElems * 2 / 16);
  const int64_t total = r.tensors * numTokens * vecsPerRow;
  int sms = 0;
  DSG_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, local.deviceId));
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((total + kThreads * kUnroll - 1) / (kThreads * kUnroll), (int64_t)sms * 8));
  DSG_CUDA(cudaEventRecord(start_, stream));
  kvRowPullKernel<<<(unsigned)blocks, kThreads, 0, stream>>>(
      static_cast<const uint4*>(it->second.base), r.tensorStrideElems * 2 / 16, r.pageSize, dPages_, srcToken0,
      reinterpret_cast<uint4*>(local.base), local.tensorStrideElems * 2 / 16, local.pageSize, dPages_ + numSrcPages, numTokens,
      (int)r.tensors, vecsPerRow);
  DSG_LAUNCHED("kvRowPullKernel");
  DSG_CUDA(cudaEventRecord(stop_, stream));
  DSG_CUDA(cudaStreamSynchronize(stream));
  float ms = 0;
  DSG_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
  stats.bytes = total * 16;
  stats.deviceMs = ms;
  stats.hostMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

void KvIpcPeers::close(int32_t remote) {
  auto it = remotes_.find(remote);
  if (it == remotes_.end()) return;
  cudaIpcCloseMemHandle(it->second.base);
  remotes_.erase(it);
}

}  // namespace dsg::cuda
