// A small persistent pool for the CPU backend. parallelFor splits [0, n) into a few chunks per thread that the
// caller and the workers claim dynamically, so on a busy machine a worker that is not scheduled in time costs
// nothing: the caller (thread 0) runs the chunks itself and never waits for an absent thread. Workers spin
// briefly between jobs (a step issues many small jobs back to back), then sleep on a condition variable.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace dsg {

class ThreadPool {
 public:
  explicit ThreadPool(int numThreads);
  ~ThreadPool();
  int size() const { return numThreads_; }

  /**
   * Runs fn(begin, end, threadIndex) over disjoint chunks covering [0, n); returns when all are done. A thread
   * may run several chunks, one at a time, so per-thread scratch indexed by threadIndex is safe.
   */
  template <class F>
  void parallelFor(int64_t n, F&& fn) {
    if (n <= 0) return;
    if (numThreads_ <= 1 || n == 1) {
      fn((int64_t)0, n, 0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run([](void* ctx, int64_t b, int64_t e, int t) { (*static_cast<Fn*>(ctx))(b, e, t); }, &fn, n);
  }

 private:
  using Trampoline = void (*)(void*, int64_t, int64_t, int);
  void run(Trampoline tramp, void* ctx, int64_t n);
  void runChunks(int threadIndex);
  void workerLoop(int index);

  int numThreads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};  // bumped per job to wake workers
  std::atomic<bool> stop_{false};
  // The current job. `next_` packs job id (24 bits) | next chunk (20 bits) | chunk count (20 bits); a claim is a
  // CAS on it, so a worker holding a stale value can never claim a chunk of a finished job. The other fields are
  // written before `next_` is published and stay valid while any chunk of the job is unfinished.
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> done_{0};
  uint32_t jobId_ = 0;
  Trampoline tramp_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
};

}  // namespace dsg
