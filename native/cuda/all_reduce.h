// Collectives of one tensor-parallel group on CUDA devices (all_reduce.cu): the all-reduce of the row-parallel O and
// down outputs and of the vocab-parallel embedding, and the all-gather of the vocab-sharded logits.
//
// Each rank owns one device allocation, its exchange buffer, that every rank of the group can address:
//   [flags: kMaxBlocks x kMaxRanks uint32] [staging 0: chunkFloats f32] [staging 1: chunkFloats f32] [gather source]
// Ranks are threads of one process (TpGroup): at start-up they swap the buffer's device pointer (UVA) through
// TpGroup::allGather and enable peer access where the devices differ; two ranks on one device share the pointers
// directly. A peer in another process (pid differs) is mapped through its cudaIpcMemHandle instead: the exchange
// record carries both, so the multi-process form is the same code path with a different mapping step.
//
// Kernels (one-shot, two-shot, vocab gather), every one graph-capturable:
//  - the caller's f32 input is copied into this rank's staging buffer (and zeroed: producers may then accumulate
//    into it, e.g. the GEMV's and the fused decode GEMM's residual-add epilogues), a barrier, the sum;
//  - one-shot: every rank reads every peer's staging slice and adds them in rank order in f32, so the result is
//    bitwise identical on every rank; two-shot: rank r sums its 1/size of each block's slice (rank order) into its
//    own staging, a second barrier, every rank copies the owners' sums (again identical everywhere);
//  - the barrier: block b of rank r stores an epoch into flags[b][r] of every peer's buffer (release, system scope)
//    and waits until its own flags[b][q] reach that epoch for every q (acquire). Epochs live in a per-rank device
//    counter per block and advance on the device, so a replayed graph needs no host-supplied values; every rank
//    runs the same collectives in the same order with the same grids, so the counters agree;
//  - staging alternates between two buffers per block call (the device counter's parity): a rank can only reach
//    call k + 2 of a block after every peer arrived at call k + 1 of it, i.e. finished reading call k's buffer, so no
//    end barrier is needed;
//  - every wait is bounded: after timeoutSec it gives up, records why in this rank's status word and posts the same
//    code as the group's abort request; a wait that sees the request gives up at once and records it. Both words are
//    mapped pinned host memory (the request shared by the group's ranks in this process): the host reads its status
//    after each step (EngineError LLM_ERR_TP_ABORTED) and posts the request when a rank closes or fails, so no rank's
//    kernels wait out the timeout for a peer that is gone, and a rank whose collectives all completed sees no error.
// NCCL (built with DSG_HAVE_NCCL): all-reduces of at least ncclMinBytes outside stream capture go through ncclAllReduce
// when every rank has its own device (NCCL refuses one device twice in a communicator), then a kernel adds the sum into
// the output and zeroes the input. The decode graphs never contain NCCL, except in the NCCL-only form:
// NCCL-only (ranks on other machines, or in processes that cannot map each other's memory, e.g. containers without a
// shared IPC namespace): every rank tries to map every peer; when any rank cannot, all of them (a collective decision)
// leave the peer-mapped kernels and run every collective through NCCL, captured in the graphs too (NCCL is
// capture-safe): all-reduce as above, the vocab gather as ncclAllGather of equal-sized padded shards and a kernel that
// places the columns. A build without NCCL refuses such a group at start, naming why. There the device waits have no
// bound of their own: the group's abort (a rank failed or closed) calls ncclCommAbort, which ends pending NCCL kernels.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor_parallel.h"

namespace dsg::cuda {

constexpr int kMaxTpRanks = 8;
constexpr int kCommMaxBlocks = 64;

/** What the all-reduce does with the sum. */
enum class ReduceOut {
  Store,  // out = sum
  Add,    // out += sum (the residual add)
};

/** Which algorithm a message takes (the choice of TpComm::allReduce; forced in checks). */
enum class ReduceAlgo { Auto, OneShot, TwoShot, Nccl };

struct TpCommOptions {
  int rank = 0, size = 1, deviceId = 0;
  std::string group;              // names the group's shared abort word
  double timeoutSec = 300;        // a wait for a peer gives up after this long
  size_t chunkFloats = 0;         // staging capacity per buffer: larger messages go in several launches
  size_t gatherFloats = 0;        // this rank's gather source (rows x its vocab shard)
  int vocabStart = 0, vocabSize = 0;  // this rank's vocab shard, for allGatherVocab
  bool useNccl = true;            // when the build has NCCL and the devices allow it
  bool customAllReduce = true;    // false: NCCL for every collective (the NCCL-only form), as if peers were unmappable
};

/** The sums of one rank; created on every rank of the group in the same order (its constructor is collective). */
class TpComm {
 public:
  /** Collective over `group`: allocates, exchanges and maps the buffers, sets up NCCL where used. Throws
   *  LLM_ERR_DEVICE (e.g. peer access impossible between two devices, naming them) or LLM_ERR_OUT_OF_MEMORY. */
  TpComm(TpGroup& group, const TpCommOptions& options);
  ~TpComm();
  TpComm(const TpComm&) = delete;
  TpComm& operator=(const TpComm&) = delete;

