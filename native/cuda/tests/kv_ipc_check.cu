// Two-process check of the CUDA IPC KV transfer (kv_ipc.h): a child process (forked before any CUDA call) fills a
// KV pool with a known pattern and exports it; the parent opens it (on GPU 1 when there are two, else on GPU 0) and
// pulls token rows into its own pool with another page size, then compares every pulled row with the pattern and
// checks that rows it was not asked to write stay untouched. With --bench it also times a large pull (Qwen3-0.6B
// rows: 56 tensors of 1024 bf16 per token) and prints the rate. Build and run on the GPU machine:
//   nvcc -std=c++17 -O3 -arch=sm_90 -I native/include -I native/cuda native/cuda/tests/kv_ipc_check.cu \
//     native/cuda/kv_ipc.cu -o kvipc && ./kvipc [--bench]
// Exits non-zero when a check fails.
#include <sys/wait.h>
#include <csignal>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common.cuh"
#include "kv_ipc.h"

using namespace dsg;
using namespace dsg::cuda;

namespace {

struct Geometry {
  int64_t tensors, rowElems, numPages;
  int pageSize;
};

/** The value of element e of slot s (page * pageSize + row) of tensor k in the source pool. */
float pattern(int64_t k, int64_t slot, int64_t e) { return (float)((k * 7919 + slot * 131 + e * 3) % 2039) - 1019.f; }

LocalKvPool allocate(const Geometry& g, int device, bool fill) {
  DSG_CUDA(cudaSetDevice(device));
  LocalKvPool p;
  p.tensors = g.tensors;
  p.rowElems = g.rowElems;
  p.numPages = g.numPages;
  p.pageSize = g.pageSize;
  p.tensorStrideElems = (g.numPages + 1) * g.pageSize * g.rowElems;
  p.deviceId = device;
  const size_t elems = (size_t)p.tensors * p.tensorStrideElems;
  DSG_CUDA(cudaMalloc(&p.base, elems * sizeof(bf16)));
  std::vector<bf16> host(elems);
  for (int64_t k = 0; k < p.tensors; ++k)
    for (int64_t i = 0; i < p.tensorStrideElems; ++i)
      host[(size_t)(k * p.tensorStrideElems + i)] = __float2bfloat16(fill ? pattern(k, i / g.rowElems, i % g.rowElems) : -7.f);
  DSG_CUDA(cudaMemcpy(p.base, host.data(), elems * sizeof(bf16), cudaMemcpyHostToDevice));
  return p;
}

bool writeAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = write(fd, c, n);
    if (w <= 0) return false;
    c += w;
    n -= (size_t)w;
  }
  return true;
}
bool readAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= (size_t)r;
  }
  return true;
}

/** The exporting side: fills a pool, sends its description, waits until told to exit. */
int child(const Geometry& g, int toParent, int fromParent) {
  try {
    const LocalKvPool pool = allocate(g, 0, true);
    const KvIpcPool desc = exportKvPool(pool);
    if (!writeAll(toParent, desc.handle, sizeof(desc.handle))) return 2;
    char done = 0;
    readAll(fromParent, &done, 1);
    cudaFree(pool.base);
    return 0;
  } catch (const EngineError& e) {
    std::fprintf(stderr, "child: %s\n", e.what());
    return 1;
  }
}

