// What every kernel check shares: a device buffer that can be poisoned before a run (every output element must then
// be written), pass/fail lines with a failure count for the exit code, bf16 round trips (the values the device
// really sees), normal random inputs, a loop spread over the host's cores for the references, the relative error
// ||a - b|| / ||b|| (NaN anywhere gives NaN, which fails), and the median time of a graph replay for the checks'
// timing sections.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common.cuh"

namespace check {

using bf16 = __nv_bfloat16;

inline int failures = 0;

/** One PASS/FAIL line; a non-finite error fails. */
inline void report(const std::string& name, double err, double bound, int width = 60) {
  const bool ok = std::isfinite(err) && err <= bound;
  if (!ok) ++failures;
  std::printf("%-*s %s  err %.3e  bound %.1e\n", width, name.c_str(), ok ? "PASS" : "FAIL", err, bound);
}

template <class T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t n_) : n(n_) { DSG_CUDA(cudaMalloc(&p, n * sizeof(T) + 16)); }
  Dev(const std::vector<T>& v) : Dev(v.size()) { put(v); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p); }
  void put(const std::vector<T>& v) { DSG_CUDA(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> get() const {
    std::vector<T> v(n);
    DSG_CUDA(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  void poison() { DSG_CUDA(cudaMemset(p, 0xFF, n * sizeof(T))); }  // NaN for f32 and bf16
};

inline float bfRound(float x) { return __bfloat162float(__float2bfloat16(x)); }
inline void roundBf16(std::vector<float>& v) {
  for (auto& x : v) x = bfRound(x);
}
/** n values drawn from N(mean, std^2) with `rng`, in order. */
template <class Rng>
std::vector<float> randn(Rng& rng, size_t n, float std, float mean = 0.f) {
  std::normal_distribution<float> d(mean, std);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
/** Runs body(i) for i in [0, count) on up to 32 host threads (reference computations; body writes only its own i). */
template <class F>
void parallelFor(size_t count, F&& body) {
  const unsigned threads = std::max(1u, std::min(std::thread::hardware_concurrency(), 32u));
  std::vector<std::thread> pool;
  for (unsigned w = 0; w < threads; ++w)
    pool.emplace_back([&, w] {
      for (size_t i = w; i < count; i += threads) body(i);
    });
  for (auto& th : pool) th.join();
}
inline std::vector<bf16> toBf16(const std::vector<float>& v) {
  std::vector<bf16> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
  return o;
}
inline std::vector<float> fromBf16(const std::vector<bf16>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __bfloat162float(v[i]);
  return o;
}

template <class A, class B>
double relErr(const std::vector<A>& a, const std::vector<B>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite((double)a[i])) return NAN;
    num += ((double)a[i] - (double)b[i]) * ((double)a[i] - (double)b[i]);
    den += (double)b[i] * (double)b[i];
  }
  return std::sqrt(num / den);  // an all-zero reference gives inf or NaN: a check never compares against zeros
}

/**
 * float64 reference attention of one query row q[0, D) over keys [0, numKeys) of KV head kvh, read through a page
 * table (key k lives in slot table[k / pageSize] * pageSize + k % pageSize of caches laid out [slot, kvHeads, D]);
 * writes out[0, D), zeros when there are no keys. `scores` is scratch.
 */
inline void referenceAttentionRow(const float* q, const float* kc, const float* vc, const int32_t* table, int pageSize,
                                  int kvHeads, int kvh, int D, int numKeys, double scale, std::vector<double>& scores,
                                  double* out) {
  auto slot = [&](int k) { return (size_t)table[k / pageSize] * pageSize + k % pageSize; };
  scores.assign(numKeys, 0.0);
  double mx = -1e300;
  for (int k = 0; k < numKeys; ++k) {
    const float* kr = &kc[(slot(k) * kvHeads + kvh) * D];
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += (double)q[d] * kr[d];
    scores[k] = dot * scale;
    mx = std::max(mx, scores[k]);
  }
  double sum = 0;
  for (auto& e : scores) sum += (e = std::exp(e - mx));
  for (int d = 0; d < D; ++d) out[d] = 0.0;
  for (int k = 0; k < numKeys; ++k) {
    const float* vr = &vc[(slot(k) * kvHeads + kvh) * D];
    for (int d = 0; d < D; ++d) out[d] += scores[k] * vr[d];
  }
  if (numKeys > 0)
    for (int d = 0; d < D; ++d) out[d] /= sum;
}

/**
 * Median time in microseconds of one replay of `exec` on `stream`: replayed `warmups` times untimed, then `reps` times
 * between events, each replay preceded by whatever `beforeEach` enqueues (an L2 flush, say), outside the timed span.
 */
template <class Before>
double medianExecUs(cudaStream_t stream, cudaGraphExec_t exec, int reps, int warmups, Before&& beforeEach) {
  cudaEvent_t a, b;
  DSG_CUDA(cudaEventCreate(&a));
  DSG_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < warmups; ++i) DSG_CUDA(cudaGraphLaunch(exec, stream));
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    beforeEach();
    DSG_CUDA(cudaEventRecord(a, stream));
    DSG_CUDA(cudaGraphLaunch(exec, stream));
    DSG_CUDA(cudaEventRecord(b, stream));
    DSG_CUDA(cudaEventSynchronize(b));
    float ms;
    DSG_CUDA(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1000.0);
  }
  DSG_CUDA(cudaGetLastError());
  DSG_CUDA(cudaEventDestroy(a));
  DSG_CUDA(cudaEventDestroy(b));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

/** medianExecUs of the CUDA graph that `capture` records on `stream` (launches only). */
template <class Capture, class Before>
double medianReplayUs(cudaStream_t stream, Capture&& capture, int reps, int warmups, Before&& beforeEach) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  DSG_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  capture();
  DSG_CUDA(cudaStreamEndCapture(stream, &graph));
  DSG_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  const double us = medianExecUs(stream, exec, reps, warmups, beforeEach);
  DSG_CUDA(cudaGraphExecDestroy(exec));
  DSG_CUDA(cudaGraphDestroy(graph));
  return us;
}

}  // namespace check
