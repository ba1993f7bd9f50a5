// Tensor parallelism inside one process (tensor_parallel.h): the shard layout of a rank, and TpGroup over this
// address space. Every rank of a group is a thread of this process, so a collective is: each rank publishes a
// pointer, a barrier, each rank reads its peers' memory directly, a barrier. Waits spin briefly (a step issues
// collectives back to back) and then sleep on a condition variable, so ranks on a busy machine do not burn the
// cores their peers need; every wait ends on an abort or at the group's timeout.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "backend.h"
#include "tp_tcp.h"

namespace dsg {

ShardLayout shardLayout(const ModelDesc& d, int rank, int size) {
  const std::string tp = "tp size " + std::to_string(size);
  if (size < 1) throw EngineError("LLM_ERR_CONFIG", tp + ": must be >= 1");
  if (rank < 0 || rank >= size)
    throw EngineError("LLM_ERR_CONFIG", "tp rank " + std::to_string(rank) + " out of range [0, " + std::to_string(size) + ")");
  if (d.numHeads % size != 0)
    throw EngineError("LLM_ERR_CONFIG", tp + " does not divide the " + std::to_string(d.numHeads) + " attention heads");
  if (d.numKvHeads >= size ? d.numKvHeads % size != 0 : size % d.numKvHeads != 0)
    throw EngineError("LLM_ERR_CONFIG", tp + (d.numKvHeads >= size ? " does not divide the " : " is not a multiple of the ") +
                                            std::to_string(d.numKvHeads) + " KV heads");
  if (d.intermediateSize % size != 0)
    throw EngineError("LLM_ERR_CONFIG", tp + " does not divide the FFN size (intermediateSize) " + std::to_string(d.intermediateSize));
  const int vocabChunk = (d.vocabSize + size - 1) / size;
  if ((int64_t)vocabChunk * (size - 1) >= d.vocabSize)
    throw EngineError("LLM_ERR_CONFIG", tp + " leaves the last rank no rows of the " + std::to_string(d.vocabSize) + "-token vocabulary");
  ShardLayout s;
  s.rank = rank;
  s.size = size;
  s.numHeads = d.numHeads / size;
  s.headStart = rank * s.numHeads;
  if (d.numKvHeads >= size) {
    s.numKvHeads = d.numKvHeads / size;
    s.kvHeadStart = rank * s.numKvHeads;
  } else {
    s.numKvHeads = 1;  // replicated on size / numKvHeads ranks; this rank's query heads all use it
    s.kvHeadStart = (int)((int64_t)rank * d.numKvHeads / size);
  }
  s.intermediateSize = d.intermediateSize / size;
  s.interStart = rank * s.intermediateSize;
  s.vocabStart = rank * vocabChunk;
  s.vocabSize = std::min(vocabChunk, d.vocabSize - s.vocabStart);
  return s;
}

namespace {

using Clock = std::chrono::steady_clock;

/** Remembers that the group of that name was aborted: a rank joining it later fails at once. */
void recordAbort(const std::string& name, const std::string& reason);

/** The shared state of one group: arrival counts, the pointers each rank publishes for the collective in
 *  progress (written before a barrier, read by peers after it), and the abort flag. */
class LocalGroup {
 public:
  LocalGroup(std::string name, int size, double timeoutSec)
      : name_(std::move(name)), size_(size), timeoutSec_(timeoutSec), epochs_(size), layouts_(size), joined_(size, false),
        published_(size), partials_(size), partialPtrs_(size) {
    for (auto& e : epochs_) e.store(0);
  }

  const std::string& name() const { return name_; }
  int size() const { return size_; }

  /** Registers a rank (under the registry lock); false when that rank already joined. */
  bool enroll(const TensorParallel& tp) {
    if (joined_[tp.rank]) return false;
    joined_[tp.rank] = true;
    layouts_[tp.rank] = tp.shard;
    ++members_;
    return true;
  }
  /** Unregisters a rank (under the registry lock); returns how many remain. */
  int withdraw() { return --members_; }

  /** Marks the group unusable and wakes every waiter; the first reason stands. */
  void abort(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (aborted_.load()) return;
      reason_ = reason;
      aborted_.store(true);
    }
    wake_.notify_all();
  }

