// Check of the tensor-parallel collectives (all_reduce.h) against a CPU reference, for groups of 2 and 4 ranks, one
// host thread per rank (as the engine's ranks are threads of one process), rank r on device r % (GPUs visible): on a
// single GPU every rank shares device 0 (which proves the buffer exchange, the flags and the graph path, not NVLink).
//  - all-reduce, one-shot and two-shot (and NCCL where the group uses it), Store and Add, at sizes from 1 to beyond
//    the staging capacity (several launches), odd sizes included: outputs poisoned first; our kernels must equal the
//    rank-order f32 sum bit for bit on every rank, NCCL within 1e-6 relative and equal on every rank; the input must
//    be left zero;
//  - the vocab all-gather of the logits (contract shard layout: ceil(V / size) rows per rank, the rest on the last),
//    poisoned output, exact;
//  - a wait that cannot complete (a rank that never calls) gives up after the group timeout and names the ranks;
//    abortGroup() from the host releases a waiting kernel at once;
//  - in-graph latency: 56 all-reduces of 1024 values (the Qwen3-0.6B hidden size at batch 1; the issue's 2 KB bf16
//    message, here f32) captured in one CUDA graph on every rank, replayed back to back: microseconds per all-reduce;
//  - an eager sweep, 64 KB to 64 MB, of one-shot, two-shot and NCCL (where used): where the NCCL threshold belongs.
// Build and run on the GPU machine (run_kernel_check.sh does it), from the repository root:
//   nvcc -std=c++17 -O3 -arch=sm_90a -I native/include -I native/cuda [-DDSG_HAVE_NCCL] \
//     native/cuda/tests/all_reduce_check.cu native/cuda/all_reduce.cu [-lnccl] -o archeck && ./archeck
// With one GPU, run it with CUDA_MODULE_LOADING=EAGER CUDA_DEVICE_MAX_CONNECTIONS=32: ranks sharing a device also
// share its context, where loading a kernel lazily may wait for a peer's kernel that waits for this rank, and their
// streams must not share a hardware queue behind such a kernel. Exits non-zero when a check fails.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "all_reduce.h"
#include "check_util.cuh"
#include "common.cuh"

using namespace dsg;
using namespace dsg::cuda;
using namespace check;

namespace {

/** TpGroup over host threads (the engine's own lives in native/src/tensor_parallel.cpp, outside this check's build). */
class ThreadGroup final : public TpGroup {
 public:
  ThreadGroup(int size, int vocab) : size_(size), vocab_(vocab), slots_(size) {}
  int size() const override { return size_; }
  void barrier(int) override {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else if (!cv_.wait_for(lock, std::chrono::seconds(120), [&] { return generation_ != gen; })) {
      throw std::runtime_error("host barrier: a rank did not arrive within 120 s");  // a failed peer: no hang
    }
  }
  std::vector<std::vector<uint8_t>> allGather(int rank, const void* data, size_t bytes) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slots_[rank].assign(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
    }
    barrier(rank);
    std::vector<std::vector<uint8_t>> all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      all = slots_;
    }
    barrier(rank);
    return all;
  }
  void allReduceSum(int rank, float* data, size_t n) override {
    const auto all = allGather(rank, data, n * sizeof(float));
    for (size_t i = 0; i < n; ++i) {
      float s = 0.f;
      for (const auto& b : all) s += reinterpret_cast<const float*>(b.data())[i];
      data[i] = s;
    }
  }
  void allGatherVocab(int rank, const float* mine, int64_t rows, float* out) override {
    const auto all = allGather(rank, mine, (size_t)rows * vocabRows(rank) * sizeof(float));
    for (int r = 0; r < size_; ++r)
      for (int64_t row = 0; row < rows; ++row)
        std::memcpy(out + row * vocab_ + vocabStart(r), all[r].data() + (size_t)row * vocabRows(r) * sizeof(float),
                    (size_t)vocabRows(r) * sizeof(float));
  }
  int vocabStart(int r) const { return r * ((vocab_ + size_ - 1) / size_); }
  int vocabRows(int r) const { return std::min((vocab_ + size_ - 1) / size_, vocab_ - vocabStart(r)); }

 private:
  int size_, vocab_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  std::vector<std::vector<uint8_t>> slots_;
};

int gpuCount() {
  int n = 0;
  DSG_CUDA(cudaGetDeviceCount(&n));
  return n;
}

