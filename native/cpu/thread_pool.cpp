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
// other thread needs. After the spin a worker sleeps; the caller yields its time slice while chunks finish.
constexpr int kWorkerSpins = 2000;
constexpr int kCallerSpins = 500;
constexpr int kChunksPerThread = 4;
constexpr uint64_t kField = (1u << 20) - 1;

uint64_t pack(uint64_t job, uint64_t next, uint64_t count) { return (job << 40) | (next << 20) | count; }
}  // namespace

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

void ThreadPool::runChunks(int threadIndex) {
  uint64_t v = next_.load(std::memory_order_acquire);
  for (;;) {
    const uint64_t count = v & kField, chunk = (v >> 20) & kField;
    if (chunk >= count) return;
    if (!next_.compare_exchange_weak(v, v + (1u << 20), std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    const int64_t b = n_ * (int64_t)chunk / (int64_t)count, e = n_ * (int64_t)(chunk + 1) / (int64_t)count;
    tramp_(ctx_, b, e, threadIndex);
    done_.fetch_add(1, std::memory_order_acq_rel);
    v = next_.load(std::memory_order_acquire);
  }
}

void ThreadPool::run(Trampoline tramp, void* ctx, int64_t n) {
  const int64_t count = std::min<int64_t>({n, (int64_t)numThreads_ * kChunksPerThread, (int64_t)kField});
  tramp_ = tramp;
  ctx_ = ctx;
  n_ = n;
  done_.store(0, std::memory_order_relaxed);
  jobId_ = (jobId_ + 1) & 0xffffff;
  next_.store(pack(jobId_, 0, (uint64_t)count), std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  runChunks(0);
  for (int spins = 0; done_.load(std::memory_order_acquire) != count; ++spins) {
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
    runChunks(index);
  }
}

}  // namespace dsg
