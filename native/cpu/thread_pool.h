// A small persistent pool for the CPU backend. parallelFor splits [0, n) into one contiguous range per thread
// (the caller is thread 0). Workers spin briefly between jobs (a step issues many small jobs back to back), then
// sleep on a condition variable, so an idle engine costs no CPU.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace dsg {

class ThreadPool {
 public:
  explicit ThreadPool(int numThreads);
  ~ThreadPool();
  int size() const { return numThreads_; }

  /** Runs fn(begin, end, threadIndex) over a static split of [0, n) on up to `maxThreads` threads. */
  template <class F>
  void parallelFor(int64_t n, F&& fn, int maxThreads = 1 << 30) {
    const int64_t nt = std::min<int64_t>(std::min<int64_t>(numThreads_, maxThreads), n);
    if (nt <= 1) {
      if (n > 0) fn((int64_t)0, n, 0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run(
        [](void* ctx, int64_t b, int64_t e, int t) { (*static_cast<Fn*>(ctx))(b, e, t); }, &fn, n, (int)nt);
  }

 private:
  using Trampoline = void (*)(void*, int64_t, int64_t, int);
  void run(Trampoline tramp, void* ctx, int64_t n, int nt);
  void workerLoop(int index);
  void runShare(int index);

  int numThreads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // The current job, published before generation_ is bumped.
  Trampoline tramp_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int nt_ = 0;
};

}  // namespace dsg
