#include "thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSG_PAUSE() _mm_pause()
#else
#define DSG_PAUSE() ((void)0)
#endif

namespace dsg {

namespace {
constexpr int kSpinIterations = 20000;
}

ThreadPool::ThreadPool(int numThreads) : numThreads_(numThreads < 1 ? 1 : numThreads) {
  for (int i = 1; i < numThreads_; ++i) workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::runShare(int index) {
  if (index >= nt_) return;
  const int64_t b = n_ * index / nt_, e = n_ * (index + 1) / nt_;
  if (b < e) tramp_(ctx_, b, e, index);
}

void ThreadPool::run(Trampoline tramp, void* ctx, int64_t n, int nt) {
  tramp_ = tramp;
  ctx_ = ctx;
  n_ = n;
  nt_ = nt;
  pending_.store(numThreads_ - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  runShare(0);
  while (pending_.load(std::memory_order_acquire) != 0) DSG_PAUSE();
}

void ThreadPool::workerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIterations) {
      DSG_PAUSE();
      ++spins;
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    runShare(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace dsg
