// Tensor-parallel collectives over peer-mapped buffers (see all_reduce.h for the buffer layout, the barrier and the
// staging rules). Shapes: f32 messages of n elements (any n >= 1; 16-byte aligned pointers), at most chunkFloats per
// launch (larger ones loop), block b of a launch owning the message slice [b * per, (b + 1) * per) and the staging
// region [b * region, (b + 1) * region) of every rank's buffer. Floor: one-shot reads (size - 1) * n * 4 bytes from
// peers per rank, two-shot 2 * (size - 1) / size * n * 4; both add one barrier round trip (two for two-shot).
#include <unistd.h>

#include <fstream>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "all_reduce.h"
#include "common.cuh"

#ifdef DSG_HAVE_NCCL
#include <nccl.h>
#endif

namespace dsg::cuda {
namespace {

constexpr int kThreads = 512;
constexpr size_t kFlagsBytes = 4096;  // kCommMaxBlocks x kMaxTpRanks uint32, padded
static_assert(kCommMaxBlocks * kMaxTpRanks * 4 <= kFlagsBytes, "flags do not fit");
// Above this size a group of more than two ranks reduces in two shots: one-shot's peer reads grow with the group
// ((size - 1) x n), two-shot's stay below 2n for the price of a second barrier. For two ranks the peer reads are equal
// (n either way), so one-shot always wins there.
constexpr size_t kOneShotMaxBytes = 256u << 10;
// NCCL from this message size up (outside stream capture): the issue's measurement puts NCCL's fixed cost at ~20 us
// inside a graph (2 KB, two H200s); 8 MB takes ~20-30 us at NVLink's per-direction rate, so from there its fixed cost
// is amortised and its ring (copy-engine-like, few SMs) is at least as fast as our SM loads. Decode messages
// (<= 256 rows x hidden 4096 x 4 B = 4 MB at the Qwen3-8B shape) stay on our kernels. DSG_TP_NCCL_MIN_BYTES overrides
// (measurement switch).
constexpr size_t kNcclMinBytes = 8u << 20;
constexpr int kGatherColsPerItem = 4096;
// Ranks sharing one device (the single-GPU proof of the path): at most this many blocks per collective, so a peer's
// kernels (thread-block clusters of up to 8 in decode attention) still find free SMs in every GPC while this rank's
// blocks wait for them.
constexpr int kSharedDeviceMaxBlocks = 8;

/** What every comm kernel gets by value (fixed for the life of the comm, so captured graphs replay it). */
struct CommView {
  char* base[kMaxTpRanks];     // every rank's exchange buffer, as this rank addresses it
  uint32_t* epochs;            // this rank's device counters: [kCommMaxBlocks] barrier epochs
  uint32_t* calls;             // [kCommMaxBlocks] staging calls (parity picks the staging buffer)
  volatile int* abortRequest;  // the group's (mapped host memory): non-zero makes every wait give up
  volatile int* gaveUp;        // this rank's (mapped host memory): why one of its waits gave up
  unsigned long long timeoutNs;
  int rank, size;
  int64_t chunkFloats;         // per staging buffer; region per block = chunkFloats / kCommMaxBlocks
};

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ uint32_t loadAcquireSys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void storeReleaseSys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint32_t* flagAt(char* base, int block, int src) {
  return reinterpret_cast<uint32_t*>(base) + block * kMaxTpRanks + src;
}
__device__ __forceinline__ float* stagingAt(const CommView& v, int rank, uint32_t parity) {
  return reinterpret_cast<float*>(v.base[rank] + kFlagsBytes) + (int64_t)parity * v.chunkFloats +
         (int64_t)blockIdx.x * (v.chunkFloats / kCommMaxBlocks);
}

/** Spins until *flag reaches epoch (wrap-safe). Gives up when the group's abort request is set (recording it as this
 *  rank's reason) or after the timeout (reason 1 + rank * kMaxTpRanks + the peer waited for, also posted as the group's
 *  request so the peers stop waiting too). Host memory is polled only every 256 spins. */
__device__ bool waitFlag(const uint32_t* flag, uint32_t epoch, const CommView& v, int peer) {
  if ((int32_t)(loadAcquireSys(flag) - epoch) >= 0) return true;
  const unsigned long long start = globalTimerNs();
  for (uint32_t spins = 1;; ++spins) {
    if ((int32_t)(loadAcquireSys(flag) - epoch) >= 0) return true;
    if ((spins & 255) == 0) {
      const int request = *v.abortRequest;
      if (request != 0) {
        *v.gaveUp = request;
        __threadfence_system();
        return false;
      }
      if (globalTimerNs() - start > v.timeoutNs) {
        const int code = 1 + v.rank * kMaxTpRanks + peer;
        *v.gaveUp = code;
        *v.abortRequest = code;
        __threadfence_system();
        return false;
      }
    }
  }
}

/** Block b of every rank meets block b of every other: what this block wrote before is visible to the peers' block b
 *  after it (and everything their earlier kernels wrote to this rank's view). False when a wait gave up. */
__device__ bool blockBarrier(const CommView& v, uint32_t epoch) {
  __syncthreads();
  bool ok = true;
  if (threadIdx.x < v.size) {
    const int q = threadIdx.x;
    __threadfence_system();
    storeReleaseSys(flagAt(v.base[q], blockIdx.x, v.rank), epoch);
    ok = waitFlag(flagAt(v.base[v.rank], blockIdx.x, q), epoch, v, q);
  }
  return __syncthreads_and(ok) != 0;
}

/** Thread 0 takes `barriers` epochs and one staging call from this block's counters; every thread gets them. */
__device__ void takeCounters(const CommView& v, int barriers, uint32_t* epoch, uint32_t* call) {
  __shared__ uint32_t sEpoch, sCall;
  if (threadIdx.x == 0) {
    sEpoch = v.epochs[blockIdx.x];
    sCall = v.calls[blockIdx.x];
    v.epochs[blockIdx.x] = sEpoch + barriers;
    v.calls[blockIdx.x] = sCall + 1;
  }
  __syncthreads();
  *epoch = sEpoch;
  *call = sCall;
}

/** stage[i - lo] = in[i], in[i] = 0 for i in [lo, hi); lo a multiple of 4. */
__device__ void copyInAndZero(float* in, float* stage, int64_t lo, int64_t hi) {
  const int64_t n = hi - lo, n4 = n / 4;
  float4* in4 = reinterpret_cast<float4*>(in + lo);
  float4* st4 = reinterpret_cast<float4*>(stage);
  for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
    st4[i] = in4[i];
    in4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int64_t i = n4 * 4 + threadIdx.x; i < n; i += blockDim.x) {
    stage[i] = in[lo + i];
    in[lo + i] = 0.f;
  }
}

/** Sums [a, b) (offsets into the block's staging region, a a multiple of 4) over ranks in rank order; writes the sum
 *  to dst[i] (with dst's own offset) as Store/Add. */
/** Sum over ranks, in rank order, of the staged float4 at float offset `at` of the block's region: every rank's load
 *  is issued before the first add (peer loads have long latency). */
__device__ __forceinline__ float4 sumRanks4(const CommView& v, uint32_t parity, int64_t at) {
  float4 x[kMaxTpRanks];
#pragma unroll
  for (int r = 0; r < kMaxTpRanks; ++r)
    if (r < v.size) x[r] = *reinterpret_cast<const float4*>(stagingAt(v, r, parity) + at);
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int r = 0; r < kMaxTpRanks; ++r)
    if (r < v.size) s.x += x[r].x, s.y += x[r].y, s.z += x[r].z, s.w += x[r].w;
  return s;
}