/** Runs body(rank, comm, stream) on one thread per rank, each with its own TpComm; rethrows the first failure.
 *  Bodies allocate before a group barrier and free only after their last collective: with ranks on one device,
 *  cudaFree (which waits for the whole device) between collectives could wait for a peer's kernel that waits for
 *  this rank. */
void runRanks(int size, int vocab, int gatherRows, double timeoutSec, const std::string& name,
              const std::function<void(int, TpComm&, cudaStream_t, ThreadGroup&)>& body, size_t chunkFloats = 1 << 16,
              bool customAllReduce = true) {
  ThreadGroup group(size, vocab);
  const int gpus = gpuCount();
  std::vector<std::string> errors(size);
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        TpCommOptions o;
        o.rank = r;
        o.size = size;
        o.deviceId = r % gpus;
        o.group = name;
        o.timeoutSec = timeoutSec;
        o.chunkFloats = chunkFloats;  // default small: the larger messages take several launches
        o.gatherFloats = (size_t)gatherRows * group.vocabRows(r);
        o.vocabStart = group.vocabStart(r);
        o.vocabSize = group.vocabRows(r);
        o.customAllReduce = customAllReduce;
        DSG_CUDA(cudaSetDevice(o.deviceId));
        cudaStream_t stream;
        DSG_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        {
          TpComm comm(group, o);
          body(r, comm, stream, group);
          DSG_CUDA(cudaStreamSynchronize(stream));
        }
        DSG_CUDA(cudaStreamDestroy(stream));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r)
    if (!errors[r].empty()) throw std::runtime_error(name + " rank " + std::to_string(r) + ": " + errors[r]);
}

std::vector<float> inputOf(int rank, int64_t n, uint64_t salt) {
  std::mt19937_64 rng(1000003ull * rank + salt);
  return randn(rng, (size_t)n, 1.f);
}

const char* algoName(ReduceAlgo a) {
  return a == ReduceAlgo::OneShot ? "one-shot" : a == ReduceAlgo::TwoShot ? "two-shot" : a == ReduceAlgo::Nccl ? "NCCL" : "auto";
}

/** All-reduce of every size in `sizes` with one algorithm and mode; the reference sums in rank order in f32. */
void checkAllReduce(int size, ReduceAlgo algo, ReduceOut mode, const std::vector<int64_t>& sizes, bool ncclOnly = false) {
  const std::string tag = std::to_string(size) + " ranks, " + (ncclOnly ? "NCCL-only" : algoName(algo)) + (mode == ReduceOut::Add ? ", add" : ", store");
  std::vector<std::vector<std::vector<float>>> outs(sizes.size(), std::vector<std::vector<float>>(size));
  std::vector<double> leftover(size, 0.0);
  bool skipped = false;
  const int64_t maxN = *std::max_element(sizes.begin(), sizes.end());
  runRanks(size, 1000, 1, 60, "ar-" + tag, [&](int rank, TpComm& comm, cudaStream_t stream, ThreadGroup& g) {
    if (ncclOnly && !comm.ncclOnly()) throw std::runtime_error("customAllReduce = false did not make the group NCCL-only");
    if (algo == ReduceAlgo::Nccl && !comm.usesNccl()) {
      skipped = true;
      return;
    }
    Dev<float> in((size_t)maxN), out((size_t)maxN);
    g.barrier(rank);
    for (size_t k = 0; k < sizes.size(); ++k) {
      const int64_t n = sizes[k];
      const std::vector<float> x = inputOf(rank, n, (uint64_t)n);
      DSG_CUDA(cudaMemcpy(in.p, x.data(), n * 4, cudaMemcpyHostToDevice));
      if (mode == ReduceOut::Add) {  // the "residual", equal on every rank
        const std::vector<float> r = inputOf(99, n, (uint64_t)n + 7);
        DSG_CUDA(cudaMemcpy(out.p, r.data(), n * 4, cudaMemcpyHostToDevice));
      } else {
        out.poison();
      }
      comm.allReduce(in.p, out.p, n, mode, stream, algo);
      DSG_CUDA(cudaStreamSynchronize(stream));
      if (comm.abortedBy() != 0) throw std::runtime_error("a wait gave up (" + std::to_string(comm.abortedBy()) + ")");
      outs[k][rank].resize(n);
      DSG_CUDA(cudaMemcpy(outs[k][rank].data(), out.p, n * 4, cudaMemcpyDeviceToHost));
      std::vector<float> left(n);
      DSG_CUDA(cudaMemcpy(left.data(), in.p, n * 4, cudaMemcpyDeviceToHost));
      for (float v : left) leftover[rank] = std::max(leftover[rank], (double)std::fabs(v));
    }
  }, 1 << 16, !ncclOnly);
  if (skipped) {
    std::printf("%-60s skipped (no NCCL in this group: NCCL not built, or ranks share a device)\n", tag.c_str());
    return;
  }
  for (size_t k = 0; k < sizes.size(); ++k) {
    const int64_t n = sizes[k];
    std::vector<std::vector<float>> ins;
    for (int r = 0; r < size; ++r) ins.push_back(inputOf(r, n, (uint64_t)n));
    const std::vector<float> base = mode == ReduceOut::Add ? inputOf(99, n, (uint64_t)n + 7) : std::vector<float>(n, 0.f);
    double err = 0, spread = 0, num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i) {
      float s = 0.f;
      for (int r = 0; r < size; ++r) s += ins[r][i];
      const float want = mode == ReduceOut::Add ? base[i] + s : s;
      for (int r = 0; r < size; ++r) {
        const float got = outs[k][r][i];
        if (!std::isfinite(got)) err = NAN;
        if (!std::isnan(err)) err = std::max(err, (double)std::fabs(got - want));
        num += ((double)got - want) * ((double)got - want);
        den += (double)want * want;
        if (std::memcmp(&got, &outs[k][0][i], 4) != 0) spread = 1;
      }
    }
    const std::string name = "all-reduce " + tag + ", n " + std::to_string(n);
    if (algo == ReduceAlgo::Nccl || ncclOnly) report(name + " (rel, NCCL order)", std::sqrt(num / den), 1e-6);
    else report(name + " (bitwise)", err, 0);
    report(name + ": every rank bitwise equal", spread, 0);
  }
  report("all-reduce " + tag + ": inputs left zero", *std::max_element(leftover.begin(), leftover.end()), 0);
}