/** Pulls tokens [token0, token0 + n) of srcPages into dstPages and checks the destination pool. */
bool checkPull(KvIpcPeers& peers, int32_t remote, const Geometry& src, const LocalKvPool& dst, const std::vector<int32_t>& srcPages,
               int32_t token0, int32_t n, const std::vector<int32_t>& dstPages, cudaStream_t stream, const char* name) {
  const KvPullStats st = peers.pull(remote, srcPages.data(), (int32_t)srcPages.size(), token0, dst, dstPages.data(), (int32_t)dstPages.size(), n, stream);
  const size_t elems = (size_t)dst.tensors * dst.tensorStrideElems;
  std::vector<bf16> host(elems);
  DSG_CUDA(cudaMemcpy(host.data(), dst.base, elems * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<char> written((size_t)(dst.numPages + 1) * dst.pageSize, 0);
  int64_t bad = 0;
  for (int32_t t = 0; t < n; ++t) {
    const int32_t s = token0 + t;
    const int64_t srcSlot = (int64_t)srcPages[s / src.pageSize] * src.pageSize + s % src.pageSize;
    const int64_t dstSlot = (int64_t)dstPages[t / dst.pageSize] * dst.pageSize + t % dst.pageSize;
    written[dstSlot] = 1;
    for (int64_t k = 0; k < dst.tensors; ++k)
      for (int64_t e = 0; e < dst.rowElems; ++e)
        if (__bfloat162float(host[(size_t)(k * dst.tensorStrideElems + dstSlot * dst.rowElems + e)]) != __bfloat162float(__float2bfloat16(pattern(k, srcSlot, e)))) ++bad;
  }
  int64_t clobbered = 0;
  for (int64_t slot = 0; slot < (int64_t)written.size(); ++slot)
    if (!written[slot])
      for (int64_t k = 0; k < dst.tensors; ++k)
        if (__bfloat162float(host[(size_t)(k * dst.tensorStrideElems + slot * dst.rowElems)]) != -7.f) ++clobbered;
  const bool ok = bad == 0 && clobbered == 0 && st.bytes == (int64_t)n * dst.tensors * dst.rowElems * 2;
  std::printf("%-34s %s: %d tokens, %lld bytes, %.3f ms device, %.3f ms host; %lld wrong elements, %lld rows written outside the list\n", name,
              ok ? "PASS" : "FAIL", n, (long long)st.bytes, st.deviceMs, st.hostMs, (long long)bad, (long long)clobbered);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const bool bench = argc > 1 && std::strcmp(argv[1], "--bench") == 0;
  const Geometry src = bench ? Geometry{56, 1024, 2048, 16} : Geometry{6, 64, 40, 16};
  int up[2], down[2];
  if (pipe(up) != 0 || pipe(down) != 0) return 2;
  const pid_t pid = fork();  // before any CUDA call: the child gets its own context
  if (pid == 0) {
    close(up[0]);
    close(down[1]);
    _exit(child(src, up[1], down[0]));
  }
  close(up[1]);  // so a child that dies makes our reads end
  close(down[0]);
  signal(SIGPIPE, SIG_IGN);
  bool ok = true;
  try {
    KvIpcPool remoteDesc;
    if (!readAll(up[0], remoteDesc.handle, sizeof(remoteDesc.handle))) throw EngineError("LLM_ERR_INTERNAL", "the child exported nothing");
    remoteDesc.tensors = src.tensors;
    remoteDesc.rowElems = src.rowElems;
    remoteDesc.pageSize = src.pageSize;
    remoteDesc.tensorStrideElems = (src.numPages + 1) * src.pageSize * src.rowElems;
    int count = 0;
    DSG_CUDA(cudaGetDeviceCount(&count));
    const int device = count > 1 ? 1 : 0;
    std::printf("exporter on GPU 0, importer on GPU %d (%d visible)\n", device, count);
    std::mt19937 rng(7);
    std::vector<int32_t> srcPages(src.numPages);
    for (int i = 0; i < src.numPages; ++i) srcPages[i] = i;
    std::shuffle(srcPages.begin(), srcPages.end(), rng);
    srcPages.resize(bench ? src.numPages : 9);
    const int32_t srcTokens = (int32_t)srcPages.size() * src.pageSize;
    for (const int dstPs : bench ? std::vector<int>{16} : std::vector<int>{4, 16, 32}) {
      const int32_t token0 = bench ? 0 : src.pageSize;  // the first page already cached on the decode side
      const int32_t n = (srcTokens - token0) / dstPs * dstPs;
      const Geometry dg{src.tensors, src.rowElems, bench ? src.numPages : 200, dstPs};
      LocalKvPool dst = allocate(dg, device, false);
      std::vector<int32_t> dstPages(dg.numPages);
      for (int i = 0; i < dg.numPages; ++i) dstPages[i] = i;
      std::shuffle(dstPages.begin(), dstPages.end(), rng);
      dstPages.resize(n / dstPs);
      KvIpcPeers peers;
      const int32_t remote = peers.open(remoteDesc, dst);
      cudaStream_t stream;
      DSG_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      char name[64];
      std::snprintf(name, sizeof(name), "pull, page size %d -> %d", src.pageSize, dstPs);
      if (bench) {
        for (int rep = 0; rep < 3; ++rep) ok = checkPull(peers, remote, src, dst, srcPages, token0, n, dstPages, stream, name) && ok;
      } else {
        ok = checkPull(peers, remote, src, dst, srcPages, token0, n, dstPages, stream, name) && ok;
      }
      peers.close(remote);
      cudaStreamDestroy(stream);
      cudaFree(dst.base);
    }
  } catch (const EngineError& e) {
    std::printf("FAIL: %s\n", e.what());
    ok = false;
  }
  const char done = 1;
  writeAll(down[1], &done, 1);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("FAIL: the exporting child exited with status %d\n", status);
    ok = false;
  }
  std::printf("%s\n", ok ? "kv_ipc_check: all passed" : "kv_ipc_check: FAILED");
  return ok ? 0 : 1;
}