template <ReduceOut kOut>
__device__ void sumRanks(const CommView& v, uint32_t parity, int64_t a, int64_t b, float* dst) {
  const int64_t n4 = (b - a) / 4;
  for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
    float4 s = sumRanks4(v, parity, a + 4 * i);
    float4* d = reinterpret_cast<float4*>(dst + a) + i;
    if (kOut == ReduceOut::Add) {
      const float4 o = *d;
      s.x += o.x, s.y += o.y, s.z += o.z, s.w += o.w;
    }
    *d = s;
  }
  for (int64_t i = a + n4 * 4 + threadIdx.x; i < b; i += blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < v.size; ++r) s += stagingAt(v, r, parity)[i];
    dst[i] = kOut == ReduceOut::Add ? dst[i] + s : s;
  }
}

/** dst[i] (op)= src[i] for i in [a, b); a a multiple of 4, both 16-byte aligned at 0. */
template <ReduceOut kOut>
__device__ void copyOut(const float* src, int64_t a, int64_t b, float* dst) {
  const int64_t n4 = (b - a) / 4;
  for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
    float4 s = reinterpret_cast<const float4*>(src + a)[i];
    float4* d = reinterpret_cast<float4*>(dst + a) + i;
    if (kOut == ReduceOut::Add) {
      const float4 o = *d;
      s.x += o.x, s.y += o.y, s.z += o.z, s.w += o.w;
    }
    *d = s;
  }
  for (int64_t i = a + n4 * 4 + threadIdx.x; i < b; i += blockDim.x)
    dst[i] = kOut == ReduceOut::Add ? dst[i] + src[i] : src[i];
}

