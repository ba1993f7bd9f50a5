// Can cuBLAS's GEMM kernels take programmatic (PDL) edges in a CUDA graph, and what does it buy in a decode step?
// 1. Safety: a writer kernel that lets its dependents launch at once, sleeps, then writes x; a cuBLAS GEMM reads x
//    through a programmatic edge. A GEMM kernel that does not wait (griddepcontrol.wait) reads the stale x: its
//    output then differs from the plain graph's. Per shape and M: the kernel's name, the edge type stream capture
//    gave, and whether the output matches.
// 2. Gain: 28 layers of (small kernel -> GEMM) x 4 with the decode step's shapes, replayed as captured and with the
//    edges into the GEMM nodes made programmatic; median us per replay, and the outputs compared bit for bit.
// Build and run on the GPU machine (repository root):
//   nvcc -std=c++17 -O3 -arch=sm_90 -I native/include -I native/cuda -I native/cuda/tests \
//     bench/engine/cublas_pdl_probe.cu -lcublas -lcuda -o /tmp/pdlprobe && /tmp/pdlprobe
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "bench_util.cuh"
#include "check_util.cuh"

using bf16 = __nv_bfloat16;

using dsg::cuda::allowNextGrid;
using dsg::cuda::waitPreviousGrid;

__global__ void fillF32(float* p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = (float)((i * 2654435761u) % 1000) / 1000.f - 0.5f;
}

/** Lets dependents launch at once, sleeps ~sleepUs, then writes x = 1. */
__global__ void slowWriter(bf16* x, size_t n, int sleepUs) {
  waitPreviousGrid();
  allowNextGrid();
  for (int i = 0; i < sleepUs; ++i) __nanosleep(1000);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    x[i] = __float2bfloat16(1.f);
}

/** The step's small kernels (RMSNorm, SiLU*mul): read f32 or bf16 rows, write the next GEMM's bf16 input. */
__global__ void smallKernel(const float* resid, int residCols, bf16* out, int rows, int cols) {
  waitPreviousGrid();
  allowNextGrid();
  const size_t n = (size_t)rows * cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / cols, c = i % cols;
    out[i] = __float2bfloat16(resid[r * residCols + (c % residCols)] * 0.02f);
  }
}

/** Launches `kernel` (256-thread blocks) with programmatic dependent launch: it waits for its predecessor itself. */
template <class... KernelArgs, class... Args>
static void launchPdl(void (*kernel)(KernelArgs...), int blocks, cudaStream_t st, Args... args) {
  dsg::cuda::launchKernel(kernel, dim3(blocks), dim3(256), 0, st, true, 0, args...);
}

static std::string kernelName(cudaGraphNode_t node) {
  cudaGraphNodeType t;
  CK(cudaGraphNodeGetType(node, &t));
  if (t != cudaGraphNodeTypeKernel) return "(not a kernel)";
  CUDA_KERNEL_NODE_PARAMS p{};
  if (cuGraphKernelNodeGetParams((CUgraphNode)node, &p) != CUDA_SUCCESS) return "(params?)";
  const char* name = nullptr;
  if (cuFuncGetName(&name, p.func) != CUDA_SUCCESS || !name) return "(name?)";
  return name;
}

static bool isOurs(const std::string& n) { return n.find("smallKernel") != std::string::npos || n.find("slowWriter") != std::string::npos; }

/** Makes every kernel->kernel edge into a kernel not ours programmatic; returns how many; fills `types` with the
 * original edge types of those edges. */
static int makeGemmEdgesProgrammatic(cudaGraph_t g, std::set<std::string>* names, std::set<int>* types) {
  size_t n = 0;
  CK(cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &n));
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> ed(n);
  CK(cudaGraphGetEdges(g, from.data(), to.data(), ed.data(), &n));
  int changed = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string fn = kernelName(from[i]), tn = kernelName(to[i]);
    if (tn[0] == '(' || fn[0] == '(' || isOurs(tn)) continue;
    if (names) names->insert(tn);
    if (types) types->insert(ed[i].type);
    if (ed[i].type == cudaGraphDependencyTypeProgrammatic) continue;
    CK(cudaGraphRemoveDependencies(g, &from[i], &to[i], &ed[i], 1));
    cudaGraphEdgeData e{};
    e.from_port = cudaGraphKernelNodePortProgrammatic;
    e.type = cudaGraphDependencyTypeProgrammatic;
    CK(cudaGraphAddDependencies(g, &from[i], &to[i], &e, 1));
    ++changed;
  }
  return changed;
}

struct Shape {
  const char* name;
  int n, k;
  bool addF32;
};