  /** Arrives at the rank's next barrier and waits until every rank did. `what` names the wait in messages. */
  void barrier(int rank, const char* what) {
    if (aborted_.load()) throwAborted();
    const uint64_t epoch = epochs_[rank].load(std::memory_order_relaxed) + 1;
    epochs_[rank].store(epoch);  // seq_cst: of two ranks arriving together, at least one sees the other
    if (allArrived(epoch)) {
      { std::lock_guard<std::mutex> lock(mutex_); }  // a waiter between its check and its sleep sees the epoch
      wake_.notify_all();
      return;
    }
    // Spin briefly: in the middle of a step peers usually arrive within microseconds.
    const Clock::time_point spinUntil = Clock::now() + std::chrono::microseconds(50);
    while (Clock::now() < spinUntil) {
      if (allArrived(epoch)) return;
      if (aborted_.load()) throwAborted();
      std::this_thread::yield();
    }
    const Clock::time_point deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeoutSec_));
    std::unique_lock<std::mutex> lock(mutex_);
    while (!allArrived(epoch)) {
      if (aborted_.load()) {
        lock.unlock();
        throwAborted();
      }
      if (wake_.wait_until(lock, deadline) == std::cv_status::timeout && !allArrived(epoch) && !aborted_.load()) {
        lock.unlock();
        char secs[32];
        std::snprintf(secs, sizeof(secs), "%g", timeoutSec_);
        const std::string reason = "rank " + std::to_string(rank) + " waited " + secs + " s in " + what + " for rank(s) " + missing(epoch);
        recordAbort(name_, reason);
        abort(reason);
        throwAborted();
      }
    }
  }

  std::vector<std::vector<uint8_t>> allGather(int rank, const void* data, size_t bytes) {
    published_[rank] = data;
    barrier(rank, "allGather");
    std::vector<std::vector<uint8_t>> out(size_);
    for (int r = 0; r < size_; ++r) {
      const uint8_t* p = static_cast<const uint8_t*>(published_[r]);
      out[r].assign(p, p + bytes);
    }
    barrier(rank, "allGather");  // peers' buffers stay valid until everyone copied them
    return out;
  }

  // Reduce-scatter then gather: rank r sums its slice of every rank's data (in rank order) into its own buffer, then
  // every rank copies every slice back. Each element is summed once, by its owner, so all ranks get the same bits.
  void allReduceSum(int rank, float* data, size_t n) {
    published_[rank] = data;
    barrier(rank, "allReduceSum");
    const size_t lo = n * rank / size_, hi = n * (rank + 1) / size_;
    std::vector<float>& mine = partials_[rank];
    if (mine.size() < hi - lo) mine.resize(hi - lo);
    std::memcpy(mine.data(), static_cast<const float*>(published_[0]) + lo, (hi - lo) * sizeof(float));
    for (int r = 1; r < size_; ++r) {
      const float* src = static_cast<const float*>(published_[r]);
      for (size_t i = lo; i < hi; ++i) mine[i - lo] += src[i];
    }
    partialPtrs_[rank] = mine.data();
    barrier(rank, "allReduceSum");
    // Every peer finished reading `data` before that barrier; a peer's slice stays valid until the next collective's
    // first barrier, which this rank reaches only after copying.
    for (int r = 0; r < size_; ++r) {
      const size_t a = n * r / size_, b = n * (r + 1) / size_;
      std::memcpy(data + a, partialPtrs_[r], (b - a) * sizeof(float));
    }
  }

  void allGatherVocab(int rank, const float* mine, int64_t rows, float* out) {
    int64_t total = 0;
    for (const ShardLayout& l : layouts_) total += l.vocabSize;
    published_[rank] = mine;
    barrier(rank, "allGatherVocab");
    for (int r = 0; r < size_; ++r) {
      const ShardLayout& l = layouts_[r];
      const float* src = static_cast<const float*>(published_[r]);
      for (int64_t row = 0; row < rows; ++row)
        std::memcpy(out + row * total + l.vocabStart, src + row * l.vocabSize, (size_t)l.vocabSize * sizeof(float));
    }
    barrier(rank, "allGatherVocab");
  }

 private:
  [[noreturn]] void throwAborted() {
    std::lock_guard<std::mutex> lock(mutex_);
    throw EngineError("LLM_ERR_TP_ABORTED", "tensor-parallel group " + name_ + " aborted: " + reason_);
  }
  bool allArrived(uint64_t epoch) const {
    for (const auto& e : epochs_)
      if (e.load() < epoch) return false;
    return true;
  }
  std::string missing(uint64_t epoch) const {
    std::string s;
    for (int r = 0; r < size_; ++r)
      if (epochs_[r].load() < epoch) s += (s.empty() ? "" : ", ") + std::to_string(r);
    return s;
  }

  const std::string name_;
  const int size_;
  const double timeoutSec_;
  std::vector<std::atomic<uint64_t>> epochs_;  // barriers each rank has arrived at (joining is the first)
  std::vector<ShardLayout> layouts_;           // written before the join barrier
  std::vector<bool> joined_;                   // registry lock
  int members_ = 0;                            // registry lock
  std::vector<const void*> published_;         // each rank's buffer in the collective in progress
  std::vector<std::vector<float>> partials_;   // allReduceSum: each rank's reduced slice, owned by that rank
  std::vector<const float*> partialPtrs_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<bool> aborted_{false};
  std::string reason_;  // mutex_
};