/**
 * One-shot all-reduce: block b stages its slice [b * per, ...) of `in` (zeroing it), meets block b of every rank, then
 * sums every rank's staged slice in rank order into out. grid <= kCommMaxBlocks, per <= the block's staging region.
 */
template <ReduceOut kOut>
__global__ void __launch_bounds__(kThreads)
    oneShotKernel(const __grid_constant__ CommView v, float* in, float* out, int64_t n, int64_t per) {
  waitPreviousGrid();
  uint32_t epoch, call;
  takeCounters(v, 1, &epoch, &call);
  const int64_t lo = imin(n, (int64_t)blockIdx.x * per), hi = imin(n, lo + per);
  const uint32_t parity = call & 1;
  copyInAndZero(in, stagingAt(v, v.rank, parity), lo, hi);
  if (!blockBarrier(v, epoch + 1)) return;
  // Nothing of this rank waits for a peer any more: the next kernel may start (it waits for this one to complete
  // before it reads anything, griddepcontrol.wait).
  allowNextGrid();
  // Offsets relative to the block's region: sumRanks reads region[0, hi - lo), writes out + lo.
  sumRanks<kOut>(v, parity, 0, hi - lo, out + lo);
}

/**
 * Two-shot all-reduce: block b stages its slice as in one-shot; rank r sums its part r of the slice (rank order) into
 * its own staging region; a second barrier; every rank copies each owner's sums into out.
 */
template <ReduceOut kOut>
__global__ void __launch_bounds__(kThreads)
    twoShotKernel(const __grid_constant__ CommView v, float* in, float* out, int64_t n, int64_t per) {
  waitPreviousGrid();
  uint32_t epoch, call;
  takeCounters(v, 2, &epoch, &call);
  const int64_t lo = imin(n, (int64_t)blockIdx.x * per), hi = imin(n, lo + per);
  const uint32_t parity = call & 1;
  float* mine = stagingAt(v, v.rank, parity);
  copyInAndZero(in, mine, lo, hi);
  if (!blockBarrier(v, epoch + 1)) return;
  const int64_t len = hi - lo;
  const int64_t part = ((len + 4 * v.size - 1) / (4 * v.size)) * 4;  // multiple of 4: parts start 16-byte aligned
  const int64_t a = imin(len, v.rank * part), b = imin(len, a + part);
  // The owner's sums over its part, in place in its own staging (peers read this part of it only after barrier 2).
  const int64_t n4 = (b - a) / 4;
  for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) reinterpret_cast<float4*>(mine + a)[i] = sumRanks4(v, parity, a + 4 * i);
  for (int64_t i = a + n4 * 4 + threadIdx.x; i < b; i += blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < v.size; ++r) s += stagingAt(v, r, parity)[i];
    mine[i] = s;
  }
  if (!blockBarrier(v, epoch + 2)) return;
  allowNextGrid();
  for (int r = 0; r < v.size; ++r) {
    const int64_t ra = imin(len, r * part), rb = imin(len, ra + part);
    copyOut<kOut>(stagingAt(v, r, parity), ra, rb, out + lo);
  }
}

struct GatherView {
  int vocabStart[kMaxTpRanks], vocabSize[kMaxTpRanks];
  int vocabTotal;
  int64_t gatherOffset;  // bytes from a buffer's base to its gather source
};

/**
 * out[row, vocabStart_r + c] = gather source of rank r [row, c], after one barrier (every rank's LM head is done).
 * Work items (rank, row, 4096-column chunk) spread over the blocks.
 */
__global__ void __launch_bounds__(kThreads)
    gatherVocabKernel(const __grid_constant__ CommView v, const __grid_constant__ GatherView g, int rows, float* out) {
  waitPreviousGrid();
  uint32_t epoch, call;
  takeCounters(v, 1, &epoch, &call);
  if (!blockBarrier(v, epoch + 1)) return;
  allowNextGrid();
  int maxVs = 0;
  for (int r = 0; r < v.size; ++r) maxVs = max(maxVs, g.vocabSize[r]);
  const int chunks = (maxVs + kGatherColsPerItem - 1) / kGatherColsPerItem;
  const int64_t items = (int64_t)v.size * rows * chunks;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int r = (int)(item % v.size);
    const int64_t t = item / v.size;
    const int row = (int)(t % rows), chunk = (int)(t / rows);
    const int vs = g.vocabSize[r];
    const int c0 = chunk * kGatherColsPerItem, c1 = min(vs, c0 + kGatherColsPerItem);
    const float* src = reinterpret_cast<const float*>(v.base[r] + g.gatherOffset) + (int64_t)row * vs;
    float* dst = out + (int64_t)row * g.vocabTotal + g.vocabStart[r];
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) dst[c] = src[c];
  }
}

