// The CUDA backend: bf16 weights and activations, f32 accumulation and an f32 residual stream, cuBLAS GEMMs with
// fused QKV and gate|up weights (concatenated at load), the kernels of kernels.h, a bf16 paged KV pool sized from
// memFractionStatic, and decode steps replayed from CUDA graphs captured per padded batch size (1, 2, 4, ... 256).
// A step does one host-to-device copy of its inputs, launches everything on one stream, and synchronises once to
// read the sampled tokens (and the logits when asked).
// KV pool: per layer K then V, each [(numPages + 1) * pageSize, kvHeads, headDim] bf16; the extra page (index
// numPages, never handed out) absorbs the KV writes of padded batch slots. Export unit: a page of every layer,
// K then V per layer, bf16 (bytesPerPage = layers * 2 * pageSize * kvHeads * headDim * 2).
// Tensor parallelism (BackendOptions.tp.size > 1, tensor_parallel.h): the weights arrive sharded, so heads, KV heads,
// FFN columns and vocab rows are this rank's; the O and down linears write partial sums into tpPartial_ (not the
// residual), all_reduce.cu adds their sum into the residual (exactly once: the fused residual-add epilogues target
// tpPartial_ and the all-reduce leaves it zero again), the embedding is vocab-parallel (zeros outside the shard, then
// the all-reduce), and the LM head writes the rank's vocab columns, gathered to the full vocabulary on every rank
// before the usual sampling (same inputs and seeds on every rank: the same tokens). The collectives are captured in
// the decode graphs; every rank captures the same graphs and replays them in the same order (same step descriptors).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <vector>

#include "backend.h"
#include "embed_step.h"
#include "all_reduce.h"
#include "common.cuh"
#include "gemm.h"
#include "kernels.h"
#include "kv_ipc.h"
#include "sampling.h"

namespace dsg {
namespace {

using cuda::bf16;

constexpr size_t kAlign = 256;
constexpr int kMaxGraphBatch = 256;
constexpr int kMaxSplits = 16;
constexpr cuda::GemvOverlap kGemvOverlap = cuda::GemvOverlap::AfterWait;  // measured: NOTES-decode-small-batch.md

size_t alignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

/** Whether the environment variable `name` is set to "1" (the backend's measurement switches). */
bool envIsOne(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "1") == 0;
}

/** One device allocation carved into aligned pieces. */
class DeviceArena {
 public:
  void reserve(size_t bytes) { need_ += alignUp(bytes); }
  void allocate(const char* what) {
    if (need_ == 0) return;
    const cudaError_t err = cudaMalloc(&base_, need_);
    if (err != cudaSuccess)
      throw EngineError("LLM_ERR_OUT_OF_MEMORY", std::string("cannot allocate ") + std::to_string(need_) +
                                                     " bytes of device memory for the " + what + ": " + cudaGetErrorString(err));
  }
  template <class T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(static_cast<char*>(base_) + used_);
    used_ += alignUp(count * sizeof(T));
    if (used_ > need_) throw EngineError("LLM_ERR_INTERNAL", "device arena overrun (reserve/take mismatch)");
    return p;
  }
  size_t bytes() const { return need_; }
  ~DeviceArena() {
    if (base_) cudaFree(base_);
  }

 private:
  void* base_ = nullptr;
  size_t need_ = 0, used_ = 0;
};

struct LayerDev {
  bf16 *inputNorm, *postAttnNorm, *qkv, *qkvBias, *qNorm, *kNorm, *o, *gateUp, *down;
};

/** Byte offsets of the step inputs inside one device buffer (fixed, so captured graphs can read them). */
struct InputLayout {
  size_t tokens, positions, slots, lastRows, records, params, banned, maskRows, pages, total;
};

/** Decode graph batch sizes: a decode step of n sequences replays the smallest size >= n (padding rows cost little in
 *  attention but a whole row in the per-token kernels, so the steps stay within 1/8 above 8 sequences). */