void checkGather(int size, int vocab, int rows, bool ncclOnly = false) {
  std::vector<std::vector<float>> outs(size);
  std::vector<int> starts(size), counts(size);
  auto shardOf = [&](int r, int start, int n) {
    std::vector<float> v((size_t)rows * n);
    for (int row = 0; row < rows; ++row)
      for (int c = 0; c < n; ++c) v[(size_t)row * n + c] = (float)(row * 1000003 + start + c) * 0.5f + r;
    return v;
  };
  runRanks(size, vocab, rows, 60, "gather", [&](int rank, TpComm& comm, cudaStream_t stream, ThreadGroup& g) {
    const int start = g.vocabStart(rank), n = g.vocabRows(rank);
    const auto mine = shardOf(rank, start, n);
    DSG_CUDA(cudaMemcpy(comm.gatherSource(), mine.data(), mine.size() * 4, cudaMemcpyHostToDevice));
    Dev<float> out((size_t)rows * vocab);
    out.poison();
    g.barrier(rank);
    comm.allGatherVocab(rows, out.p, stream);
    DSG_CUDA(cudaStreamSynchronize(stream));
    outs[rank] = out.get();
  }, 1 << 16, !ncclOnly);
  ThreadGroup g(size, vocab);
  double err = 0;
  for (int r = 0; r < size; ++r) {
    std::vector<float> want((size_t)rows * vocab);
    for (int q = 0; q < size; ++q) {
      const auto s = shardOf(q, g.vocabStart(q), g.vocabRows(q));
      for (int row = 0; row < rows; ++row)
        std::memcpy(&want[(size_t)row * vocab + g.vocabStart(q)], &s[(size_t)row * g.vocabRows(q)], (size_t)g.vocabRows(q) * 4);
    }
    for (size_t i = 0; i < want.size(); ++i) {
      const float got = outs[r][i];
      if (!(got == want[i])) err = std::isfinite(got) ? std::max(err, (double)std::fabs(got - want[i])) : INFINITY;
    }
  }
  report(std::string(ncclOnly ? "NCCL-only " : "") + "vocab all-gather, " + std::to_string(size) + " ranks, vocab " + std::to_string(vocab) + ", " + std::to_string(rows) +
             " rows (exact, every rank)", err, 0);
}

/** Rank 1 never calls: rank 0's wait gives up after the 0.3 s timeout and names (0 waited for 1). Then a wait that
 *  abortGroup() releases. */