/** out (op)= in, in = 0 (after an in-place NCCL all-reduce of in). */
template <ReduceOut kOut>
__global__ void addAndZeroKernel(float* in, float* out, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    out[i] = kOut == ReduceOut::Add ? out[i] + in[i] : in[i];
    in[i] = 0.f;
  }
}

#ifdef DSG_HAVE_NCCL
/** NCCL-only vocab gather: out[row, vocabStart_r + c] = recv[r][row * maxShard + c] for c < vocabSize_r. */
__global__ void placeShardsKernel(const float* recv, const __grid_constant__ GatherView g, int size, int rows, int maxShard,
                                  int64_t rankStride, float* out) {
  const int64_t total = (int64_t)size * rows * maxShard;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % maxShard);
    const int64_t t = i / maxShard;
    const int row = (int)(t % rows), r = (int)(t / rows);
    if (c < g.vocabSize[r]) out[(int64_t)row * g.vocabTotal + g.vocabStart[r] + c] = recv[r * rankStride + (int64_t)row * maxShard + c];
  }
}
#endif

/** This machine's boot id (processes with the same one share a kernel: their pids and bus ids are comparable). */
std::string machineId() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  if (!id.empty()) return id;
  char host[40] = {0};
  gethostname(host, sizeof host - 1);
  return host;
}

/** What ranks swap at start-up (TpGroup::allGather). */
struct PeerRecord {
  char machine[40];              // the boot id: pids and bus ids compare only on one machine
  int32_t pid, device;
  uint64_t base;                 // device pointer (valid in the same process)
  cudaIpcMemHandle_t ipc;        // for a peer in another process
  int32_t hasIpc;
  int32_t vocabStart, vocabSize;
  char busId[32];
};

template <class T>
T recordOf(const std::vector<uint8_t>& bytes) {
  T r;
  std::memcpy(&r, bytes.data(), sizeof(T));
  return r;
}

CommView makeView(const std::vector<void*>& peers, uint32_t* counters, int* abortRequest, int* gaveUp, const TpCommOptions& o) {
  CommView v{};
  for (size_t q = 0; q < peers.size(); ++q) v.base[q] = static_cast<char*>(peers[q]);
  v.epochs = counters;
  v.calls = counters + kCommMaxBlocks;
  v.abortRequest = abortRequest;
  v.gaveUp = gaveUp;
  v.timeoutNs = (unsigned long long)(o.timeoutSec * 1e9);
  v.rank = o.rank;
  v.size = o.size;
  v.chunkFloats = (int64_t)o.chunkFloats;
  return v;
}

EngineError deviceError(const std::string& message) { return EngineError("LLM_ERR_DEVICE", message); }

}  // namespace

/** A word of pinned, mapped, portable host memory (its host pointer is its device pointer under UVA), zeroed. */
int* allocateHostWord(const std::string& what) {
  int* word = nullptr;
  const cudaError_t e = cudaHostAlloc(reinterpret_cast<void**>(&word), sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable);
  if (e != cudaSuccess) throw deviceError("cannot allocate " + what + ": " + cudaGetErrorString(e));
  *const_cast<volatile int*>(word) = 0;
  return word;
}

/** The group's abort request, shared by its ranks in this process. */
struct TpComm::Shared {
  int* word = nullptr;
  // NCCL-only communicators of this process's ranks of the group: the abort ends their pending kernels (no device
  // wait of ours bounds them). Aborted ones are null here and not destroyed again by their rank.
  std::mutex ncclMutex;
  std::vector<void**> ncclComms;
  explicit Shared(const std::string& group) : word(allocateHostWord("the abort word of tensor-parallel group " + group)) {}
  ~Shared() { cudaFreeHost(word); }
  void post(int code) {
    volatile int* w = word;
    if (*w == 0) *w = code;
#ifdef DSG_HAVE_NCCL
    // PyTorch's watchdog does the same from its own thread: ncclCommAbort is the call meant to end a hung collective.
    std::lock_guard<std::mutex> lock(ncclMutex);
    for (void** comm : ncclComms) {
      if (*comm) ncclCommAbort(static_cast<ncclComm_t>(*comm));
      *comm = nullptr;
    }
    ncclComms.clear();
#endif
  }
  /** The live group's word, created when `create`; null when none is live and not `create`. */
  static std::shared_ptr<Shared> of(const std::string& group, bool create) {
    static std::mutex mutex;
    static std::map<std::string, std::weak_ptr<Shared>> live;
    std::lock_guard<std::mutex> lock(mutex);
    std::shared_ptr<Shared> s = live[group].lock();
    if (!s && create) {
      s = std::make_shared<Shared>(group);
      live[group] = s;
    }
    for (auto it = live.begin(); it != live.end();) it = it->second.expired() ? live.erase(it) : std::next(it);
    return s;
  }
};