constexpr int kGraphSizes[] = {1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const ModelDesc& d, const ModelWeights& w, const BackendOptions& o) : d_(d), opt_(o) {
    if (o.pageSize < 1) throw EngineError("LLM_ERR_CONFIG", "pageSize must be >= 1, got " + std::to_string(o.pageSize));
    if (o.maxBatchTokens < 1 || o.maxSeqsPerStep < 1)
      throw EngineError("LLM_ERR_CONFIG", "maxBatchTokens and maxSeqsPerStep must be >= 1");
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
      throw EngineError("LLM_ERR_NO_DEVICE", "backend 'cuda': no CUDA device is visible");
    if (o.deviceId < 0 || o.deviceId >= count)
      throw EngineError("LLM_ERR_NO_DEVICE", "deviceId " + std::to_string(o.deviceId) + " out of range: " +
                                                 std::to_string(count) + " CUDA device(s) visible");
    DSG_CUDA(cudaSetDevice(o.deviceId));
    DSG_CUDA(cudaGetDeviceProperties(&prop_, o.deviceId));
    const bool tp = o.tp.size > 1;
    const ShardLayout& shard = o.tp.shard;
    H_ = d.hiddenSize;
    D_ = d.headDim;
    heads_ = tp ? shard.numHeads : d.numHeads;
    kvHeads_ = tp ? shard.numKvHeads : d.numKvHeads;
    QD_ = (int64_t)heads_ * D_;
    KD_ = (int64_t)kvHeads_ * D_;
    QKV_ = QD_ + 2 * KD_;
    I_ = tp ? shard.intermediateSize : d.intermediateSize;
    V_ = d.vocabSize;
    vocabStart_ = tp ? shard.vocabStart : 0;
    vocabRows_ = tp ? shard.vocabSize : d.vocabSize;
    const int group = heads_ / std::max(kvHeads_, 1);
    if (kvHeads_ < 1 || heads_ % kvHeads_ != 0 || group > 16 || 16 % group != 0)
      throw EngineError("LLM_ERR_UNSUPPORTED_ARCH", "CUDA attention needs num_attention_heads / num_key_value_heads to divide 16, got " +
                                                        std::to_string(heads_) + " / " + std::to_string(kvHeads_) +
                                                        (tp ? " on tp rank " + std::to_string(o.tp.rank) : std::string()));
    if (!cuda::attentionSupportsHeadDim((int)D_))
      throw EngineError("LLM_ERR_UNSUPPORTED_ARCH", "CUDA attention supports head_dim 8, 16, 32, 64, 128 or 256, got " + std::to_string(D_));
    if (H_ % 8 != 0)
      throw EngineError("LLM_ERR_UNSUPPORTED_ARCH", "CUDA backend needs hidden_size divisible by 8, got " + std::to_string(H_));
    DSG_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemm_ = std::make_unique<cuda::Gemm>();
    gemm_->setStream(stream_);
    cuda::prepareAttentionKernels();
    decodeGemm_ = !envIsOne("DSG_NO_DECODE_GEMM") && cuda::decodeGemmAvailable();

    if (tp) group_ = TpGroup::join(o.tp);
    try {
      loadWeights(w);
      allocateWorkspace();
      allocateKvPool();
      if (tp) connectGroup();
      captureDecodeGraphs();
    } catch (const std::exception& e) {
      // The peers would otherwise wait in their next collective (host or device) until the timeout.
      if (comm_) comm_->abortGroup();
      if (tp) TpGroup::abort(o.tp.group, "tp rank " + std::to_string(o.tp.rank) + " failed to start: " + e.what());
      throw;
    }
    std::string tpLine;
    if (tp)
      tpLine = ", tp rank " + std::to_string(o.tp.rank) + " of " + std::to_string(o.tp.size) + " (large all-reduces: " +
               (comm_->usesNccl() ? "NCCL from " + std::to_string(comm_->ncclMinBytes()) + " bytes" : std::string("two-shot")) +
               (comm_->sharesDevice() ? "; ranks share a device" : "") + ")";
    std::fprintf(stderr,
                 "dynamo-sglang cuda: %s, weights %.1f MiB, KV pool %.1f MiB (%lld pages of %d tokens), workspace %.1f MiB, "
                 "mid-batch decode linears: %s%s\n",
                 prop_.name, weightsBytes_ / 1048576.0, kvPoolBytes_ / 1048576.0, (long long)numPages_, o.pageSize,
                 workspaceBytes_ / 1048576.0, useDecodeGemm(cuda::kDecodeGemmPreferredMaxTokens) ? "fused wgmma" : "cuBLAS",
                 tpLine.c_str());
  }

  ~CudaBackend() override {
    // A group with a rank gone is over: waits of the peers' (and this rank's begun) collectives give up at once.
    if (comm_) comm_->abortGroup();
    for (auto& [bs, g] : graphs_) cudaGraphExecDestroy(g);
    if (stream_) cudaStreamSynchronize(stream_);  // begun steps write into host buffers and the caller's outputs
    comm_.reset();
    for (int i = 0; i < 2; ++i) {
      if (hostInBuf_[i]) cudaFreeHost(hostInBuf_[i]);
      if (hostOutBuf_[i]) cudaFreeHost(hostOutBuf_[i]);
      if (hostMaskBuf_[i]) cudaFreeHost(hostMaskBuf_[i]);
      if (slotLogits_[i]) cudaFree(slotLogits_[i]);
      if (stepDone_[i]) cudaEventDestroy(stepDone_[i]);
    }
    if (kvPool_) cudaFree(kvPool_);
    gemm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  const char* name() const override { return "cuda"; }
  KvInfo kvInfo() const override { return KvInfo{opt_.pageSize, numPages_, bytesPerPage_}; }

  MemInfo memInfo() const override {
    MemInfo m;
    m.weightsBytes = weightsBytes_;
    m.kvPoolBytes = kvPoolBytes_;
    m.workspaceBytes = workspaceBytes_;
    size_t freeB = 0, totalB = 0;
    if (cudaMemGetInfo(&freeB, &totalB) == cudaSuccess) {
      m.deviceFreeBytes = (int64_t)freeB;
      m.deviceTotalBytes = (int64_t)totalB;
    }
    return m;
  }

  void step(const StepView& s, const StepOutputs& out) override {
    stepBegin(s, out);
    stepEnd();
  }

  // Pipelined steps (backend.h): inputs packed into one of two pinned buffers, copied, run (graph or eager), outputs
  // copied into one of two pinned buffers and an event recorded; stepEnd waits for that event and unpacks. With at
  // most two steps begun, a buffer is reused only after the step that used it two begins ago has ended.
  void stepBegin(const StepView& s, const StepOutputs& out) override {
    DSG_CUDA(cudaSetDevice(opt_.deviceId));
    if ((int)pending_.size() >= kMaxStepsInFlight) throw EngineError("LLM_ERR_STEP_INVALID", "too many steps begun");
    bool decodeOnly = true;
    for (int i = 0; i < s.numSeqs; ++i) decodeOnly = decodeOnly && s.seqs[i].qLen == 1;
    const int graphBs = decodeOnly ? graphBatchFor(s.numSeqs) : 0;
    const int rows = graphBs ? graphBs : s.numSeqs;  // sequences (and, for decode, tokens) the kernels see
    const int tokens = graphBs ? graphBs : s.numTokens;
    const int slot = nextSlot_;
    uploadInputs(s, rows, slot);
    // Placeholders: the previous step's samples are the first output plane, still on the device.
    if (placeholders_ > 0)
      cuda::launchResolveTokenFeedback(in<int32_t>(layout_.tokens), s.numTokens, static_cast<const int32_t*>(dOut_), stream_);
    if (graphBs) {
      DSG_CUDA(cudaGraphLaunch(graphFor(graphBs), stream_));
    } else {
      forward(tokens, rows, decodeOnly ? 1 : maxQLen_, kvPool_, poolTensorElems_);
      sample(rows);
    }
    const OutPlanes planes = outPlanes(rows);
    DSG_CUDA(cudaMemcpyAsync(hostOutBuf_[slot], dOut_, s.maxTopN > 0 ? planes.end : planes.endWithoutTop,
                             cudaMemcpyDeviceToHost, stream_));
    // Returned logits go to this slot's device copy on the stream; stepEnd copies them to the caller's (pageable)
    // array once the step is done. A pageable copy issued here would block this thread until the stream reached it,
    // and with a tensor-parallel peer on the same device it held the peer's kernel launches back while this step's
    // collectives waited for them (a hang seen on one H100 at TP 2).
    if (s.returnLogits && out.logits) {
      const size_t bytes = (size_t)s.numSeqs * V_ * sizeof(float);
      if (slotLogitsBytes_[slot] < bytes) {  // stream-ordered: no device-wide synchronisation
        if (slotLogits_[slot]) DSG_CUDA(cudaFreeAsync(slotLogits_[slot], stream_));
        slotLogits_[slot] = nullptr;
        slotLogitsBytes_[slot] = 0;
        DSG_CUDA(cudaMallocAsync(reinterpret_cast<void**>(&slotLogits_[slot]), bytes, stream_));
        slotLogitsBytes_[slot] = bytes;
      }
      DSG_CUDA(cudaMemcpyAsync(slotLogits_[slot], logits_, bytes, cudaMemcpyDeviceToDevice, stream_));
    }
    DSG_CUDA(cudaEventRecord(stepDone_[slot], stream_));
    pending_.push_back(PendingStep{out, rows, s.numSeqs, s.maxTopN, slot, s.returnLogits && out.logits != nullptr});
    nextSlot_ ^= 1;
  }

  void stepEnd() override {
    if (pending_.empty()) throw EngineError("LLM_ERR_STEP_INVALID", "stepEnd: no step was begun");
    const PendingStep p = pending_.front();
    pending_.pop_front();
    DSG_CUDA(cudaSetDevice(opt_.deviceId));
    DSG_CUDA(cudaEventSynchronize(stepDone_[p.slot]));
    checkGroup();
    unpackOutputs(p.numSeqs, p.maxTopN, p.rows, static_cast<const uint8_t*>(hostOutBuf_[p.slot]), p.out);
    if (p.logits)  // the step is done: its slot's copy is complete and no later step writes it
      DSG_CUDA(cudaMemcpy(p.out.logits, slotLogits_[p.slot], (size_t)p.numSeqs * V_ * sizeof(float), cudaMemcpyDeviceToHost));
  }

  bool stepReady() override {
    if (pending_.empty()) return true;
    const cudaError_t e = cudaEventQuery(stepDone_[pending_.front().slot]);
    if (e == cudaErrorNotReady) return false;
    DSG_CUDA(e);
    return true;
  }

  void embed(const int32_t* tokenIds, int32_t n, float* out) override {
    if (n < 1 || n > opt_.maxBatchTokens)
      throw EngineError("LLM_ERR_CONTEXT_LENGTH", "embed: " + std::to_string(n) + " tokens, the engine takes 1.." +
                                                      std::to_string(opt_.maxBatchTokens));
    for (int32_t i = 0; i < n; ++i)
      if (tokenIds[i] < 0 || tokenIds[i] >= V_)
        throw EngineError("LLM_ERR_BAD_REQUEST", "embed: token " + std::to_string(tokenIds[i]) + " at index " +
                                                     std::to_string(i) + " out of range [0, " + std::to_string(V_) + ")");
    DSG_CUDA(cudaSetDevice(opt_.deviceId));
    // A private KV block: embedding never touches the shared pool.
    const EmbedStep step(tokenIds, n, opt_.pageSize);
    const int64_t tensorElems = (int64_t)step.numPages() * opt_.pageSize * KD_;
    // Stream-ordered allocation: cudaFree would wait for the whole device, i.e. for a tensor-parallel peer on the same
    // device whose collective waits for this rank's next step.
    bf16* kv = nullptr;
    DSG_CUDA(cudaMallocAsync(reinterpret_cast<void**>(&kv), (size_t)d_.numLayers * 2 * tensorElems * sizeof(bf16), stream_));
    std::vector<float> hidden((size_t)n * H_);
    try {
      uploadInputs(step.view, 1, nextSlot_);  // no step is begun (the addon's rule): either buffer is free
      forwardLayers(n, 1, maxQLen_, kv, tensorElems);
      cuda::launchRmsNorm(residual_, nullptr, n, H_, finalNorm_, d_.rmsNormEps, xn_, stream_);
      std::vector<bf16> rowsBf((size_t)n * H_);
      DSG_CUDA(cudaMemcpyAsync(rowsBf.data(), xn_, rowsBf.size() * sizeof(bf16), cudaMemcpyDeviceToHost, stream_));
      DSG_CUDA(cudaFreeAsync(kv, stream_));
      kv = nullptr;
      DSG_CUDA(cudaStreamSynchronize(stream_));
      checkGroup();
      for (size_t i = 0; i < rowsBf.size(); ++i) hidden[i] = __bfloat162float(rowsBf[i]);
    } catch (...) {
      if (kv) cudaFreeAsync(kv, stream_);
      throw;
    }
    meanPoolNormalized(hidden.data(), n, H_, out);
  }

  void exportPages(const int32_t* pages, int32_t n, uint8_t* out) override { copyPages(pages, n, out, true); }
  void importPages(const int32_t* pages, int32_t n, const uint8_t* in) override {
    copyPages(pages, n, const_cast<uint8_t*>(in), false);
  }

  // GPU-to-GPU transfer within a node (kv_ipc.h): the whole pool allocation is exported; pulls run on stream_.
  KvIpcPool kvIpcExport() override { return cuda::exportKvPool(localKvPool()); }
  int32_t kvIpcOpen(const KvIpcPool& pool) override {
    if (!ipcPeers_) ipcPeers_ = std::make_unique<cuda::KvIpcPeers>();
    return ipcPeers_->open(pool, localKvPool());
  }
  KvPullStats kvIpcPull(int32_t remote, const int32_t* srcPages, int32_t numSrcPages, int32_t srcToken0, const int32_t* dstPages,
                        int32_t numDstPages, int32_t numTokens) override {
    if (!ipcPeers_) throw EngineError("LLM_ERR_KV_TRANSFER", "KV pool " + std::to_string(remote) + " is not open");
    return ipcPeers_->pull(remote, srcPages, numSrcPages, srcToken0, localKvPool(), dstPages, numDstPages, numTokens, stream_);
  }
  void kvIpcClose(int32_t remote) override {
    if (ipcPeers_) ipcPeers_->close(remote);
  }
  cuda::LocalKvPool localKvPool() const {
    return cuda::LocalKvPool{kvPool_, 2 * (int64_t)d_.numLayers, poolTensorElems_, KD_, numPages_, opt_.pageSize, opt_.deviceId};
  }

 private:
  // ---- loading ----
  /** Copies one host tensor (any dtype) to dst as bf16, through the staging buffer when it needs converting. */
  void uploadBf16(const HostTensor& t, bf16* dst, void* staging, size_t stagingBytes) {
    const int64_t n = t.numel();
    if (t.dtype == DType::BF16) {
      DSG_CUDA(cudaMemcpy(dst, t.data, (size_t)n * 2, cudaMemcpyHostToDevice));
      return;
    }
    const size_t es = dtypeSize(t.dtype);
    const int64_t chunk = (int64_t)(stagingBytes / es);
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t m = std::min(chunk, n - i);
      DSG_CUDA(cudaMemcpy(staging, static_cast<const uint8_t*>(t.data) + i * es, (size_t)m * es, cudaMemcpyHostToDevice));
      cuda::launchToBf16(staging, t.dtype == DType::F16, m, dst + i, nullptr);
    }
    DSG_CUDA(cudaDeviceSynchronize());
  }

  void loadWeights(const ModelWeights& w) {
    const bool tied = d_.tieWordEmbeddings || w.lmHead.data == w.embed.data;
    DeviceArena& a = weights_;
    const size_t H = H_, L = d_.numLayers;
    // One reserve per take below, in the same order (each piece is aligned separately).
    a.reserve((size_t)vocabRows_ * H * 2);  // embed (this rank's vocab rows)
    if (!tied) a.reserve((size_t)vocabRows_ * H * 2);
    a.reserve(H * 2);  // final norm
    for (size_t l = 0; l < L; ++l) {
      a.reserve(H * 2);
      a.reserve(H * 2);
      a.reserve((size_t)QKV_ * H * 2);
      if (d_.qkvBias) a.reserve((size_t)QKV_ * 2);
      if (d_.qkNorm) {
        a.reserve((size_t)D_ * 2);
        a.reserve((size_t)D_ * 2);
      }
      a.reserve((size_t)QD_ * H * 2);
      a.reserve((size_t)2 * I_ * H * 2);
      a.reserve((size_t)I_ * H * 2);
    }
    a.reserve((size_t)(D_ / 2) * 4);  // RoPE inverse frequencies
    a.allocate("weights");
    weightsBytes_ = (int64_t)a.bytes();

    const size_t stagingBytes = 64u << 20;
    void* staging = nullptr;
    DSG_CUDA(cudaMalloc(&staging, stagingBytes));
    try {
      embed_ = a.take<bf16>((size_t)vocabRows_ * H);
      uploadBf16(w.embed, embed_, staging, stagingBytes);
      if (tied) {
        lmHead_ = embed_;
      } else {
        lmHead_ = a.take<bf16>((size_t)vocabRows_ * H);
        uploadBf16(w.lmHead, lmHead_, staging, stagingBytes);
      }
      finalNorm_ = a.take<bf16>(H);
      uploadBf16(w.finalNorm, finalNorm_, staging, stagingBytes);
      for (size_t l = 0; l < L; ++l) {
        const LayerWeights& S = w.layers[l];
        LayerDev Ld{};
        Ld.inputNorm = a.take<bf16>(H);
        uploadBf16(S.inputNorm, Ld.inputNorm, staging, stagingBytes);
        Ld.postAttnNorm = a.take<bf16>(H);
        uploadBf16(S.postAttnNorm, Ld.postAttnNorm, staging, stagingBytes);
        // Fused QKV: rows [q; k; v] of [QKV, hidden]; the GEMM output row is then q | k | v per token.
        Ld.qkv = a.take<bf16>((size_t)QKV_ * H);
        uploadBf16(S.q, Ld.qkv, staging, stagingBytes);
        uploadBf16(S.k, Ld.qkv + QD_ * H, staging, stagingBytes);
        uploadBf16(S.v, Ld.qkv + (QD_ + KD_) * H, staging, stagingBytes);
        Ld.qkvBias = nullptr;
        if (d_.qkvBias) {
          Ld.qkvBias = a.take<bf16>(QKV_);
          uploadBf16(S.qBias, Ld.qkvBias, staging, stagingBytes);
          uploadBf16(S.kBias, Ld.qkvBias + QD_, staging, stagingBytes);
          uploadBf16(S.vBias, Ld.qkvBias + QD_ + KD_, staging, stagingBytes);
        }
        Ld.qNorm = Ld.kNorm = nullptr;
        if (d_.qkNorm) {
          Ld.qNorm = a.take<bf16>(D_);
          uploadBf16(S.qNorm, Ld.qNorm, staging, stagingBytes);
          Ld.kNorm = a.take<bf16>(D_);
          uploadBf16(S.kNorm, Ld.kNorm, staging, stagingBytes);
        }
        Ld.o = a.take<bf16>((size_t)H * QD_);
        uploadBf16(S.o, Ld.o, staging, stagingBytes);
        // Fused gate|up: rows [gate; up] of [2 * inter, hidden].
        Ld.gateUp = a.take<bf16>((size_t)2 * I_ * H);
        uploadBf16(S.gate, Ld.gateUp, staging, stagingBytes);
        uploadBf16(S.up, Ld.gateUp + I_ * H, staging, stagingBytes);
        Ld.down = a.take<bf16>((size_t)H * I_);
        uploadBf16(S.down, Ld.down, staging, stagingBytes);
        layers_.push_back(Ld);
      }
    } catch (...) {
      cudaFree(staging);
      throw;
    }
    cudaFree(staging);

    const std::vector<float> inv = ropeInverseFrequencies(d_);
    invFreq_ = a.take<float>(inv.size());
    DSG_CUDA(cudaMemcpy(invFreq_, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
  }

  // Split-KV blocks per (sequence, KV head) of a decode step. Shapes on the decode kernel's fast path split inside
  // one launch (a thread-block cluster sized from the batch, no merge kernel), so they take 1.
  int splitsFor(int seqs) const {
    if (cuda::decodeAttentionFastPath(heads_, kvHeads_, (int)D_)) return 1;
    const int want = (2 * prop_.multiProcessorCount + seqs * kvHeads_ - 1) / (seqs * kvHeads_);
    return std::max(1, std::min(kMaxSplits, want));
  }

  void allocateWorkspace() {
    const size_t T = opt_.maxBatchTokens, S = opt_.maxSeqsPerStep;
    maxGraphBatch_ = std::min<int>({kMaxGraphBatch, opt_.maxSeqsPerStep, opt_.maxBatchTokens});
    // Page-table capacity: every sequence of a full step at the model's maximum length.
    const int64_t maxLen = std::max(d_.maxPositionEmbeddings, opt_.maxBatchTokens);
    pageCap_ = (int64_t)S * ((maxLen + opt_.pageSize - 1) / opt_.pageSize) + S;
    InputLayout& L = layout_;
    size_t off = 0;
    auto place = [&](size_t bytes) {
      const size_t at = off;
      off += alignUp(bytes);
      return at;
    };
    L.tokens = place(T * 4);
    L.positions = place(T * 4);
    L.slots = place(T * 4);
    L.lastRows = place(S * 4);
    L.records = place(S * sizeof(int4));
    L.params = place(S * sizeof(cuda::SampleParams));
    L.banned = place(S * MAX_BANNED_TOKENS * 4);  // [S, MAX_BANNED_TOKENS] ids, -1 padded (before the pages: always copied)
    L.maskRows = place(S * 4);  // [S] row of the grammar bitmask table, -1 = unconstrained (always copied)
    L.pages = place((size_t)pageCap_ * 4);
    L.total = off;
    int maxPartRows = 0;  // split-KV partials: decode steps only (tokens == sequences)
    for (int bs = 1; bs <= std::max<int>(S, 1); ++bs) maxPartRows = std::max(maxPartRows, bs * splitsFor(bs));
    DeviceArena& a = work_;
    a.reserve(L.total);
    a.reserve(T * H_ * 4);          // residual
    a.reserve(T * H_ * 2);          // xn
    a.reserve(T * QKV_ * 2);        // qkv
    a.reserve(T * QD_ * 2);         // q
    a.reserve(T * QD_ * 2);         // attention output
    a.reserve(T * 2 * I_ * 2);      // gate|up
    a.reserve(T * I_ * 2);          // SiLU*mul
    a.reserve((size_t)(H_ / 32) * std::min<size_t>(T, cuda::kDecodeGemmMaxTokens) * 4);  // ssq
    a.reserve(S * H_ * 2);          // last hidden
    a.reserve(S * (size_t)V_ * 4);  // logits
    a.reserve((size_t)maxPartRows * QD_ * 4);
    a.reserve((size_t)maxPartRows * heads_ * 4);
    a.reserve(outPlanes((int)S).end);
    a.reserve(cuda::sampleScratchBytes((int)S));
    a.reserve((size_t)S * ((V_ + 31) / 32) * 4);  // grammar bitmask table
    if (opt_.tp.size > 1) a.reserve(T * H_ * 4);  // partial sums of the row-parallel linears
    a.allocate("workspace");
    dIn_ = a.take<uint8_t>(L.total);
    residual_ = a.take<float>(T * H_);
    xn_ = a.take<bf16>(T * H_);
    qkv_ = a.take<bf16>(T * QKV_);
    q_ = a.take<bf16>(T * QD_);
    attnOut_ = a.take<bf16>(T * QD_);
    gateUp_ = a.take<bf16>(T * 2 * I_);
    act_ = a.take<bf16>(T * I_);
    ssq_ = a.take<float>((size_t)(H_ / 32) * std::min<size_t>(T, cuda::kDecodeGemmMaxTokens));
    lastHidden_ = a.take<bf16>(S * H_);
    logits_ = a.take<float>(S * (size_t)V_);
    partO_ = a.take<float>((size_t)maxPartRows * QD_);
    partLse_ = a.take<float>((size_t)maxPartRows * heads_);
    dOut_ = a.take<uint8_t>(outPlanes((int)S).end);
    sampleScratch_ = a.take<int32_t>(cuda::sampleScratchBytes((int)S) / sizeof(int32_t));
    maskWords_ = (V_ + 31) / 32;
    dMasks_ = a.take<int32_t>((size_t)S * maskWords_);
    if (opt_.tp.size > 1) {
      tpPartial_ = a.take<float>(T * H_);
      DSG_CUDA(cudaMemset(tpPartial_, 0, T * H_ * 4));  // the all-reduces leave it zero after every use
    }
    for (int i = 0; i < 2; ++i) {
      DSG_CUDA(cudaMallocHost(&hostInBuf_[i], L.total));
      DSG_CUDA(cudaMallocHost(&hostOutBuf_[i], outPlanes((int)S).end));
      DSG_CUDA(cudaMallocHost(&hostMaskBuf_[i], (size_t)S * maskWords_ * 4));
      DSG_CUDA(cudaEventCreateWithFlags(&stepDone_[i], cudaEventDisableTiming));
    }
    workspaceBytes_ = (int64_t)a.bytes() + (int64_t)gemm_->workspaceBytes();
  }

  void allocateKvPool() {
    const int P = opt_.pageSize;
    const int64_t pageElems = (int64_t)P * KD_;
    bytesPerPage_ = (int64_t)d_.numLayers * 2 * pageElems * 2;
    numPages_ = opt_.numPages;
    if (numPages_ <= 0) {
      size_t freeB = 0, totalB = 0;
      DSG_CUDA(cudaMemGetInfo(&freeB, &totalB));
      // memFractionStatic of the card for weights + KV pool (as SGLang): whatever is in use now already counts.
      const double reserve = 256.0 * 1048576;  // CUDA graphs, cuBLAS kernels, the embed path's private KV
      const double budget = std::min((double)totalB * opt_.memFractionStatic - (double)(totalB - freeB),
                                     (double)freeB - reserve);
      const double useful = std::ceil((double)opt_.maxSeqsPerStep * std::max(d_.maxPositionEmbeddings, 1) / P) + 1;
      numPages_ = (int64_t)std::min({budget / (double)bytesPerPage_ - 1, useful, (double)std::numeric_limits<int32_t>::max() - 1});
      if (numPages_ < 1)
        throw EngineError("LLM_ERR_OUT_OF_MEMORY", "memFractionStatic " + std::to_string(opt_.memFractionStatic) +
                                                       " of device memory leaves no room for a KV page after the weights (" +
                                                       std::to_string(weightsBytes_) + " bytes) and workspace (" +
                                                       std::to_string(workspaceBytes_) + " bytes)");
    }
    poolTensorElems_ = (numPages_ + 1) * pageElems;  // + the padding page
    kvPoolBytes_ = numPages_ * bytesPerPage_;
    const size_t bytes = (size_t)d_.numLayers * 2 * poolTensorElems_ * sizeof(bf16);
    const cudaError_t err = cudaMalloc(&kvPool_, bytes);
    if (err != cudaSuccess)
      throw EngineError("LLM_ERR_OUT_OF_MEMORY", "cannot allocate the KV pool (" + std::to_string(bytes) + " bytes, " +
                                                     std::to_string(numPages_) + " pages): " + cudaGetErrorString(err));
    // Zeroed once, so a page read before it is written holds finite values (never stale NaNs).
    DSG_CUDA(cudaMemset(kvPool_, 0, bytes));
  }

  // ---- a step ----
  int graphBatchFor(int numSeqs) const {
    if (numSeqs > maxGraphBatch_) return 0;
    for (int bs : kGraphSizes)
      if (bs >= numSeqs) return std::min(bs, maxGraphBatch_);
    return maxGraphBatch_;
  }

  /** Captures every decode graph at start-up and replays each once on padding rows only, so graph instantiation,
   *  upload and kernel module loading (10-15 ms per size) happen here rather than in the first steps of each size.
   *  DSG_NO_GRAPH_WARMUP=1 (kernel profiling: ncu then sees only the steps asked for) skips the replays. With tensor
   *  parallelism every rank captures all its graphs before any rank replays one: a replay's collectives wait for the
   *  peers, and a peer still capturing may load kernel modules, which can wait for the whole device. */
  void captureDecodeGraphs() {
    const bool warmup = !envIsOne("DSG_NO_GRAPH_WARMUP");
    std::vector<int> sizes;
    for (int bs : kGraphSizes)
      if (bs <= maxGraphBatch_) sizes.push_back(bs);
    if (sizes.empty() || sizes.back() != maxGraphBatch_) sizes.push_back(maxGraphBatch_);
    for (int bs : sizes) graphFor(bs);
    if (group_) group_->barrier(opt_.tp.rank);
    StepView padding{};
    padding.pageSize = opt_.pageSize;
    if (warmup)
      for (int bs : sizes) {
        uploadInputs(padding, bs, nextSlot_);
        DSG_CUDA(cudaGraphLaunch(graphFor(bs), stream_));
      }
    DSG_CUDA(cudaStreamSynchronize(stream_));
    checkGroup();
  }

  /** Tensor parallelism: the collectives (all_reduce.h) over buffers every rank maps. Staging for up to 1024 tokens of
   *  hidden state per launch (every decode graph's all-reduce is one launch); the gather source holds this rank's
   *  vocab columns of a full step's logits. */
  void connectGroup() {
    cuda::TpCommOptions c;
    c.rank = opt_.tp.rank;
    c.size = opt_.tp.size;
    c.deviceId = opt_.deviceId;
    c.group = opt_.tp.group;
    c.timeoutSec = opt_.tp.timeoutSec;
    c.chunkFloats = (size_t)std::min(opt_.maxBatchTokens, 1024) * H_;
    c.gatherFloats = (size_t)opt_.maxSeqsPerStep * vocabRows_;
    c.vocabStart = vocabStart_;
    c.vocabSize = vocabRows_;
    c.customAllReduce = opt_.tp.customAllReduce;
    comm_ = std::make_unique<cuda::TpComm>(*group_, c);
    // Ranks sharing a device (single-GPU proof of the path): the fused decode GEMM's clusters of up to 16 blocks may
    // not fit beside a peer's collective waiting for this rank, which would wait out the timeout; cuBLAS instead.
    if (comm_->sharesDevice()) decodeGemm_ = false;
    // Nor may cuBLAS size a persistent (stream-K) GEMM for every SM: its CTAs wait for each other, and the SMs a peer's
    // collective holds while it waits for this rank would keep some of them from ever starting (a hang until the
    // collective's timeout, seen on one H100 at TP 2).
    if (comm_->sharesDevice())
      gemm_->setSmCountTarget(std::max(1, prop_.multiProcessorCount - opt_.tp.size * comm_->maxBlocks()));
    if (comm_->vocabTotal() != V_)
      throw EngineError("LLM_ERR_CONFIG", "tp ranks' vocab shards cover " + std::to_string(comm_->vocabTotal()) +
                                              " rows, the model has " + std::to_string(V_));
  }

  /** After a synchronisation: whether a collective of this group gave up (a peer timed out, failed or closed). */
  void checkGroup() const {
    if (!comm_) return;
    const int by = comm_->abortedBy();
    if (by == 0) return;
    std::string why = "a rank of the group closed or failed";
    if (by > 0)
      why = "tp rank " + std::to_string((by - 1) / cuda::kMaxTpRanks) + " gave up waiting for rank " +
            std::to_string((by - 1) % cuda::kMaxTpRanks) + " after " + std::to_string(opt_.tp.timeoutSec) + " s";
    throw EngineError("LLM_ERR_TP_ABORTED", "tensor-parallel group " + opt_.tp.group + " (rank " +
                                                std::to_string(opt_.tp.rank) + "): " + why);
  }

  /** Packs a step into pinned input buffer `slot` and queues its copy to the device input buffer. */
  void uploadInputs(const StepView& s, int rows, int slot) {
    packInputs(s, rows, static_cast<uint8_t*>(hostInBuf_[slot]), static_cast<int32_t*>(hostMaskBuf_[slot]));
    DSG_CUDA(cudaMemcpyAsync(dIn_, hostInBuf_[slot], inputBytesUsed_, cudaMemcpyHostToDevice, stream_));
    // Only the masked rows' bitmasks travel (none for an unconstrained step); in stream order, so the table a step
    // reads is the one its own begin wrote.
    if (s.numMasked > 0)
      DSG_CUDA(cudaMemcpyAsync(dMasks_, hostMaskBuf_[slot], (size_t)s.numMasked * maskWords_ * 4, cudaMemcpyHostToDevice, stream_));
  }

  /** Fills pinned input buffer `h`; rows >= numSeqs are padding decode slots writing to the padding page. */
  void packInputs(const StepView& s, int rows, uint8_t* h, int32_t* hostMasks) {
    int32_t* tokens = reinterpret_cast<int32_t*>(h + layout_.tokens);
    int32_t* positions = reinterpret_cast<int32_t*>(h + layout_.positions);
    int32_t* slots = reinterpret_cast<int32_t*>(h + layout_.slots);
    int32_t* lastRows = reinterpret_cast<int32_t*>(h + layout_.lastRows);
    int4* records = reinterpret_cast<int4*>(h + layout_.records);
    cuda::SampleParams* params = reinterpret_cast<cuda::SampleParams*>(h + layout_.params);
    int32_t* banned = reinterpret_cast<int32_t*>(h + layout_.banned);
    int32_t* maskRows = reinterpret_cast<int32_t*>(h + layout_.maskRows);
    int numMasked = 0;
    int32_t* pages = reinterpret_cast<int32_t*>(h + layout_.pages);
    const int P = s.pageSize;
    int64_t numEntries = 0;
    maxQLen_ = 1;
    placeholders_ = 0;
    for (int i = 0; i < s.numSeqs; ++i) {
      const SeqView& q = s.seqs[i];
      maxQLen_ = std::max(maxQLen_, q.qLen);
      records[i] = make_int4(q.qStart, q.qLen, q.kvLen, (int)numEntries);
      std::memcpy(pages + numEntries, q.pages, (size_t)q.numPages * 4);
      numEntries += q.numPages;
      lastRows[i] = q.qStart + q.qLen - 1;
      for (int j = 0; j < q.qLen; ++j) {
        const int t = q.qStart + j, pos = q.startPos() + j;
        tokens[t] = s.tokens[t];
        placeholders_ += s.tokens[t] < 0;
        positions[t] = pos;
        slots[t] = q.pages[pos / P] * P + pos % P;
      }
      const SamplingParams& sp = q.sampling;
      params[i] = cuda::SampleParams{sp.temperature, sp.topP, sp.minP, sp.topK, (uint32_t)sp.seed,
                                     (uint32_t)(sp.seed >> 32), sp.logprobs, sp.outputIndex, q.sample ? 1 : 0};
      int32_t* rowBanned = banned + (size_t)i * MAX_BANNED_TOKENS;
      std::copy(q.banned, q.banned + q.bannedCount, rowBanned);
      std::fill(rowBanned + q.bannedCount, rowBanned + MAX_BANNED_TOKENS, -1);
      if (q.mask) {
        std::memcpy(hostMasks + (size_t)numMasked * maskWords_, q.mask, (size_t)maskWords_ * 4);
        maskRows[i] = numMasked++;
      } else {
        maskRows[i] = -1;
      }
    }
    if (rows > s.numSeqs) {
      const int padEntry = (int)numEntries;
      pages[numEntries++] = (int32_t)numPages_;  // the padding page
      for (int i = s.numSeqs; i < rows; ++i) {
        records[i] = make_int4(i, 1, 1, padEntry);
        lastRows[i] = i;
        tokens[i] = 0;
        positions[i] = 0;
        slots[i] = (int32_t)(numPages_ * P);
        params[i] = cuda::SampleParams{0.f, 1.f, 0.f, 0, 0u, 0u, -1, 0, 0};
        std::fill(banned + (size_t)i * MAX_BANNED_TOKENS, banned + (size_t)(i + 1) * MAX_BANNED_TOKENS, -1);
        maskRows[i] = -1;
      }
    }
    // Decode attention dispatches its blocks in record order: longest first, so the long sequences of a
    // variable-length batch start early instead of forming the tail (H200: up to 1.3x at 128-256 sequences). A mixed
    // step lists its chunks' records first (prefill attention) and its one-token rows after them (decode attention:
    // the prefill kernel spends a 64-row query tile on each of them, 4x the time of the whole step's decode rows).
    int4* const oneToken = maxQLen_ > 1 ? std::stable_partition(records, records + rows, [](const int4& r) { return r.y > 1; })
                                        : records;
    chunkRecords_ = (int)(oneToken - records);
    std::stable_sort(oneToken, records + rows, [](const int4& a, const int4& b) { return a.z > b.z; });
    inputBytesUsed_ = layout_.pages + (size_t)numEntries * 4;
  }

  template <class T>
  T* in(size_t offset) const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(dIn_) + offset);
  }

  /** All layers over `tokens` tokens of `seqs` sequences; leaves the residual stream in residual_. */
  void forwardLayers(int tokens, int seqs, int maxQLen, bf16* kvBase, int64_t tensorElems) {
    const float eps = d_.rmsNormEps;
    const int splits = maxQLen == 1 ? splitsFor(seqs) : 1;
    const cuda::RopeArgs rope{invFreq_, d_.ropeLayout == RopeLayout::Interleaved};
    const float scale = 1.f / std::sqrt((float)D_);
    // The records in packInputs' order (one-token rows longest first); the kernels key outputs by qStart.
    const int4* records = in<int4>(layout_.records);
    const int32_t* pageTable = in<int32_t>(layout_.pages);
    // Mixed steps: chunks through prefill attention, one-token rows through the decode kernel (packInputs' order).
    const int chunks = maxQLen == 1 ? 0 : chunkRecords_;
    const bool splitMixed = chunks > 0 && chunks < seqs && cuda::decodeAttentionFastPath(heads_, kvHeads_, (int)D_);
    const cuda::AttnBatch batch{records, pageTable, splitMixed ? chunks : seqs, maxQLen, opt_.pageSize};
    const cuda::AttnBatch oneTokenRows{records + chunks, pageTable, seqs - chunks, 1, opt_.pageSize};
    const auto attend = [&](bf16* kCache, bf16* vCache) {
      cuda::launchAttention(q_, kCache, vCache, batch, tokens, heads_, kvHeads_, D_, scale, splits, attnOut_,
                            partO_, partLse_, stream_);
      if (splits > 1)
        cuda::launchAttentionMerge(partO_, partLse_, splits, tokens, heads_, D_, attnOut_, stream_);
      if (splitMixed)
        cuda::launchAttention(q_, kCache, vCache, oneTokenRows, tokens, heads_, kvHeads_, D_, scale, 1,
                              attnOut_, partO_, partLse_, stream_);
    };
    // Few tokens (decode at small batch): fused GEMV kernels (gemv.cu) read each weight once with the norm / SiLU
    // folded into their input and the residual add into their output; cuBLAS above the crossover.
    const bool small = tokens <= cuda::kGemvCrossoverTokens;
    const bool gemvQkv = small && cuda::gemvSupports(tokens, (int)QKV_, H_);
    const bool gemvO = small && cuda::gemvSupports(tokens, H_, (int)QD_);
    const bool gemvGateUp = small && cuda::gemvSupports(tokens, (int)(2 * I_), H_);
    const bool gemvDown = small && cuda::gemvSupports(tokens, H_, (int)I_);
    // The row-parallel outputs (O, down) go to rowOut: the residual itself, or with tensor parallelism this rank's
    // partial sums, which reduceRows then adds into the residual.
    float* const rowOut = comm_ ? tpPartial_ : residual_;
    if (comm_) {
      cuda::launchEmbedGather(in<int32_t>(layout_.tokens), tokens, embed_, H_, vocabStart_, vocabRows_, tpPartial_, stream_);
      comm_->allReduce(tpPartial_, residual_, (int64_t)tokens * H_, cuda::ReduceOut::Store, stream_);
    } else {
      cuda::launchEmbedGather(in<int32_t>(layout_.tokens), tokens, embed_, H_, 0, V_, residual_, stream_);
    }
    if (!small && useDecodeGemm(tokens)) {
      forwardLayersDecodeGemm(tokens, rope, kvBase, tensorElems, attend);
      return;
    }
    for (int l = 0; l < d_.numLayers; ++l) {
      const LayerDev& L = layers_[l];
      bf16* kCache = kvBase + (int64_t)(2 * l) * tensorElems;
      bf16* vCache = kvBase + (int64_t)(2 * l + 1) * tensorElems;
      if (gemvQkv) {
        cuda::launchGemv({cuda::GemvInputKind::RmsNorm, residual_, L.inputNorm, eps}, L.qkv, tokens, (int)QKV_, H_, qkv_,
                         nullptr, kGemvOverlap, stream_);
      } else {
        cuda::launchRmsNorm(residual_, nullptr, tokens, H_, L.inputNorm, eps, xn_, stream_);
        gemm_->linearBf16(xn_, L.qkv, qkv_, tokens, (int)QKV_, H_);
      }
      cuda::launchQkNormRopeKvWrite(qkv_, L.qkvBias, L.qNorm, L.kNorm, eps, in<int32_t>(layout_.positions),
                                    in<int32_t>(layout_.slots), tokens, heads_, kvHeads_, D_, rope, q_,
                                    kCache, vCache, stream_);
      attend(kCache, vCache);
      if (gemvO)
        cuda::launchGemv({cuda::GemvInputKind::Bf16, attnOut_, nullptr, 0.f}, L.o, tokens, H_, (int)QD_, nullptr,
                         rowOut, kGemvOverlap, stream_);
      else
        gemm_->linearF32(attnOut_, L.o, rowOut, tokens, H_, (int)QD_, comm_ ? 0.f : 1.f);
      reduceRows(tokens);
      if (gemvGateUp) {
        cuda::launchGemv({cuda::GemvInputKind::RmsNorm, residual_, L.postAttnNorm, eps}, L.gateUp, tokens,
                         (int)(2 * I_), H_, gateUp_, nullptr, kGemvOverlap, stream_);
      } else {
        cuda::launchRmsNorm(residual_, nullptr, tokens, H_, L.postAttnNorm, eps, xn_, stream_);
        gemm_->linearBf16(xn_, L.gateUp, gateUp_, tokens, (int)(2 * I_), H_);
      }
      if (gemvDown) {
        cuda::launchGemv({cuda::GemvInputKind::SiluMul, gateUp_, nullptr, 0.f}, L.down, tokens, H_, (int)I_, nullptr,
                         rowOut, kGemvOverlap, stream_);
      } else {
        cuda::launchSiluMul(gateUp_, tokens, (int)I_, act_, stream_);
        gemm_->linearF32(act_, L.down, rowOut, tokens, H_, (int)I_, comm_ ? 0.f : 1.f);
      }
      reduceRows(tokens);
    }
  }

  /** Tensor parallelism: residual += the sum over ranks of tpPartial_ (left zero for the next accumulation). */
  void reduceRows(int tokens) {
    if (comm_) comm_->allReduce(tpPartial_, residual_, (int64_t)tokens * H_, cuda::ReduceOut::Add, stream_);
  }

  /** Whether a step of `tokens` tokens runs its linears through decode_gemm.cu (enabled, all four shapes supported). */
  bool useDecodeGemm(int tokens) const {
    return decodeGemm_ && tokens <= cuda::kDecodeGemmPreferredMaxTokens &&
           cuda::decodeGemmSupports(tokens, (int)QKV_, H_) && cuda::decodeGemmSupports(tokens, H_, (int)QD_) &&
           cuda::decodeGemmSupports(tokens, (int)(2 * I_), H_) && cuda::decodeGemmSupports(tokens, H_, (int)I_);
  }

  /**
   * forwardLayers through decode_gemm.cu: six kernels a layer (qkv, q/k-norm+RoPE, attention, o, gate|up, down) instead
   * of nine, all with programmatic dependent launch. The residual-adding linears (o, down) also write the next RMSNorm's input
   * bf16(residual * weight) into xn_ and the residual's partial sums of squares into ssq_; the linear that reads xn_
   * scales its output rows by the norm. Layer 0's input comes from the RMSNorm kernel. Used up to
   * kDecodeGemmPreferredMaxTokens tokens, where it beats cuBLAS and its neighbour kernels (NOTES-decode-gemm.md).
   * With tensor parallelism o and down add into tpPartial_ instead (no norm epilogue: the residual is complete only
   * after the all-reduce), and the RMSNorm kernel writes the next linear's input after each all-reduce.
   */
  template <class Attend>
  void forwardLayersDecodeGemm(int tokens, const cuda::RopeArgs& rope, bf16* kvBase, int64_t tensorElems,
                               const Attend& attend) {
    const float eps = d_.rmsNormEps;
    using Out = cuda::DecodeGemmOut;
    cuda::launchRmsNorm(residual_, nullptr, tokens, H_, layers_[0].inputNorm, eps, xn_, stream_);
    const bool tp = comm_ != nullptr;
    float* const rowOut = tp ? tpPartial_ : residual_;
    float* const ssqIn = tp ? nullptr : ssq_;  // whether xn_ still needs its rows scaled by the norm
    for (int l = 0; l < d_.numLayers; ++l) {
      const LayerDev& L = layers_[l];
      bf16* kCache = kvBase + (int64_t)(2 * l) * tensorElems;
      bf16* vCache = kvBase + (int64_t)(2 * l + 1) * tensorElems;
      cuda::launchDecodeGemm({xn_, l == 0 ? nullptr : ssqIn, eps, Out::Bf16, qkv_, nullptr, nullptr, nullptr, nullptr},
                             L.qkv, tokens, (int)QKV_, H_, stream_);
      cuda::launchQkNormRopeKvWrite(qkv_, L.qkvBias, L.qNorm, L.kNorm, eps, in<int32_t>(layout_.positions),
                                    in<int32_t>(layout_.slots), tokens, heads_, kvHeads_, D_, rope, q_,
                                    kCache, vCache, stream_);
      attend(kCache, vCache);
      if (tp) {
        cuda::launchDecodeGemm({attnOut_, nullptr, eps, Out::AddResidual, nullptr, rowOut, nullptr, nullptr, nullptr},
                               L.o, tokens, H_, (int)QD_, stream_);
        reduceRows(tokens);
        cuda::launchRmsNorm(residual_, nullptr, tokens, H_, L.postAttnNorm, eps, xn_, stream_);
      } else {
        cuda::launchDecodeGemm({attnOut_, nullptr, eps, Out::AddResidual, nullptr, residual_, L.postAttnNorm, xn_, ssq_},
                               L.o, tokens, H_, (int)QD_, stream_);
      }
      cuda::launchDecodeGemm({xn_, ssqIn, eps, Out::SiluGateUp, act_, nullptr, nullptr, nullptr, nullptr}, L.gateUp,
                             tokens, (int)(2 * I_), H_, stream_);
      const bf16* nextNorm = l + 1 < d_.numLayers ? layers_[l + 1].inputNorm : nullptr;
      if (tp) {
        cuda::launchDecodeGemm({act_, nullptr, eps, Out::AddResidual, nullptr, rowOut, nullptr, nullptr, nullptr},
                               L.down, tokens, H_, (int)I_, stream_);
        reduceRows(tokens);
        if (nextNorm) cuda::launchRmsNorm(residual_, nullptr, tokens, H_, nextNorm, eps, xn_, stream_);
      } else {
        cuda::launchDecodeGemm({act_, nullptr, eps, Out::AddResidual, nullptr, residual_, nextNorm,
                                nextNorm ? xn_ : nullptr, nextNorm ? ssq_ : nullptr},
                               L.down, tokens, H_, (int)I_, stream_);
      }
    }
  }

  void forward(int tokens, int seqs, int maxQLen, bf16* kvBase, int64_t tensorElems) {
    forwardLayers(tokens, seqs, maxQLen, kvBase, tensorElems);
    cuda::launchRmsNorm(residual_, in<int32_t>(layout_.lastRows), seqs, H_, finalNorm_, d_.rmsNormEps, lastHidden_, stream_);
    if (comm_) {  // this rank's vocab columns, then every rank's gathered into the full logits
      gemm_->linearF32(lastHidden_, lmHead_, comm_->gatherSource(), seqs, vocabRows_, H_, 0.f);
      comm_->allGatherVocab(seqs, logits_, stream_);
    } else {
      gemm_->linearF32(lastHidden_, lmHead_, logits_, seqs, V_, H_, 0.f);
    }
  }

  /** The output region for `rows` sequences: four planes (tokens, logprobs, top ids, top logprobs). */
  struct OutPlanes {
    size_t tokens, logprobs, topIds, topLogprobs, end, endWithoutTop;
  };
  static OutPlanes outPlanes(int rows) {
    OutPlanes p;
    p.tokens = 0;
    p.logprobs = alignUp((size_t)rows * 4);
    p.endWithoutTop = p.topIds = 2 * alignUp((size_t)rows * 4);
    p.topLogprobs = p.topIds + alignUp((size_t)rows * MAX_TOP_LOGPROBS * 4);
    p.end = p.topLogprobs + alignUp((size_t)rows * MAX_TOP_LOGPROBS * 4);
    return p;
  }

  void sample(int rows) {
    uint8_t* o = static_cast<uint8_t*>(dOut_);
    const OutPlanes p = outPlanes(rows);
    cuda::launchMaskBanned(logits_, rows, V_, in<int32_t>(layout_.banned), MAX_BANNED_TOKENS, stream_);
    cuda::launchMaskBitmask(logits_, rows, V_, in<int32_t>(layout_.maskRows), dMasks_, maskWords_, stream_);
    cuda::launchSample(logits_, rows, V_, in<cuda::SampleParams>(layout_.params), MAX_TOP_LOGPROBS,
                       reinterpret_cast<int32_t*>(o + p.tokens), reinterpret_cast<float*>(o + p.logprobs),
                       reinterpret_cast<int32_t*>(o + p.topIds), reinterpret_cast<float*>(o + p.topLogprobs),
                       stream_, sampleScratch_);
  }

  void unpackOutputs(int numSeqs, int maxTopN, int rows, const uint8_t* o, const StepOutputs& out) const {
    const OutPlanes p = outPlanes(rows);
    const int32_t* tokens = reinterpret_cast<const int32_t*>(o + p.tokens);
    const float* logprobs = reinterpret_cast<const float*>(o + p.logprobs);
    const int32_t* topIds = reinterpret_cast<const int32_t*>(o + p.topIds);
    const float* topLp = reinterpret_cast<const float*>(o + p.topLogprobs);
    for (int i = 0; i < numSeqs; ++i) {
      out.tokens[i] = tokens[i];
      out.logprobs[i] = logprobs[i];
      for (int j = 0; j < maxTopN; ++j) {
        out.topIds[(int64_t)i * maxTopN + j] = topIds[(int64_t)i * MAX_TOP_LOGPROBS + j];
        out.topLogprobs[(int64_t)i * maxTopN + j] = topLp[(int64_t)i * MAX_TOP_LOGPROBS + j];
      }
    }
  }

  cudaGraphExec_t graphFor(int bs) {
    auto it = graphs_.find(bs);
    if (it != graphs_.end()) return it->second;
    cudaGraph_t graph = nullptr;
    DSG_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      forward(bs, bs, 1, kvPool_, poolTensorElems_);
      sample(bs);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    DSG_CUDA(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    DSG_CUDA(err);
    graphs_[bs] = exec;
    return exec;
  }

  void copyPages(const int32_t* pages, int32_t n, uint8_t* host, bool toHost) {
    if (n <= 0) return;
    DSG_CUDA(cudaSetDevice(opt_.deviceId));
    for (int32_t i = 0; i < n; ++i)
      if (pages[i] < 0 || pages[i] >= numPages_)
        throw EngineError("LLM_ERR_KV_TRANSFER", "page " + std::to_string(pages[i]) + " at index " + std::to_string(i) +
                                                     " out of range [0, " + std::to_string(numPages_) + ")");
    const int64_t pageElems = (int64_t)opt_.pageSize * KD_;
    const int32_t chunk = (int32_t)std::max<int64_t>(1, std::min<int64_t>(n, (256LL << 20) / bytesPerPage_));
    // Stream-ordered allocations (see embed: cudaFree waits for the whole device).
    bf16* staging = nullptr;
    int32_t* dPages = nullptr;
    DSG_CUDA(cudaMallocAsync(reinterpret_cast<void**>(&staging), (size_t)chunk * bytesPerPage_, stream_));
    const cudaError_t e2 = cudaMallocAsync(reinterpret_cast<void**>(&dPages), (size_t)chunk * 4, stream_);
    if (e2 != cudaSuccess) {
      cudaFreeAsync(staging, stream_);
      DSG_CUDA(e2);
    }
    try {
      for (int32_t i0 = 0; i0 < n; i0 += chunk) {
        const int32_t m = std::min(chunk, n - i0);
        const size_t bytes = (size_t)m * bytesPerPage_;
        DSG_CUDA(cudaMemcpyAsync(dPages, pages + i0, (size_t)m * 4, cudaMemcpyHostToDevice, stream_));
        if (toHost) {
          cuda::launchPageCopy(kvPool_, poolTensorElems_, 2 * d_.numLayers, pageElems, dPages, m, staging, true, stream_);
          DSG_CUDA(cudaMemcpyAsync(host + (size_t)i0 * bytesPerPage_, staging, bytes, cudaMemcpyDeviceToHost, stream_));
        } else {
          DSG_CUDA(cudaMemcpyAsync(staging, host + (size_t)i0 * bytesPerPage_, bytes, cudaMemcpyHostToDevice, stream_));
          cuda::launchPageCopy(kvPool_, poolTensorElems_, 2 * d_.numLayers, pageElems, dPages, m, staging, false, stream_);
        }
        DSG_CUDA(cudaStreamSynchronize(stream_));
      }
    } catch (...) {
      cudaFreeAsync(staging, stream_);
      cudaFreeAsync(dPages, stream_);
      throw;
    }
    DSG_CUDA(cudaFreeAsync(staging, stream_));
    DSG_CUDA(cudaFreeAsync(dPages, stream_));
  }

  ModelDesc d_;
  BackendOptions opt_;
  cudaDeviceProp prop_{};
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  int64_t H_ = 0, D_ = 0, QD_ = 0, KD_ = 0, QKV_ = 0, I_ = 0;  // QD_, KD_, I_: this rank's (tensor parallelism)
  int heads_ = 0, kvHeads_ = 0;         // this rank's query / KV heads
  int V_ = 0;                           // the whole vocabulary (logits, sampling)
  int vocabStart_ = 0, vocabRows_ = 0;  // this rank's embedding / LM head rows
  std::shared_ptr<TpGroup> group_;      // tensor parallelism: the rank's group, and the collectives over it
  std::unique_ptr<cuda::TpComm> comm_;
  float* tpPartial_ = nullptr;          // [tokens, hidden] f32 partial sums of O / down; zero between uses
  DeviceArena weights_, work_;
  bf16 *embed_ = nullptr, *lmHead_ = nullptr, *finalNorm_ = nullptr;
  float* invFreq_ = nullptr;
  std::vector<LayerDev> layers_;
  InputLayout layout_{};
  int64_t pageCap_ = 0;
  size_t inputBytesUsed_ = 0;
  void *dIn_ = nullptr, *dOut_ = nullptr;
  void *hostInBuf_[2] = {nullptr, nullptr}, *hostOutBuf_[2] = {nullptr, nullptr};
  void* hostMaskBuf_[2] = {nullptr, nullptr};  // pinned: the masked rows' grammar bitmasks of the step in each slot
  int32_t* dMasks_ = nullptr;                    // [S, maskWords_] device bitmask table (rows in step order)
  int maskWords_ = 0;                            // ceil(vocab / 32)
  cudaEvent_t stepDone_[2] = {nullptr, nullptr};  // recorded after each slot's output copy
  struct PendingStep {
    StepOutputs out;
    int rows, numSeqs, maxTopN, slot;
    bool logits;  // copy slotLogits_[slot] to out.logits at stepEnd
  };
  float* slotLogits_[2] = {nullptr, nullptr};  // per step slot: the returned logits (grown on demand)
  size_t slotLogitsBytes_[2] = {0, 0};
  std::deque<PendingStep> pending_;
  int nextSlot_ = 0;
  int placeholders_ = 0;  // token words < 0 in the step being packed
  float* ssq_ = nullptr;  // [H / 32][tokens]: partial sums of squares of the residual (decode_gemm.cu)
  // Decode steps of 9..kDecodeGemmPreferredMaxTokens tokens through decode_gemm.cu where the build has its wgmma
  // kernels, unless DSG_NO_DECODE_GEMM=1 (the A/B switch).
  bool decodeGemm_ = false;
  float *residual_ = nullptr, *logits_ = nullptr, *partO_ = nullptr, *partLse_ = nullptr;
  bf16 *xn_ = nullptr, *qkv_ = nullptr, *q_ = nullptr, *attnOut_ = nullptr, *gateUp_ = nullptr, *act_ = nullptr,
       *lastHidden_ = nullptr;
  bf16* kvPool_ = nullptr;
  int32_t* sampleScratch_ = nullptr;  // launchSample's per-slice argmax results
  std::unique_ptr<cuda::KvIpcPeers> ipcPeers_;  // remote pools this engine opened (decode side)
  int64_t poolTensorElems_ = 0, numPages_ = 0, bytesPerPage_ = 0;
  int64_t weightsBytes_ = 0, kvPoolBytes_ = 0, workspaceBytes_ = 0;
  int maxGraphBatch_ = 0, maxQLen_ = 1;
  int chunkRecords_ = 0;  // records of the packed step with more than one query token (listed first)
  std::map<int, cudaGraphExec_t> graphs_;
};

}  // namespace

std::unique_ptr<Backend> createCudaBackend(const ModelDesc& desc, const ModelWeights& weights, const BackendOptions& options) {
  return std::make_unique<CudaBackend>(desc, weights, options);
}

}  // namespace dsg