  /**
   * Sum over ranks of in[0, n) f32 into out (Store or Add), asynchronously on `stream`; `in` is left all zero, and
   * must not overlap `out`. in and out 16-byte aligned. Every rank calls it with the same n and mode.
   */
  void allReduce(float* in, float* out, int64_t n, ReduceOut mode, cudaStream_t stream, ReduceAlgo algo = ReduceAlgo::Auto);
  /** This rank's [rows, vocabSize] f32 rows for allGatherVocab (written there by the LM head). */
  float* gatherSource() const { return gatherSrc_; }
  /** out [rows, vocabTotal] = every rank's gather source placed at its vocabStart columns. */
  void allGatherVocab(int rows, float* out, cudaStream_t stream);

  /** 0 while every wait of this rank's collectives completed; else why one gave up: -1 the group's abort request
   *  (a rank closed or failed), or 1 + r * kMaxTpRanks + q: rank r timed out waiting for rank q. Read after the stream
   *  has synchronised. */
  int abortedBy() const;
  /** Posts the group's abort request: every wait of the group's kernels that cannot complete gives up at once. */
  void abortGroup();
  /** abortGroup() for the live group of that name in this process, if any (for the addon's tpAbort: TpGroup::abort
   *  wakes the host waits, this the device waits). */
  static void abortGroupNamed(const std::string& group);
  bool usesNccl() const;
  /** Whether every collective goes through NCCL (peers that cannot be mapped: see the header). */
  bool ncclOnly() const { return ncclOnly_; }
  /** Whether two ranks of the group share a device (then every collective uses at most 8 blocks). */
  bool sharesDevice() const { return sharesDevice_; }
  /** Blocks one collective launches at most (fewer where ranks share a device). */
  int maxBlocks() const { return maxBlocks_; }
  /** Messages of at least this many bytes take NCCL (when used). */
  size_t ncclMinBytes() const { return ncclMinBytes_; }
  int vocabTotal() const { return vocabTotal_; }

 private:
  struct Shared;
  /** The constructor's collective part (after the buffer exists); release() undoes whatever it did on a throw. */
  void connect(TpGroup& group, const std::string& who, size_t gatherOffset);
  void release();
  void launchReduce(float* in, float* out, int64_t n, ReduceOut mode, bool twoShot, cudaStream_t stream);
  void ncclReduce(float* in, float* out, int64_t n, ReduceOut mode, cudaStream_t stream);
  void ncclGatherVocab(int rows, float* out, cudaStream_t stream);

  TpCommOptions opt_;
  void* buffer_ = nullptr;          // this rank's exchange buffer
  uint32_t* counters_ = nullptr;    // device: [kCommMaxBlocks] epoch, [kCommMaxBlocks] calls
  float* gatherSrc_ = nullptr;
  std::vector<void*> peerBase_;     // every rank's exchange buffer as this rank addresses it
  std::vector<bool> peerIpc_;       // mapped through cudaIpcOpenMemHandle (close on destruction)
  std::vector<int> vocabStart_, vocabSize_;
  int vocabTotal_ = 0;
  std::shared_ptr<Shared> shared_;  // the group's abort request
  int* gaveUp_ = nullptr;           // this rank's status (abortedBy)
  size_t ncclMinBytes_ = 0;
  void* nccl_ = nullptr;            // ncclComm_t when used
  bool ncclOnly_ = false;
  float* ncclGatherSend_ = nullptr; // NCCL-only: this rank's shard padded to maxShard_ columns, maxRows_ rows
  float* ncclGatherRecv_ = nullptr; // every rank's padded shard, rank after rank
  int maxShard_ = 0, maxRows_ = 0;
  bool sharesDevice_ = false;
  int maxBlocks_ = kCommMaxBlocks;
};

}  // namespace dsg::cuda