TpComm::TpComm(TpGroup& group, const TpCommOptions& o) : opt_(o) {
  const std::string who = "tp rank " + std::to_string(o.rank) + " (device " + std::to_string(o.deviceId) + ")";
  if (o.size < 2 || o.size > kMaxTpRanks)
    throw EngineError("LLM_ERR_CONFIG", "tp size " + std::to_string(o.size) + ": the CUDA backend takes 2.." + std::to_string(kMaxTpRanks) + " ranks");
  DSG_CUDA(cudaSetDevice(o.deviceId));
  // Staging regions of 4-float multiples per block.
  opt_.chunkFloats = std::max<size_t>(kCommMaxBlocks * 4, (o.chunkFloats + kCommMaxBlocks * 4 - 1) / (kCommMaxBlocks * 4) * (kCommMaxBlocks * 4));
  const size_t gatherOffset = kFlagsBytes + 2 * opt_.chunkFloats * sizeof(float);
  const size_t bytes = gatherOffset + std::max<size_t>(o.gatherFloats, 1) * sizeof(float);
  const cudaError_t e = cudaMalloc(&buffer_, bytes);
  if (e != cudaSuccess)
    throw EngineError("LLM_ERR_OUT_OF_MEMORY", who + ": cannot allocate the " + std::to_string(bytes) +
                                                   "-byte all-reduce buffer: " + cudaGetErrorString(e));
  try {
    connect(group, who, gatherOffset);
  } catch (...) {
    release();
    throw;
  }
}

