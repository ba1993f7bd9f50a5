// Token feedback for pipelined steps (Backend::stepBegin): a step begun before the previous one ended carries
// placeholders -(1 + row) among its token ids, and this kernel replaces each with the token the previous step sampled
// in that sequence row (the first plane of the step output buffer, still on the device), before the forward pass
// reads them. Shapes: tokens [n] int32, in place; sampled [rows of the previous step] int32 (rows the addon checked
// to be sampled). Floor: n * 8 bytes, so a launch's latency (~2 us); it runs only for steps that have placeholders.
#include "common.cuh"
#include "kernels.h"

namespace dsg::cuda {

namespace {

__global__ void resolveTokenFeedbackKernel(int32_t* __restrict__ tokens, int n, const int32_t* __restrict__ sampled) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t t = tokens[i];
  if (t < 0) tokens[i] = sampled[-1 - t];
}

}  // namespace

void launchResolveTokenFeedback(int32_t* tokens, int n, const int32_t* sampled, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  resolveTokenFeedbackKernel<<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(tokens, n, sampled);
  DSG_LAUNCHED("resolveTokenFeedbackKernel");
}

}  // namespace dsg::cuda
