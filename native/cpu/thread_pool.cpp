#include "thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DSG_PAUSE() _mm_pause()
#else
#define DSG_PAUSE() ((void)0)
#endif

namespace dsg {

namespace {
// Short spins: a step's jobs come back to back, but on a busy 2-core machine a long spin only steals the core the
// other thread needs. After the spin a worker sleeps; the caller yields its time slice while it waits.
constexpr int kWorkerSpins = 2000;
constexpr int kCallerSpins = 500;
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
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kCallerSpins) DSG_PAUSE();
    else std::this_thread::yield();
  }
}

void ThreadPool::workerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kWorkerSpins) {
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