void TpComm::connect(TpGroup& group, const std::string& who, size_t gatherOffset) {
  const TpCommOptions& o = opt_;
  DSG_CUDA(cudaMalloc(&counters_, 2 * kCommMaxBlocks * sizeof(uint32_t)));
  DSG_CUDA(cudaMemset(buffer_, 0, kFlagsBytes));
  DSG_CUDA(cudaMemset(counters_, 0, 2 * kCommMaxBlocks * sizeof(uint32_t)));
  gatherSrc_ = reinterpret_cast<float*>(static_cast<char*>(buffer_) + gatherOffset);
  shared_ = Shared::of(o.group, true);
  gaveUp_ = allocateHostWord("the all-reduce status word of " + who);

  PeerRecord mine{};
  std::strncpy(mine.machine, machineId().c_str(), sizeof mine.machine - 1);
  mine.pid = (int32_t)getpid();
  mine.device = o.deviceId;
  mine.base = reinterpret_cast<uint64_t>(buffer_);
  mine.hasIpc = cudaIpcGetMemHandle(&mine.ipc, buffer_) == cudaSuccess ? 1 : 0;
  if (!mine.hasIpc) cudaGetLastError();  // in-process peers do not need it
  mine.vocabStart = o.vocabStart;
  mine.vocabSize = o.vocabSize;
  DSG_CUDA(cudaDeviceGetPCIBusId(mine.busId, sizeof(mine.busId), o.deviceId));
  const std::vector<std::vector<uint8_t>> all = group.allGather(o.rank, &mine, sizeof mine);
  std::vector<PeerRecord> peers;
  for (const auto& b : all) peers.push_back(recordOf<PeerRecord>(b));

  peerBase_.assign(o.size, nullptr);
  peerIpc_.assign(o.size, false);
  bool distinctDevices = true;
  std::string unmappable;  // why this rank cannot address some peer's buffer (then the group goes NCCL-only)
  for (int q = 0; q < o.size; ++q) {
    const PeerRecord& p = peers[q];
    vocabStart_.push_back(p.vocabStart);
    vocabSize_.push_back(p.vocabSize);
    vocabTotal_ = std::max(vocabTotal_, p.vocabStart + p.vocabSize);
    for (int r = 0; r < q; ++r)
      distinctDevices = distinctDevices && !(std::strcmp(peers[r].machine, p.machine) == 0 && std::strcmp(peers[r].busId, p.busId) == 0);
    if (q == o.rank) {
      peerBase_[q] = buffer_;
      continue;
    }
    if (std::strcmp(p.machine, mine.machine) != 0) {
      unmappable = "rank " + std::to_string(q) + " is on another machine";
      continue;
    }
    if (p.pid != mine.pid) {  // another process on this machine: map its buffer through CUDA IPC
      const cudaError_t oe = p.hasIpc ? cudaIpcOpenMemHandle(&peerBase_[q], p.ipc, cudaIpcMemLazyEnablePeerAccess) : cudaErrorInvalidValue;
      if (oe != cudaSuccess) {
        cudaGetLastError();
        peerBase_[q] = nullptr;
        unmappable = "rank " + std::to_string(q) + "'s all-reduce buffer (another process, device " + p.busId + ") cannot be mapped over CUDA IPC" +
                     (p.hasIpc ? std::string(": ") + cudaGetErrorString(oe) : std::string(": it could not export it"));
        continue;
      }
      peerIpc_[q] = true;
      continue;
    }
    peerBase_[q] = reinterpret_cast<void*>(p.base);
    if (p.device == o.deviceId) continue;  // same device: the pointer is usable as is
    int can = 0;
    DSG_CUDA(cudaDeviceCanAccessPeer(&can, o.deviceId, p.device));
    if (!can)
      throw deviceError(who + " cannot access device " + std::to_string(p.device) + " of tp rank " + std::to_string(q) +
                        " (cudaDeviceCanAccessPeer: no): tensor parallelism needs peer access (NVLink or PCIe P2P) "
                        "between devices " + std::to_string(o.deviceId) + " and " + std::to_string(p.device));
    const cudaError_t pe = cudaDeviceEnablePeerAccess(p.device, 0);
    if (pe == cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError();  // another rank on this device enabled it
    } else if (pe != cudaSuccess) {
      throw deviceError(who + ": enabling peer access to device " + std::to_string(p.device) + " failed: " + cudaGetErrorString(pe));
    }
  }

  // Whether every rank maps every peer: a collective decision (one rank's failure sends all to NCCL).
  if (!o.customAllReduce && unmappable.empty()) unmappable = "--disable-custom-all-reduce";
  const int32_t mapped = unmappable.empty() ? 1 : 0;
  for (const auto& b : group.allGather(o.rank, &mapped, sizeof mapped)) ncclOnly_ = ncclOnly_ || recordOf<int32_t>(b) == 0;
  if (ncclOnly_) {
#ifndef DSG_HAVE_NCCL
    throw EngineError("LLM_ERR_CONFIG", who + ": the group's ranks cannot all map each other's memory (" +
                                            (unmappable.empty() ? std::string("another rank said so") : unmappable) +
                                            ") and this build has no NCCL to reach them: build with NCCL (nccl.h found at build time)");
#else
    if (!distinctDevices) throw EngineError("LLM_ERR_CONFIG", who + ": two ranks share a device and the ranks cannot map each other's memory; NCCL cannot use one device twice");
    for (size_t q = 0; q < peerBase_.size(); ++q) {
      if (peerIpc_[q]) cudaIpcCloseMemHandle(peerBase_[q]);
      peerIpc_[q] = false;
      if ((int)q != o.rank) peerBase_[q] = nullptr;
    }
#endif
  }

  ncclMinBytes_ = kNcclMinBytes;
  if (const char* env = std::getenv("DSG_TP_NCCL_MIN_BYTES")) ncclMinBytes_ = (size_t)std::strtoull(env, nullptr, 10);
#ifdef DSG_HAVE_NCCL
  if ((o.useNccl && distinctDevices) || ncclOnly_) {
    ncclUniqueId id{};
    if (o.rank == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) throw deviceError(who + ": ncclGetUniqueId failed: " + ncclGetErrorString(r));
    }
    const auto ids = group.allGather(o.rank, &id, sizeof id);
    id = recordOf<ncclUniqueId>(ids[0]);
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRank(&comm, o.size, id, o.rank);
    if (r != ncclSuccess) throw deviceError(who + ": ncclCommInitRank failed: " + ncclGetErrorString(r));
    nccl_ = comm;
    if (ncclOnly_) {
      std::lock_guard<std::mutex> lock(shared_->ncclMutex);
      shared_->ncclComms.push_back(&nccl_);
      // padded shards for ncclAllGather (equal counts): the widest shard, as many rows as this rank's source holds
      for (int w : vocabSize_) maxShard_ = std::max(maxShard_, w);
      maxRows_ = (int)(std::max<size_t>(o.gatherFloats, 1) / std::max(o.vocabSize, 1));
      const size_t shardFloats = (size_t)maxRows_ * maxShard_;
      DSG_CUDA(cudaMalloc(&ncclGatherSend_, std::max<size_t>(shardFloats, 1) * sizeof(float)));
      DSG_CUDA(cudaMalloc(&ncclGatherRecv_, std::max<size_t>(shardFloats * o.size, 1) * sizeof(float)));
    }
  }
#endif
  sharesDevice_ = !distinctDevices;
  maxBlocks_ = sharesDevice_ ? kSharedDeviceMaxBlocks : kCommMaxBlocks;
  // Flags and counters are zero on every rank before any rank's first kernel can signal.
  DSG_CUDA(cudaDeviceSynchronize());
  group.barrier(o.rank);
}