/** Live groups by name, and the names of aborted ones (a rank joining one of those fails at once). */
struct Registry {
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<LocalGroup>> live;
  std::map<std::string, std::string> aborted;  // name -> reason; names are unique per group start, so this stays small
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: ranks may still leave during process exit
  return *r;
}

void recordAbort(const std::string& name, const std::string& reason) {
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  reg.aborted.emplace(name, reason);
}

/** Leaves the group; the last rank out removes it from the registry. A collective the leaving rank will never
 *  enter must not wait for it, so the others' next wait fails at once. */
void leave(const std::shared_ptr<LocalGroup>& g, int rank) {
  Registry& reg = registry();
  bool last;
  {
    std::lock_guard<std::mutex> lock(reg.mutex);
    last = g->withdraw() == 0;
    if (last) {
      auto it = reg.live.find(g->name());
      if (it != reg.live.end() && it->second == g) reg.live.erase(it);
    }
  }
  if (!last) {
    const std::string reason = "rank " + std::to_string(rank) + " left the group";
    recordAbort(g->name(), reason);
    g->abort(reason);
  }
}

/** One rank's handle on its group; destroying it leaves the group. */
class Member final : public TpGroup {
 public:
  Member(std::shared_ptr<LocalGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}
  ~Member() override { leave(g_, rank_); }
  int size() const override { return g_->size(); }
  void barrier(int rank) override { g_->barrier(rank, "a barrier"); }
  std::vector<std::vector<uint8_t>> allGather(int rank, const void* data, size_t bytes) override { return g_->allGather(rank, data, bytes); }
  void allReduceSum(int rank, float* data, size_t n) override { g_->allReduceSum(rank, data, n); }
  void allGatherVocab(int rank, const float* mine, int64_t rows, float* out) override { g_->allGatherVocab(rank, mine, rows, out); }

 private:
  std::shared_ptr<LocalGroup> g_;
  int rank_;
};

}  // namespace

std::shared_ptr<TpGroup> TpGroup::join(const TensorParallel& tp) {
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size)
    throw EngineError("LLM_ERR_CONFIG", "tp rank " + std::to_string(tp.rank) + " out of range [0, " + std::to_string(tp.size) + ")");
  if (!(tp.timeoutSec > 0)) throw EngineError("LLM_ERR_CONFIG", "tp timeout must be > 0 s");
  std::shared_ptr<LocalGroup> g;
  {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    auto dead = reg.aborted.find(tp.group);
    if (dead != reg.aborted.end())
      throw EngineError("LLM_ERR_TP_ABORTED", "tensor-parallel group " + tp.group + " aborted: " + dead->second);
  }
  if (!tp.distInitAddr.empty()) return joinTcpGroup(tp);  // the group spans processes: its ranks meet over TCP
  {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    std::shared_ptr<LocalGroup>& slot = reg.live[tp.group];
    if (!slot) slot = std::make_shared<LocalGroup>(tp.group, tp.size, tp.timeoutSec);
    g = slot;
    if (g->size() != tp.size)
      throw EngineError("LLM_ERR_CONFIG", "tp group " + tp.group + " has size " + std::to_string(g->size()) + ", rank " +
                                              std::to_string(tp.rank) + " joined it with size " + std::to_string(tp.size));
    if (!g->enroll(tp))
      throw EngineError("LLM_ERR_CONFIG", "tp rank " + std::to_string(tp.rank) + " joined group " + tp.group + " twice");
  }
  try {
    g->barrier(tp.rank, "join");
  } catch (...) {
    leave(g, tp.rank);
    throw;
  }
  return std::make_shared<Member>(std::move(g), tp.rank);
}

void TpGroup::abort(const std::string& group, const std::string& reason) {
  std::shared_ptr<LocalGroup> g;
  {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    reg.aborted.emplace(group, reason);
    auto it = reg.live.find(group);
    if (it != reg.live.end()) g = it->second;
  }
  if (g) g->abort(reason);
  abortTcpGroup(group, reason);
}

}  // namespace dsg