void checkTimeoutAndAbort() {
  int by = 0;
  double seconds = 0;
  runRanks(2, 1000, 1, 0.3, "timeout", [&](int rank, TpComm& comm, cudaStream_t stream, ThreadGroup& g) {
    if (rank == 0) {
      Dev<float> in(1024), out(1024);
      const auto t0 = std::chrono::steady_clock::now();
      comm.allReduce(in.p, out.p, 1024, ReduceOut::Store, stream);
      DSG_CUDA(cudaStreamSynchronize(stream));
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      by = comm.abortedBy();
    }
    g.barrier(rank);
  });
  report("timeout: the wait gives up and names rank 0 waiting for rank 1 (|code - 2|)", std::fabs(by - (1 + 0 * kMaxTpRanks + 1)), 0);
  report("timeout: given up within 0.3 s + 2 s", seconds > 2.3 ? seconds : 0, 0);
  seconds = 0;
  by = 0;
  runRanks(2, 1000, 1, 300, "abort", [&](int rank, TpComm& comm, cudaStream_t stream, ThreadGroup& g) {
    if (rank == 0) {
      Dev<float> in(1024), out(1024);
      const auto t0 = std::chrono::steady_clock::now();
      comm.allReduce(in.p, out.p, 1024, ReduceOut::Store, stream);
      g.barrier(rank);  // launched; rank 1 now aborts
      DSG_CUDA(cudaStreamSynchronize(stream));
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      by = comm.abortedBy();
    } else {
      g.barrier(rank);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      comm.abortGroup();
    }
  });
  report("abortGroup: the waiting rank sees -1 (|code + 1|)", std::fabs(by + 1), 0);
  report("abortGroup: released within 2 s (not the 300 s timeout)", seconds > 2 ? seconds : 0, 0);
}

/** 56 all-reduces of n floats (Add into a residual) captured in one graph per rank; replays back to back. */
void timeGraph(int size, int64_t n) {
  constexpr int kPerGraph = 56, kWarm = 5, kReps = 20, kBatch = 10;
  std::vector<double> us(size, 0);
  runRanks(size, 1000, 1, 60, "graph", [&](int rank, TpComm& comm, cudaStream_t stream, ThreadGroup& g) {
    Dev<float> in((size_t)n), resid((size_t)n);
    DSG_CUDA(cudaMemset(in.p, 0, n * 4));
    DSG_CUDA(cudaMemset(resid.p, 0, n * 4));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    DSG_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kPerGraph; ++i) comm.allReduce(in.p, resid.p, n, ReduceOut::Add, stream);
    DSG_CUDA(cudaStreamEndCapture(stream, &graph));
    DSG_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    g.barrier(rank);  // every rank captured (kernels loaded) before any replays
    for (int i = 0; i < kWarm; ++i) DSG_CUDA(cudaGraphLaunch(exec, stream));
    DSG_CUDA(cudaStreamSynchronize(stream));
    cudaEvent_t a, b;
    DSG_CUDA(cudaEventCreate(&a));
    DSG_CUDA(cudaEventCreate(&b));
    std::vector<double> t;
    for (int rep = 0; rep < kReps; ++rep) {
      g.barrier(rank);
      DSG_CUDA(cudaEventRecord(a, stream));
      for (int i = 0; i < kBatch; ++i) DSG_CUDA(cudaGraphLaunch(exec, stream));
      DSG_CUDA(cudaEventRecord(b, stream));
      DSG_CUDA(cudaEventSynchronize(b));
      float ms = 0;
      DSG_CUDA(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms * 1000.0 / (kBatch * kPerGraph));
    }
    std::sort(t.begin(), t.end());
    us[rank] = t[t.size() / 2];
    if (comm.abortedBy() != 0) throw std::runtime_error("a wait gave up in the graph replays");
    DSG_CUDA(cudaEventDestroy(a));
    DSG_CUDA(cudaEventDestroy(b));
    DSG_CUDA(cudaGraphExecDestroy(exec));
    DSG_CUDA(cudaGraphDestroy(graph));
  });
  const int gpus = gpuCount();
  std::printf("in-graph all-reduce, %d ranks on %d device(s), %lld f32 values (%lld bytes): %.2f us per all-reduce "
              "(median over %d batches of %d graphs x %d; rank 0)%s\n",
              size, std::min(gpus, size), (long long)n, (long long)n * 4, us[0], kReps, kBatch, kPerGraph,
              gpus >= size ? "" : "  [ranks share a device: proves the graph path, not the NVLink latency]");
}

/** Eager all-reduce time (Add, rank 0's median of 20 after 5 warm-ups) of our kernels (one-shot and two-shot) and
 *  NCCL where the group uses it, from 64 KB to 64 MB: where NCCL's bandwidth overtakes our kernels (the threshold in
 *  all_reduce.cu). Staging as the backend sizes it for the Qwen3-8B shape (1024 tokens x 4096). */