TpComm::~TpComm() { release(); }

void TpComm::release() {
  cudaSetDevice(opt_.deviceId);
#ifdef DSG_HAVE_NCCL
  // A group that gave up may have a collective that never completes: abort the communicator instead of waiting.
  if (shared_) {
    std::lock_guard<std::mutex> lock(shared_->ncclMutex);  // the group's abort may be ending this communicator now
    auto& comms = shared_->ncclComms;
    comms.erase(std::remove(comms.begin(), comms.end(), &nccl_), comms.end());
  }
  if (nccl_) {
    if (abortedBy() != 0 || *const_cast<volatile int*>(shared_->word) != 0) ncclCommAbort(static_cast<ncclComm_t>(nccl_));
    else ncclCommDestroy(static_cast<ncclComm_t>(nccl_));
    nccl_ = nullptr;
  }
#endif
  if (ncclGatherSend_) cudaFree(ncclGatherSend_);
  if (ncclGatherRecv_) cudaFree(ncclGatherRecv_);
  for (size_t q = 0; q < peerBase_.size(); ++q)
    if (peerIpc_[q]) cudaIpcCloseMemHandle(peerBase_[q]);
  if (counters_) cudaFree(counters_);
  if (buffer_) cudaFree(buffer_);
  if (gaveUp_) cudaFreeHost(gaveUp_);
}

bool TpComm::usesNccl() const { return nccl_ != nullptr; }

int TpComm::abortedBy() const { return *const_cast<volatile int*>(gaveUp_); }

void TpComm::abortGroup() { shared_->post(-1); }

void TpComm::abortGroupNamed(const std::string& group) {
  if (const std::shared_ptr<Shared> s = Shared::of(group, false)) s->post(-1);
}