static void gemm(cublasHandle_t h, const Shape& s, int m, const bf16* x, const bf16* w, void* y) {
  const float alpha = 1.f, beta = s.addF32 ? 1.f : 0.f;
  CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, w, CUDA_R_16BF, s.k, x, CUDA_R_16BF, s.k, &beta, y,
                  s.addF32 ? CUDA_R_32F : CUDA_R_16BF, s.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

int main() {
  CK(cuInit(0));
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cublasHandle_t h = makeCublas(st, 32u << 20);
  const Shape shapes[] = {{"qkv", 4096, 1024, false}, {"o", 1024, 2048, true}, {"gate_up", 6144, 1024, false},
                          {"down", 1024, 3072, true}};
  const int ms[] = {16, 32, 64, 96, 128, 136, 160, 192, 256};
  bf16 *x, *w;
  float* y32;
  bf16* y16;
  const size_t xElems = 256 * 3072;
  CK(cudaMalloc(&x, xElems * 2));
  CK(cudaMalloc(&w, (size_t)6144 * 3072 * 2));
  CK(cudaMalloc(&y32, (size_t)256 * 6144 * 4));
  CK(cudaMalloc(&y16, (size_t)256 * 6144 * 2));
  fillBf16<<<1024, 256>>>(w, (size_t)6144 * 3072, 3, 0.1f);
  CK(cudaDeviceSynchronize());

  // 1. Safety.
  std::printf("== safety: writer (dependents at once, 200 us sleep, then x = 1) -> GEMM through a programmatic edge\n");
  std::set<std::string> allNames;
  int unsafe = 0;
  for (const Shape& s : shapes) {
    for (int m : ms) {
      void* y = s.addF32 ? (void*)y32 : (void*)y16;
      const size_t yBytes = (size_t)m * s.n * (s.addF32 ? 4 : 2);
      std::vector<uint8_t> ref(yBytes), got(yBytes);
      for (int variant = 0; variant < 2; ++variant) {
        cudaGraph_t g;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        launchPdl(slowWriter, 132, st, x, (size_t)m * s.k, 200);
        gemm(h, s, m, x, w, y);
        CK(cudaStreamEndCapture(st, &g));
        std::set<std::string> names;
        std::set<int> types;
        int changed = 0;
        if (variant == 1) changed = makeGemmEdgesProgrammatic(g, &names, &types);
        cudaGraphExec_t ex;
        CK(cudaGraphInstantiate(&ex, g, 0));
        CK(cudaMemsetAsync(x, 0, xElems * 2, st));
        CK(cudaMemsetAsync(y, 0, yBytes, st));
        CK(cudaGraphLaunch(ex, st));
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(variant ? got.data() : ref.data(), y, yBytes, cudaMemcpyDeviceToHost));
        if (variant == 1) {
          const bool same = ref == got;
          if (!same) ++unsafe;
          std::string nm;
          for (auto& n : names) nm += n + " ";
          std::string ty;
          for (int t : types) ty += std::to_string(t) + " ";
          std::printf("%-8s M %3d  edges made programmatic %d (captured types: %s)  output %s  kernels: %s\n", s.name, m,
                      changed, ty.c_str(), same ? "SAME" : "DIFFERENT (kernel does not wait)", nm.c_str());
          allNames.insert(names.begin(), names.end());
        }
        cudaGraphExecDestroy(ex);
        cudaGraphDestroy(g);
      }
    }
  }
  std::printf("unsafe cases: %d\nkernel names:\n", unsafe);
  for (auto& n : allNames) std::printf("  %s\n", n.c_str());

  // 2. Gain: 28 layers of the decode step's linears with a small kernel before each, weights distinct per layer.
  std::printf("== chain: 28 x (small -> qkv, small -> o (+=), small -> gate_up, small -> down (+=)), us per replay\n");
  std::vector<bf16*> lw(28 * 4);
  for (int l = 0; l < 28; ++l)
    for (int j = 0; j < 4; ++j) {
      const size_t e = (size_t)shapes[j].n * shapes[j].k;
      CK(cudaMalloc(&lw[l * 4 + j], e * 2));
      fillBf16<<<1024, 256>>>(lw[l * 4 + j], e, 100 + l * 4 + j, 0.05f);
    }
  float* resid;
  bf16 *xin, *qkv, *gu;  // qkv and gate|up outputs: written, not read (the chain's data path runs through resid)
  CK(cudaMalloc(&resid, (size_t)256 * 1024 * 4));
  CK(cudaMalloc(&xin, (size_t)256 * 3072 * 2));
  CK(cudaMalloc(&qkv, (size_t)256 * 4096 * 2));
  CK(cudaMalloc(&gu, (size_t)256 * 6144 * 2));
  CK(cudaDeviceSynchronize());
  for (int m : {16, 64, 128, 256}) {
    float us[2];
    std::vector<float> out[2];
    for (int variant = 0; variant < 2; ++variant) {
      cudaGraph_t g;
      CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      for (int l = 0; l < 28; ++l) {
        launchPdl(smallKernel, 64, st, resid, 1024, xin, m, 1024);
        gemm(h, shapes[0], m, xin, lw[l * 4 + 0], qkv);
        launchPdl(smallKernel, 64, st, resid, 1024, xin, m, 2048);
        gemm(h, shapes[1], m, xin, lw[l * 4 + 1], resid);
        launchPdl(smallKernel, 64, st, resid, 1024, xin, m, 1024);
        gemm(h, shapes[2], m, xin, lw[l * 4 + 2], gu);
        launchPdl(smallKernel, 64, st, resid, 1024, xin, m, 3072);
        gemm(h, shapes[3], m, xin, lw[l * 4 + 3], resid);
      }
      CK(cudaStreamEndCapture(st, &g));
      if (variant == 1) makeGemmEdgesProgrammatic(g, nullptr, nullptr);
      cudaGraphExec_t ex;
      CK(cudaGraphInstantiate(&ex, g, 0));
      // Output check: from a fixed residual, one replay.
      fillF32<<<256, 256, 0, st>>>(resid, (size_t)256 * 1024);
      CK(cudaGraphLaunch(ex, st));
      CK(cudaStreamSynchronize(st));
      out[variant].resize((size_t)m * 1024);
      CK(cudaMemcpy(out[variant].data(), resid, out[variant].size() * 4, cudaMemcpyDeviceToHost));
      us[variant] = (float)check::medianExecUs(st, ex, 21, 3, [] {});
      cudaGraphExecDestroy(ex);
      cudaGraphDestroy(g);
    }
    const bool same = std::memcmp(out[0].data(), out[1].data(), out[0].size() * 4) == 0;
    std::printf("M %3d  as captured %8.1f us  programmatic %8.1f us  (%.1f us per GEMM)  outputs %s\n", m, us[0], us[1],
                (us[0] - us[1]) / 112.f, same ? "bit-identical" : "DIFFER");
  }
  return unsafe ? 1 : 0;
}