void sweep(int size) {
  const std::vector<int64_t> sizes = {1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24};
  std::vector<std::vector<double>> us(3, std::vector<double>(sizes.size(), NAN));
  runRanks(size, 1000, 1, 60, "sweep", [&](int rank, TpComm& comm, cudaStream_t stream, ThreadGroup& g) {
    Dev<float> in((size_t)sizes.back()), out((size_t)sizes.back());
    DSG_CUDA(cudaMemset(in.p, 0, sizes.back() * 4));
    DSG_CUDA(cudaMemset(out.p, 0, sizes.back() * 4));
    cudaEvent_t a, b;
    DSG_CUDA(cudaEventCreate(&a));
    DSG_CUDA(cudaEventCreate(&b));
    g.barrier(rank);
    const ReduceAlgo algos[3] = {ReduceAlgo::OneShot, ReduceAlgo::TwoShot, ReduceAlgo::Nccl};
    for (int k = 0; k < 3; ++k) {
      if (algos[k] == ReduceAlgo::Nccl && !comm.usesNccl()) continue;
      for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<double> t;
        for (int rep = 0; rep < 25; ++rep) {
          g.barrier(rank);
          DSG_CUDA(cudaEventRecord(a, stream));
          comm.allReduce(in.p, out.p, sizes[i], ReduceOut::Add, stream, algos[k]);
          DSG_CUDA(cudaEventRecord(b, stream));
          DSG_CUDA(cudaEventSynchronize(b));
          float ms = 0;
          DSG_CUDA(cudaEventElapsedTime(&ms, a, b));
          if (rep >= 5) t.push_back(ms * 1000.0);
        }
        std::sort(t.begin(), t.end());
        if (rank == 0) us[k][i] = t[t.size() / 2];
      }
    }
    DSG_CUDA(cudaEventDestroy(a));
    DSG_CUDA(cudaEventDestroy(b));
  }, 1024 * 4096);
  std::printf("eager all-reduce sweep, %d ranks (us, rank 0 median; NCCL NaN where not used):\n", size);
  for (size_t i = 0; i < sizes.size(); ++i)
    std::printf("  %9lld bytes: one-shot %8.1f  two-shot %8.1f  NCCL %8.1f\n", (long long)sizes[i] * 4, us[0][i], us[1][i], us[2][i]);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  try {
    const int gpus = gpuCount();
    std::printf("%d GPU(s) visible; rank r on device r %% %d\n", gpus, gpus);
    const std::vector<int64_t> sizes = {1, 3, 4, 5, 17, 255, 1000, 1024, 4097, 65536, 65537, 200003};
    for (int size : {2, 4})
      for (ReduceAlgo algo : {ReduceAlgo::OneShot, ReduceAlgo::TwoShot, ReduceAlgo::Auto})
        for (ReduceOut mode : {ReduceOut::Store, ReduceOut::Add}) checkAllReduce(size, algo, mode, sizes);
    for (int size : {2, 4}) checkAllReduce(size, ReduceAlgo::Nccl, ReduceOut::Add, {1, 4097, 1 << 20, (1 << 22) + 3});
    for (int size : {2, 4}) {
      checkGather(size, 1001, 3);
      checkGather(size, 151936, quick ? 2 : 64);
    }
#ifdef DSG_HAVE_NCCL
    // The NCCL-only form (ranks that cannot map each other, or --disable-custom-all-reduce): own devices only.
    for (int size : {2, 4})
      if (gpus >= size) {
        checkAllReduce(size, ReduceAlgo::Auto, ReduceOut::Add, {1, 4097, 65537, 1 << 20}, true);
        checkGather(size, 1001, 3, true);
        checkGather(size, 151936, 8, true);
      }
#endif
    checkTimeoutAndAbort();
    if (!quick) {
      timeGraph(2, 1024);
      timeGraph(2, 4096);
      // Four ranks' graphs spin-waiting on ONE device lost forward progress once (H100, 2026-12-08: "a wait gave up"):
      // nothing guarantees that kernels of four streams are co-resident, so that case is timed only on 4 GPUs.
      if (gpus >= 4) timeGraph(4, 1024);
      sweep(2);
    }
  } catch (const std::exception& e) {
    std::printf("ERROR: %s\n", e.what());
    return 2;
  }
  std::printf("%s: %d check(s) failed\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}
