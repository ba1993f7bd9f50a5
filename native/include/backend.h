// The backend interface that native/cpu and native/cuda both implement. The addon (native/src) owns everything
// around it: it parses the JS ModelSpec into a ModelDesc, memory-maps and shape-checks the weights into
// ModelWeights (host pointers in their file dtype), validates each step descriptor into a StepView (step.h), and
// turns EngineError into a JS error whose `.code` is the LLM_ERR_* string. A backend therefore trusts its inputs,
// reports failures only by throwing EngineError (never exit/abort), and allocates its own KV pool and workspace.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "embed_step.h"
#include "step.h"
#include "tensor_parallel.h"

namespace dsg {

/** A coded error: `code` is one of src/errors.ts ErrorCodes, e.g. "LLM_ERR_DEVICE". */
struct EngineError : std::runtime_error {
  std::string code;
  EngineError(std::string code_, const std::string& message) : std::runtime_error(message), code(std::move(code_)) {}
};

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
inline size_t dtypeSize(DType t) { return t == DType::F32 ? 4 : 2; }

/** Bert: a BERT-style encoder (word + position + token-type embeddings, post-LN layers with biases, bidirectional
 *  attention, GELU MLP); it only embeds (step() refuses it), on the CPU backend. */
enum class Arch : int { Llama = 0, Qwen2 = 1, Qwen3 = 2, Bert = 3 };
enum class RopeLayout : int { Half = 0, Interleaved = 1 };

struct RopeScalingLlama3 {
  bool enabled = false;
  double factor = 1, lowFreqFactor = 1, highFreqFactor = 1;
  int originalMaxPositionEmbeddings = 0;
};

/** Hyper-parameters (mirrors ModelSpec in src/engine/types.ts, minus the tensor list). */
struct ModelDesc {
  Arch arch = Arch::Llama;
  int vocabSize = 0, hiddenSize = 0, intermediateSize = 0, numLayers = 0;
  int numHeads = 0, numKvHeads = 0, headDim = 0;
  float rmsNormEps = 1e-6f;
  double ropeTheta = 10000;
  RopeScalingLlama3 ropeScaling;
  RopeLayout ropeLayout = RopeLayout::Half;
  int maxPositionEmbeddings = 0;
  bool tieWordEmbeddings = false, qkvBias = false, qkNorm = false;
  int typeVocabSize = 0;  // Bert only; rmsNormEps holds its LayerNorm epsilon
  // Qwen2.5-VL: M-RoPE sections (rotary pairs taking the time, height, width position; all 0 = ordinary RoPE) and
  // the image placeholder token (-1: none), whose rows a multimodal step replaces with image embeddings.
  int mropeSection[3] = {0, 0, 0};
  int imageTokenId = -1;
};

/**
 * RoPE inverse frequencies of pair i < headDim / 2: theta^(-2i / headDim), with Llama-3 scaling when enabled
 * (low frequencies divided by factor, high ones kept, a smooth blend between). One arithmetic for every backend.
 */
inline std::vector<float> ropeInverseFrequencies(const ModelDesc& d) {
  std::vector<float> inv(d.headDim / 2);
  const RopeScalingLlama3& rs = d.ropeScaling;
  for (int i = 0; i < d.headDim / 2; ++i) {
    double f = 1.0 / std::pow(d.ropeTheta, (2.0 * i) / (double)d.headDim);
    if (rs.enabled) {
      const double lowWave = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
      const double highWave = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
      const double wave = 2 * M_PI / f;
      if (wave > lowWave) {
        f = f / rs.factor;
      } else if (wave >= highWave) {
        const double smooth = (rs.originalMaxPositionEmbeddings / wave - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
        f = (1 - smooth) * f / rs.factor + smooth * f;
      }
    }
    inv[i] = (float)f;
  }
  return inv;
}

/** A weight tensor in host memory (memory-mapped file), in its file dtype; shape in HF order, row-major. */
struct HostTensor {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::string name;  // canonical HF name, for messages
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

/** All weights, shape-checked against ModelDesc. Optional tensors have data == nullptr. */
struct LayerWeights {
  HostTensor inputNorm;                 // [hidden]
  HostTensor q, k, v, o;                // [heads*headDim, hidden], [kvHeads*headDim, hidden] x2, [hidden, heads*headDim]
  HostTensor qBias, kBias, vBias;       // qwen2 only: [heads*headDim], [kvHeads*headDim] x2
  HostTensor qNorm, kNorm;              // qwen3 only: [headDim]
  HostTensor postAttnNorm;              // [hidden]
  HostTensor gate, up, down;            // [inter, hidden] x2, [hidden, inter]
  // Bert: o, up (intermediate) and down (output) biases; the LayerNorms after attention (postAttnNorm) and after the
  // MLP (ffnNorm) with their biases. Bert has no inputNorm and no gate; q/k/v biases are qBias/kBias/vBias.
  HostTensor oBias, upBias, downBias, postAttnNormBias, ffnNorm, ffnNormBias;
};
struct ModelWeights {
  HostTensor embed;                     // [vocab, hidden]
  std::vector<LayerWeights> layers;
  HostTensor finalNorm;                 // [hidden]
  HostTensor lmHead;                    // [vocab, hidden]; aliases embed when tied
  // Bert: position and token-type embeddings and the embeddings' LayerNorm (no finalNorm, no lmHead).
  HostTensor posEmbed, typeEmbed, embedNorm, embedNormBias;
};

struct BackendOptions {
  int deviceId = 0;
  int pageSize = 16;
  int64_t numPages = 0;          // 0: size from memFractionStatic
  double memFractionStatic = 0.5;
  int maxBatchTokens = 2048;     // sizes the workspace; the addon rejects larger steps
  int maxSeqsPerStep = 256;
  int threads = 0;               // cpu: worker threads (0 = hardware concurrency)
  TensorParallel tp;             // size 1: the whole model on this backend (tensor_parallel.h)
};

struct KvInfo {
  int pageSize = 0;
  int64_t numPages = 0;
  int64_t bytesPerPage = 0;  // all layers, K and V: the exportPages unit
};

struct MemInfo {
  int64_t weightsBytes = 0, kvPoolBytes = 0, workspaceBytes = 0;
  int64_t deviceFreeBytes = -1, deviceTotalBytes = -1;  // -1: not a device backend
};

/** A KV pool as another process on the same node maps it (CUDA IPC): one allocation holding `tensors` tensors
 * (K, V per layer) tensorStrideElems bf16 elements apart, each [pages * pageSize, rowElems]. */
struct KvIpcPool {
  uint8_t handle[64] = {};  // cudaIpcMemHandle_t
  int64_t tensors = 0, tensorStrideElems = 0, rowElems = 0;
  int pageSize = 0;
  std::string pciBusId;
};

/** What one pull moved, timed on the device (events around the copy kernel) and on the host (launch to sync). */
struct KvPullStats {
  int64_t bytes = 0;
  double deviceMs = 0, hostMs = 0;
};

/**
 * Where step() writes its results; buffers sized by the caller for step.numSeqs sequences.
 * tokens[s] = -1 and logprobs[s] = NaN where seq s did not sample / asked no logprobs; topIds/topLogprobs hold
 * step.maxTopN slots per sequence, padded with -1 / NaN. logits is [numSeqs * vocab] or nullptr when not asked.
 */
struct StepOutputs {
  int32_t* tokens = nullptr;
  float* logprobs = nullptr;
  int32_t* topIds = nullptr;
  float* topLogprobs = nullptr;
  float* logits = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // "cpu" | "cuda"
  virtual KvInfo kvInfo() const = 0;
  virtual MemInfo memInfo() const = 0;
  /** Runs one forward step over a validated ragged batch: writes KV, samples per sequence (sampling.h). Token words
   *  are >= 0 here (placeholders only go through stepBegin). */
  virtual void step(const StepView& step, const StepOutputs& out) = 0;
  /**
   * Pipelined stepping: stepBegin queues a validated step and returns; stepEnd completes the oldest begun step,
   * filling the outputs its stepBegin was given (they stay valid until then). At most kMaxStepsInFlight steps are
   * begun and not ended, and no other call comes in between (the addon enforces both). A token word < 0 is a
   * placeholder -(1 + row): what the previously begun step samples in sequence row `row` (the addon checks that row
   * samples), so step N + 1 can be begun before step N ended and the device never waits for the host between them.
   * Backends with a device queue resolve placeholders on the device; this default runs the whole step inside
   * stepBegin with them resolved from the previous step's tokens.
   */
  virtual void stepBegin(const StepView& step, const StepOutputs& out) {
    StepView v = step;
    bool placeholders = false;
    for (int32_t t = 0; t < step.numTokens && !placeholders; ++t) placeholders = step.tokens[t] < 0;
    if (placeholders) {
      resolvedTokens_.assign(step.tokens, step.tokens + step.numTokens);
      for (int32_t& tok : resolvedTokens_)
        if (tok < 0) tok = lastTokens_.at((size_t)(-1 - (int64_t)tok));
      v.tokens = resolvedTokens_.data();
    }
    this->step(v, out);
    lastTokens_.assign(out.tokens, out.tokens + step.numSeqs);
  }
  virtual void stepEnd() {}
  /** Whether stepEnd would return without waiting (the oldest begun step is done). */
  virtual bool stepReady() { return true; }
  static constexpr int kMaxStepsInFlight = 2;
  /**
   * One embedding pass over a batch of numSeqs sequences (lens[i] tokens each, back to back in tokenIds; the addon
   * checked the lengths, the step limits and the token ids): the final hidden states (after the final norm) of each
   * pooled as `pooling` says (embed_step.h), L2-normalised when `normalize`; out is [numSeqs, hidden]. Nothing of
   * the pass stays in the KV pool.
   */
  virtual void embed(const int32_t* tokenIds, const int32_t* lens, int32_t numSeqs, EmbedPooling pooling, bool normalize,
                     float* out) = 0;
  /** Copies pages (all layers, K and V; kvInfo().bytesPerPage each, in the given order) to/from host memory. */
  virtual void exportPages(const int32_t* pages, int32_t n, uint8_t* out) = 0;
  virtual void importPages(const int32_t* pages, int32_t n, const uint8_t* in) = 0;

  // GPU-to-GPU KV transfer within a node (CUDA IPC). The prefill side exports its pool once; the decode side opens
  // it (an id, until closed) and pulls tokens [srcToken0, srcToken0 + numTokens) of the remote page list into its
  // own pages dstPages (local page size), synchronising its stream before returning. Page sizes may differ.
  virtual KvIpcPool kvIpcExport() { throw notSupported("export its KV pool"); }
  virtual int32_t kvIpcOpen(const KvIpcPool& pool) { throw notSupported("open a KV pool"); }
  virtual KvPullStats kvIpcPull(int32_t remote, const int32_t* srcPages, int32_t numSrcPages, int32_t srcToken0,
                                const int32_t* dstPages, int32_t numDstPages, int32_t numTokens) {
    throw notSupported("pull KV pages");
  }
  virtual void kvIpcClose(int32_t remote) { throw notSupported("close a KV pool"); }

 private:
  std::vector<int32_t> lastTokens_, resolvedTokens_;  // the default stepBegin's placeholder resolution

 protected:
  EngineError notSupported(const char* what) const {
    return EngineError("LLM_ERR_KV_TRANSFER", std::string("GPU-to-GPU KV transfer (cuda-ipc) is not supported by backend ") +
                                              name() + ": cannot " + what);
  }
};

/**
 * Factories. The model desc and weights outlive the backend (the addon keeps the mappings open); a backend may
 * copy or convert weights at creation. createCudaBackend exists only when built with DYNAMO_CUDA (native/cuda/);
 * cudaBackendAvailable() is false otherwise.
 */
std::unique_ptr<Backend> createCpuBackend(const ModelDesc& desc, const ModelWeights& weights, const BackendOptions& options);
#ifdef DYNAMO_CUDA
std::unique_ptr<Backend> createCudaBackend(const ModelDesc& desc, const ModelWeights& weights, const BackendOptions& options);
/** The device side of an abort: the group's ranks stop waiting in their collective kernels (TpGroup::abort wakes the
 *  host-side waits only). */
void abortCudaTpGroup(const std::string& group);
#endif

}  // namespace dsg
