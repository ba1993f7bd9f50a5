// Tensor parallelism: which slice of the model one rank holds (ShardLayout) and the process-wide rendezvous of the
// ranks of one group (TpGroup). Every rank of a group is a worker_thread of this process that owns one backend; the
// ranks find each other by the group's name, which the topology (src/topology) makes unique per start of the group.
// A group whose ranks live in several processes (multi-node, CPU backend) sets distInitAddr instead: its ranks meet
// at that TCP address and reduce over sockets (native/src/tp_tcp.cpp), with the same results bit for bit.
//
// Sharding (Megatron style), for a group of `size` ranks, rank r:
//  - q heads [r * H/size, (r+1) * H/size); KV heads: [r * KV/size, ...) when KV >= size (KV % size == 0), else one
//    KV head, r * KV / size, replicated on size/KV ranks (size % KV == 0). H % size == 0 always.
//  - QKV and gate/up are column-parallel (rows of the HF [out, in] weights), O and down row-parallel (columns);
//    the outputs of O and down are partial sums: all-reduce them before the residual add.
//  - FFN columns [r * I/size, (r+1) * I/size), I % size == 0.
//  - embedding and LM head are vocab-parallel: rows [vocabStart, vocabStart + vocabSize) with
//    vocabStart = r * ceil(V/size) (the last rank holds the rest, possibly fewer). A token outside the shard
//    embeds to zeros before the all-reduce; logits are gathered to the full vocabulary on every rank and every
//    rank samples the same token from them (same seed, same Philox stream), so rank 0's answer stands for all.
//  - norms (and q/k norms) are replicated; QKV biases follow their rows.
// The addon shards the weights once at load, in the file dtype (native/src/shard.cpp: row slices stay views into the
// memory-mapped file, the column slices of O and down are host copies), and passes backends the global ModelDesc,
// weights with local shapes, and BackendOptions.tp with the layout filled in. A backend with tp.size > 1 joins the
// group itself (TpGroup::join) and keeps the handle for its lifetime.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsg {

struct ModelDesc;

/** The slice one rank holds; size 1 is the whole model. */
struct ShardLayout {
  int rank = 0, size = 1;
  int headStart = 0, numHeads = 0;          // query heads
  int kvHeadStart = 0, numKvHeads = 0;      // KV heads (replicated when the model has fewer than size)
  int interStart = 0, intermediateSize = 0; // FFN columns
  int vocabStart = 0, vocabSize = 0;        // embedding / LM head rows
};

/** The layout of rank `rank` of `size`; throws EngineError LLM_ERR_CONFIG naming the numbers when size does not
 *  divide the heads / FFN (e.g. "tp size 3 does not divide the 16 attention heads"). */
ShardLayout shardLayout(const ModelDesc& desc, int rank, int size);

/** BackendOptions.tp: the rank's place in its group. */
struct TensorParallel {
  int rank = 0, size = 1;
  std::string group;          // rendezvous name (unique per group start); empty when size == 1
  double timeoutSec = 300;    // join and every collective give up after this long: LLM_ERR_TP_ABORTED
  // HOST:PORT when the group spans processes (multi-node): its ranks reduce over TCP, rank 0 listening there
  // (native/src/tp_tcp.cpp); empty: every rank is a thread of this process and the group reduces in memory.
  std::string distInitAddr;
  bool customAllReduce = true;  // CUDA: false = every collective through NCCL (--disable-custom-all-reduce)
  ShardLayout shard;          // filled by the addon from the desc
};

/**
 * The ranks of one group inside this process. join() blocks until all `size` ranks joined (or the timeout / an
 * abort). Every collective is entered by every rank in the same order; each blocks until all ranks arrived. A rank
 * that fails or leaves makes the group unusable: abort() (also called by the addon's tpAbort(group, reason), from any
 * thread) wakes every rank waiting in it, now and later, with EngineError LLM_ERR_TP_ABORTED carrying the reason.
 * Never a hang: every wait is bounded by timeoutSec (a rank that waits it out aborts the group, naming the ranks it
 * waited for). Destroying the handle join() returned leaves the group: the others' next wait fails at once, and the
 * last rank out removes the name, so a group restarted under a new name never meets stale state.
 */
class TpGroup {
 public:
  static std::shared_ptr<TpGroup> join(const TensorParallel& tp);
  /** Aborts the group of that name: every rank waiting in it fails now, and so does any rank that joins that name
   *  later (also when no rank has joined yet), so a rank still loading never waits out the timeout alone. */
  static void abort(const std::string& group, const std::string& reason);

  virtual ~TpGroup() = default;
  virtual int size() const = 0;
  virtual void barrier(int rank) = 0;
  /** Every rank contributes `bytes` bytes (the same count on every rank); each gets all contributions in rank order.
   *  For setup: device pointers, IPC handles, the NCCL unique id. */
  virtual std::vector<std::vector<uint8_t>> allGather(int rank, const void* data, size_t bytes) = 0;
  /** Sum over ranks of n floats, in place, through this process's memory; the result is bitwise equal on every rank
   *  (added in rank order). */
  virtual void allReduceSum(int rank, float* data, size_t n) = 0;
  /** Rows of a vocab-sharded tensor gathered: rank r contributes rows x its layout's vocabSize floats (row-major),
   *  out receives rows x vocabTotal with rank r's columns at its vocabStart. Same result on every rank. */
  virtual void allGatherVocab(int rank, const float* mine, int64_t rows, float* out) = 0;
};

}  // namespace dsg