void TpComm::allReduce(float* in, float* out, int64_t n, ReduceOut mode, cudaStream_t stream, ReduceAlgo algo) {
  if (n <= 0) return;
  if (((uintptr_t)in & 15) || ((uintptr_t)out & 15))
    throw EngineError("LLM_ERR_INTERNAL", "all-reduce buffers must be 16-byte aligned");
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  DSG_CUDA(cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  const size_t bytes = (size_t)n * sizeof(float);
  if (ncclOnly_) {  // no peer is mapped: NCCL for everything, in captures too
    if (!nccl_) throw EngineError("LLM_ERR_TP_ABORTED", "all-reduce: the group was aborted");
    ncclReduce(in, out, n, mode, stream);
    return;
  }
  if (algo == ReduceAlgo::Auto) {
    if (nccl_ && !capturing && bytes >= ncclMinBytes_) algo = ReduceAlgo::Nccl;
    else algo = opt_.size <= 2 || bytes <= kOneShotMaxBytes ? ReduceAlgo::OneShot : ReduceAlgo::TwoShot;
  }
  if (algo == ReduceAlgo::Nccl) {
    if (!nccl_) throw EngineError("LLM_ERR_INTERNAL", "all-reduce: NCCL is not in use in this group");
    if (capturing) throw EngineError("LLM_ERR_INTERNAL", "all-reduce: NCCL inside a stream capture");
    ncclReduce(in, out, n, mode, stream);
    return;
  }
  const int64_t chunk = (int64_t)opt_.chunkFloats / kCommMaxBlocks * maxBlocks_;  // what maxBlocks_ regions hold
  for (int64_t off = 0; off < n; off += chunk)
    launchReduce(in + off, out + off, std::min(chunk, n - off), mode, algo == ReduceAlgo::TwoShot, stream);
}

void TpComm::launchReduce(float* in, float* out, int64_t n, ReduceOut mode, bool twoShot, cudaStream_t stream) {
  const CommView v = makeView(peerBase_, counters_, shared_->word, gaveUp_, opt_);
  const int64_t region = (int64_t)opt_.chunkFloats / kCommMaxBlocks;
  // One float4 per thread and rank while the message is small (latency), all blocks once it is large (bandwidth);
  // never more per block than its staging region.
  const int64_t n4 = (n + 3) / 4;
  int blocks = (int)std::min<int64_t>(maxBlocks_, std::max<int64_t>((n4 + kThreads - 1) / kThreads, (n + region - 1) / region));
  blocks = std::max(blocks, 1);
  const int64_t per = ((n + blocks - 1) / blocks + 3) / 4 * 4;
  auto launch = [&](auto kernel) { launchKernel(kernel, dim3(blocks), dim3(kThreads), 0, stream, true, 0, v, in, out, n, per); };
  if (twoShot) {
    if (mode == ReduceOut::Add) launch(twoShotKernel<ReduceOut::Add>);
    else launch(twoShotKernel<ReduceOut::Store>);
  } else {
    if (mode == ReduceOut::Add) launch(oneShotKernel<ReduceOut::Add>);
    else launch(oneShotKernel<ReduceOut::Store>);
  }
}

void TpComm::ncclReduce(float* in, float* out, int64_t n, ReduceOut mode, cudaStream_t stream) {
#ifdef DSG_HAVE_NCCL
  const ncclResult_t r = ncclAllReduce(in, in, (size_t)n, ncclFloat32, ncclSum, static_cast<ncclComm_t>(nccl_), stream);
  if (r != ncclSuccess) throw deviceError(std::string("ncclAllReduce failed: ") + ncclGetErrorString(r));
  const int blocks = (int)std::min<int64_t>(1024, (n + 255) / 256);
  if (mode == ReduceOut::Add) addAndZeroKernel<ReduceOut::Add><<<blocks, 256, 0, stream>>>(in, out, n);
  else addAndZeroKernel<ReduceOut::Store><<<blocks, 256, 0, stream>>>(in, out, n);
  DSG_LAUNCHED("addAndZeroKernel");
#else
  (void)in, (void)out, (void)n, (void)mode, (void)stream;
  throw EngineError("LLM_ERR_INTERNAL", "all-reduce: built without NCCL");
#endif
}

void TpComm::allGatherVocab(int rows, float* out, cudaStream_t stream) {
  if (rows <= 0) return;
  if (ncclOnly_) return ncclGatherVocab(rows, out, stream);
  const CommView v = makeView(peerBase_, counters_, shared_->word, gaveUp_, opt_);
  GatherView g{};
  int maxVs = 0;
  for (int q = 0; q < opt_.size; ++q) {
    g.vocabStart[q] = vocabStart_[q];
    g.vocabSize[q] = vocabSize_[q];
    maxVs = std::max(maxVs, vocabSize_[q]);
  }
  g.vocabTotal = vocabTotal_;
  g.gatherOffset = (int64_t)(kFlagsBytes + 2 * opt_.chunkFloats * sizeof(float));
  const int64_t items = (int64_t)opt_.size * rows * ((maxVs + kGatherColsPerItem - 1) / kGatherColsPerItem);
  const int blocks = (int)std::max<int64_t>(1, std::min<int64_t>(maxBlocks_, items));
  launchKernel(gatherVocabKernel, dim3(blocks), dim3(kThreads), 0, stream, true, 0, v, g, rows, out);
}

void TpComm::ncclGatherVocab(int rows, float* out, cudaStream_t stream) {
#ifdef DSG_HAVE_NCCL
  if (!nccl_) throw EngineError("LLM_ERR_TP_ABORTED", "vocab gather: the group was aborted");
  if (rows > maxRows_)
    throw EngineError("LLM_ERR_INTERNAL", "vocab gather of " + std::to_string(rows) + " rows: the gather holds " + std::to_string(maxRows_));
  // this rank's [rows, vocabSize] source, padded to [rows, maxShard_] so every rank sends the same count
  DSG_CUDA(cudaMemcpy2DAsync(ncclGatherSend_, (size_t)maxShard_ * sizeof(float), gatherSrc_, (size_t)opt_.vocabSize * sizeof(float),
                             (size_t)opt_.vocabSize * sizeof(float), rows, cudaMemcpyDeviceToDevice, stream));
  const size_t count = (size_t)rows * maxShard_;
  const ncclResult_t r = ncclAllGather(ncclGatherSend_, ncclGatherRecv_, count, ncclFloat32, static_cast<ncclComm_t>(nccl_), stream);
  if (r != ncclSuccess) throw deviceError(std::string("ncclAllGather failed: ") + ncclGetErrorString(r));
  GatherView g{};
  for (int q = 0; q < opt_.size; ++q) {
    g.vocabStart[q] = vocabStart_[q];
    g.vocabSize[q] = vocabSize_[q];
  }
  g.vocabTotal = vocabTotal_;
  const int64_t total = (int64_t)opt_.size * rows * maxShard_;
  const int blocks = (int)std::min<int64_t>(1024, (total + 255) / 256);
  placeShardsKernel<<<blocks, 256, 0, stream>>>(ncclGatherRecv_, g, opt_.size, rows, maxShard_, (int64_t)count, out);
  DSG_LAUNCHED("placeShardsKernel");
#else
  (void)rows, (void)out, (void)stream;
  throw EngineError("LLM_ERR_INTERNAL", "vocab gather: built without NCCL");
#endif
}

}  // namespace dsg::cuda

namespace dsg {
void abortCudaTpGroup(const std::string& group) { cuda::TpComm::abortGroupNamed(group); }
}  // namespace dsg
