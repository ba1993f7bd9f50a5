// GPU-to-GPU KV transfer within a node over CUDA IPC (used by cuda_backend.cu's kvIpc* methods). The prefill
// process exports its KV pool allocation once (cudaIpcGetMemHandle); a decode process opens it
// (cudaIpcOpenMemHandle with lazy peer access, mapped until closed) and pulls token rows from the remote pages into
// its own pages with one copy kernel on its own stream: the remote pool is read over NVLink / PCIe peer access, no
// host copy. Token rows are the unit, so the two pools may use different page sizes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>

#include "backend.h"

namespace dsg::cuda {

/** A pool in this process: `tensors` tensors tensorStrideElems elements apart, each [pages * pageSize, rowElems]. */
struct LocalKvPool {
  __nv_bfloat16* base = nullptr;
  int64_t tensors = 0, tensorStrideElems = 0, rowElems = 0, numPages = 0;
  int pageSize = 0;
  int deviceId = 0;
};

/** The IPC description of a local pool (its allocation must start at pool.base). */
KvIpcPool exportKvPool(const LocalKvPool& pool);

/** The remote pools one decode engine has open. */
class KvIpcPeers {
 public:
  KvIpcPeers() = default;
  KvIpcPeers(const KvIpcPeers&) = delete;
  KvIpcPeers& operator=(const KvIpcPeers&) = delete;
  ~KvIpcPeers();

  /** Maps a remote pool whose per-token shape matches `local`; returns its id. */
  int32_t open(const KvIpcPool& remote, const LocalKvPool& local);
  /** Copies tokens [srcToken0, srcToken0 + numTokens) of the remote page list into local pages dstPages[0..) and
   * synchronises `stream`. */
  KvPullStats pull(int32_t remote, const int32_t* srcPages, int32_t numSrcPages, int32_t srcToken0, const LocalKvPool& local,
                   const int32_t* dstPages, int32_t numDstPages, int32_t numTokens, cudaStream_t stream);
  void close(int32_t remote);

 private:
  struct Remote {
    void* base = nullptr;
    KvIpcPool desc;
  };
  std::map<int32_t, Remote> remotes_;
  int32_t nextId_ = 1;
  int32_t* dPages_ = nullptr;  // device copy of both page lists
  size_t dPagesCap_ = 0;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace dsg::cuda
