// The CPU backend: a real forward pass for llama / qwen2 / qwen3 over a paged KV pool, multi-threaded on a small
// persistent pool. Weights stay memory-mapped in their file dtype (kernels widen them to f32); norms and biases
// are copied to f32 at creation. The KV pool is f32, laid out per layer as K then V, each
// [numPages * pageSize, numKvHeads, headDim]: one page of one layer is one contiguous block.
// Tensor parallelism (tensor_parallel.h): the backend holds its rank's heads, FFN columns and vocabulary rows (the
// addon sharded the weights); the partial outputs of O and down and the vocab-parallel embedding are all-reduced
// through the process-wide TpGroup before the residual add, and the LM head's logits are gathered to the full
// vocabulary, from which every rank samples the same token. The KV pool holds the rank's KV heads.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "backend.h"
#include "kernels.h"
#include "sampling.h"
#include "thread_pool.h"

namespace dsg {
namespace {

constexpr int kLogitsChunk = 16;   // sequences per LM-head matmul
constexpr int kQueryTile = 16;     // query tokens per attention work unit
constexpr int64_t kMlpChunk = 256; // tokens per MLP pass

double hostMemoryBytes() { return (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE); }

/** Worker threads: as asked, else the machine's cores shared among the ranks of this process's group. */
int threadsFor(const BackendOptions& o) {
  if (o.threads > 0) return o.threads;
  return std::max(1, (int)std::thread::hardware_concurrency() / o.tp.size);
}

std::vector<float> f32Copy(const HostTensor& t) {
  std::vector<float> v;
  if (!t.data) return v;
  v.resize(t.numel());
  toF32(t.data, t.dtype, t.numel(), v.data());
  return v;
}

/** Anonymous zero-filled mapping: pages are committed only when touched. */
class HostBuffer {
 public:
  explicit HostBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      throw EngineError("LLM_ERR_OUT_OF_MEMORY", "cannot reserve " + std::to_string(bytes) + " bytes of host memory for the KV pool");
    ptr_ = static_cast<float*>(p);
  }
  ~HostBuffer() {
    if (ptr_) ::munmap(ptr_, bytes_);
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  float* data() const { return ptr_; }

 private:
  size_t bytes_ = 0;
  float* ptr_ = nullptr;
};

/** Where K and V of every layer live: base + (2*layer + kv) * layerStride floats. */
struct KvView {
  float* base;
  int64_t layerStride;
  float* k(int layer) const { return base + (int64_t)(2 * layer) * layerStride; }
  float* v(int layer) const { return base + (int64_t)(2 * layer + 1) * layerStride; }
};

struct AttnUnit {
  int32_t seq, kvHead, t0, t1;  // query tokens [t0, t1) of seq (relative to its qStart)
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(const ModelDesc& d, const ModelWeights& w, const BackendOptions& o)
      : d_(d), w_(w), opt_(o), pool_(threadsFor(o)) {
    if (o.pageSize < 1) throw EngineError("LLM_ERR_CONFIG", "pageSize must be >= 1, got " + std::to_string(o.pageSize));
    if (o.maxBatchTokens < 1) throw EngineError("LLM_ERR_CONFIG", "maxBatchTokens must be >= 1");
    if (o.maxSeqsPerStep < 1) throw EngineError("LLM_ERR_CONFIG", "maxSeqsPerStep must be >= 1");
    // A rank joins its group first: should anything below fail, its leaving fails the other ranks at once.
    if (o.tp.size > 1) group_ = TpGroup::join(o.tp);
    const ShardLayout& shard = o.tp.shard;
    H_ = d.hiddenSize;
    D_ = d.headDim;
    numHeads_ = shard.numHeads;
    numKvHeads_ = shard.numKvHeads;
    QD_ = (int64_t)numHeads_ * D_;
    KD_ = (int64_t)numKvHeads_ * D_;
    I_ = shard.intermediateSize;
    V_ = d.vocabSize;
    vocabStart_ = shard.vocabStart;
    localVocab_ = shard.vocabSize;
    for (const LayerWeights& L : w.layers) {
      LayerF32 f;
      f.inputNorm = f32Copy(L.inputNorm);
      f.postAttnNorm = f32Copy(L.postAttnNorm);
      f.qBias = f32Copy(L.qBias);
      f.kBias = f32Copy(L.kBias);
      f.vBias = f32Copy(L.vBias);
      f.qNorm = f32Copy(L.qNorm);
      f.kNorm = f32Copy(L.kNorm);
      f.oBias = f32Copy(L.oBias);
      f.upBias = f32Copy(L.upBias);
      f.downBias = f32Copy(L.downBias);
      f.postAttnNormBias = f32Copy(L.postAttnNormBias);
      f.ffnNorm = f32Copy(L.ffnNorm);
      f.ffnNormBias = f32Copy(L.ffnNormBias);
      layers_.push_back(std::move(f));
    }
    finalNorm_ = f32Copy(w.finalNorm);
    embedNorm_ = f32Copy(w.embedNorm);
    embedNormBias_ = f32Copy(w.embedNormBias);
    invFreq_ = ropeInverseFrequencies(d_);

    const int64_t T = o.maxBatchTokens;
    // Per-token workspace: residual, normed input, q/k/v, attention output, RoPE tables (the MLP is chunked).
    const double perToken = 4.0 * (2 * H_ + 2 * QD_ + 2 * KD_ + D_);
    const double hostBytes = hostMemoryBytes();
    if (perToken * T > 0.5 * hostBytes)
      throw EngineError("LLM_ERR_OUT_OF_MEMORY", "maxBatchTokens " + std::to_string(T) + " needs a " +
                                                     std::to_string((int64_t)(perToken * T) >> 20) +
                                                     " MiB workspace, more than half of host memory");
    x_.resize(T * H_);
    xn_.resize(T * H_);
    q_.resize(T * QD_);
    k_.resize(T * KD_);
    v_.resize(T * KD_);
    attn_.resize(T * QD_);
    gate_.resize(std::min<int64_t>(T, kMlpChunk) * I_);
    up_.resize(std::min<int64_t>(T, kMlpChunk) * I_);
    cos_.resize(T * (D_ / 2));
    sin_.resize(T * (D_ / 2));
    lastHidden_.resize((int64_t)kLogitsChunk * H_);
    logits_.resize((int64_t)kLogitsChunk * V_);
    if (group_) localLogits_.resize((int64_t)kLogitsChunk * localVocab_);
    attnScratch_.resize((size_t)pool_.size() * attentionScratchFloats(numHeads_ / numKvHeads_, D_));
    samplingScratch_.resize((size_t)pool_.size() * ((samplingScratchBytes(V_) + 3) / 4));
    units_.reserve(1024);
    workspaceBytes_ = (int64_t)(x_.size() + xn_.size() + q_.size() + k_.size() + v_.size() + attn_.size() + gate_.size() +
                                up_.size() + cos_.size() + sin_.size() + lastHidden_.size() + logits_.size() +
                                localLogits_.size() + attnScratch_.size() + samplingScratch_.size()) * 4;

    const int64_t pageElems = (int64_t)o.pageSize * KD_;
    bytesPerPage_ = (int64_t)d.numLayers * 2 * pageElems * 4;
    numPages_ = o.numPages;
    int64_t weightsBytes = 0;
    for (const HostTensor* t : allTensors()) weightsBytes += t->numel() * (int64_t)dtypeSize(t->dtype);
    weightsBytes_ = weightsBytes;
    if (numPages_ <= 0) {
      // The ranks of a group share the host: each gets its part of the budget.
      const double budget = hostBytes * o.memFractionStatic / o.tp.size - (double)weightsBytes - (double)workspaceBytes_;
      // No use for more pages than every sequence of a full step at the model's maximum length.
      const double useful = std::ceil((double)o.maxSeqsPerStep * std::max(d.maxPositionEmbeddings, 1) / o.pageSize) + 1;
      numPages_ = (int64_t)std::min({budget / (double)bytesPerPage_, useful, (double)std::numeric_limits<int32_t>::max()});
      // Page ids mean the same on every rank: the group takes the smallest pool any rank can hold.
      if (group_)
        for (const std::vector<uint8_t>& peer : group_->allGather(o.tp.rank, &numPages_, sizeof(numPages_))) {
          int64_t n;
          std::memcpy(&n, peer.data(), sizeof(n));
          numPages_ = std::min(numPages_, n);
        }
      if (numPages_ < 1)
        throw EngineError("LLM_ERR_OUT_OF_MEMORY", "memFractionStatic " + std::to_string(o.memFractionStatic) +
                                                       " of host memory leaves no room for a KV page after the weights (" +
                                                       std::to_string(weightsBytes) + " bytes)");
    }
    kvPool_ = std::make_unique<HostBuffer>((size_t)numPages_ * bytesPerPage_);
    kv_ = KvView{kvPool_->data(), numPages_ * pageElems};
  }

  const char* name() const override { return "cpu"; }

  KvInfo kvInfo() const override { return KvInfo{opt_.pageSize, numPages_, bytesPerPage_}; }

  MemInfo memInfo() const override {
    MemInfo m;
    m.weightsBytes = weightsBytes_;
    m.kvPoolBytes = numPages_ * bytesPerPage_;
    m.workspaceBytes = workspaceBytes_;
    return m;
  }

  void step(const StepView& s, const StepOutputs& out) override {
    if (d_.arch == Arch::Bert) throw EngineError("LLM_ERR_UNSUPPORTED_ARCH", "a BERT-style encoder only embeds: it has no generation step");
    forwardLayers(s, kv_);
    // Final norm + LM head for each sequence's last token, in chunks, then sampling.
    const int V = V_;
    for (int c0 = 0; c0 < s.numSeqs; c0 += kLogitsChunk) {
      const int c1 = std::min(s.numSeqs, c0 + kLogitsChunk);
      chunkSeqs_.clear();
      for (int i = c0; i < c1; ++i)
        if (s.seqs[i].sample || s.returnLogits) chunkSeqs_.push_back(i);
      for (int i = c0; i < c1; ++i) {
        if (!s.seqs[i].sample) {
          out.tokens[i] = -1;
          out.logprobs[i] = std::numeric_limits<float>::quiet_NaN();
          for (int j = 0; j < s.maxTopN; ++j) {
            out.topIds[(int64_t)i * s.maxTopN + j] = -1;
            out.topLogprobs[(int64_t)i * s.maxTopN + j] = std::numeric_limits<float>::quiet_NaN();
          }
        }
      }
      if (chunkSeqs_.empty()) continue;
      const int n = (int)chunkSeqs_.size();
      for (int j = 0; j < n; ++j) {
        const SeqView& q = s.seqs[chunkSeqs_[j]];
        rmsNorm(&x_[(int64_t)(q.qStart + q.qLen - 1) * H_], finalNorm_.data(), H_, d_.rmsNormEps, &lastHidden_[(int64_t)j * H_]);
      }
      if (group_) {
        matmul(pool_, lastHidden_.data(), n, H_, w_.lmHead.data, w_.lmHead.dtype, localVocab_, nullptr, localLogits_.data(), localVocab_);
        group_->allGatherVocab(opt_.tp.rank, localLogits_.data(), n, logits_.data());
      } else {
        matmul(pool_, lastHidden_.data(), n, H_, w_.lmHead.data, w_.lmHead.dtype, V, nullptr, logits_.data(), V);
      }
      for (int j = 0; j < n; ++j) {
        const SeqView& q = s.seqs[chunkSeqs_[j]];
        maskBannedLogits(&logits_[(int64_t)j * V], q.banned, q.bannedCount);
        if (q.mask) maskLogitsByBitmask(&logits_[(int64_t)j * V], V, q.mask);
      }
      if (out.logits)
        for (int j = 0; j < n; ++j)
          std::memcpy(out.logits + (int64_t)chunkSeqs_[j] * V, &logits_[(int64_t)j * V], (size_t)V * 4);
      pool_.parallelFor(n, [&](int64_t b, int64_t e, int t) {
        void* scratch = &samplingScratch_[(size_t)t * ((samplingScratchBytes(V_) + 3) / 4)];
        for (int64_t j = b; j < e; ++j) {
          const int i = chunkSeqs_[j];
          const SeqView& q = s.seqs[i];
          if (!q.sample) continue;
          out.tokens[i] = sampleFromLogits(&logits_[j * V], V, q.sampling, s.maxTopN, &out.logprobs[i],
                                           out.topIds + (int64_t)i * s.maxTopN, out.topLogprobs + (int64_t)i * s.maxTopN, scratch);
        }
      });
    }
  }

  void embed(const int32_t* tokenIds, const int32_t* lens, int32_t numSeqs, EmbedPooling pooling, bool normalize,
             float* out) override {
    const EmbedStep step(tokenIds, lens, numSeqs, opt_.pageSize);
    if (d_.arch == Arch::Bert) {
      forwardBert(step.view);  // its last layer ends in a LayerNorm: the rows are final as they are
      for (int32_t i = 0; i < numSeqs; ++i) {
        int32_t b, e;
        EmbedStep::pooledRows(step.seqs[i], pooling, &b, &e);
        poolRows(&x_[(int64_t)b * H_], e - b, H_, normalize, out + (int64_t)i * H_);
      }
      return;
    }
    // A private KV block: embedding never touches the shared pool.
    const int64_t pageElems = (int64_t)opt_.pageSize * KD_;
    std::vector<float> kv((size_t)d_.numLayers * 2 * step.numPages() * pageElems);
    forwardLayers(step.view, KvView{kv.data(), step.numPages() * pageElems});
    for (int32_t i = 0; i < numSeqs; ++i) {
      int32_t b, e;
      EmbedStep::pooledRows(step.seqs[i], pooling, &b, &e);
      for (int32_t t = b; t < e; ++t) {
        float* row = &x_[(int64_t)t * H_];
        rmsNorm(row, finalNorm_.data(), H_, d_.rmsNormEps, row);
      }
      poolRows(&x_[(int64_t)b * H_], e - b, H_, normalize, out + (int64_t)i * H_);
    }
  }

  void exportPages(const int32_t* pages, int32_t n, uint8_t* out) override {
    const size_t block = (size_t)opt_.pageSize * KD_ * 4;
    for (int32_t i = 0; i < n; ++i)
      for (int l = 0; l < d_.numLayers; ++l)
        for (int kv = 0; kv < 2; ++kv) {
          const float* src = (kv ? kv_.v(l) : kv_.k(l)) + (int64_t)pages[i] * opt_.pageSize * KD_;
          std::memcpy(out, src, block);
          out += block;
        }
  }

  void importPages(const int32_t* pages, int32_t n, const uint8_t* in) override {
    const size_t block = (size_t)opt_.pageSize * KD_ * 4;
    for (int32_t i = 0; i < n; ++i)
      for (int l = 0; l < d_.numLayers; ++l)
        for (int kv = 0; kv < 2; ++kv) {
          float* dst = (kv ? kv_.v(l) : kv_.k(l)) + (int64_t)pages[i] * opt_.pageSize * KD_;
          std::memcpy(dst, in, block);
          in += block;
        }
  }

 private:
  struct LayerF32 {
    std::vector<float> inputNorm, postAttnNorm, qBias, kBias, vBias, qNorm, kNorm;
    std::vector<float> oBias, upBias, downBias, postAttnNormBias, ffnNorm, ffnNormBias;  // Bert
  };

  std::vector<const HostTensor*> allTensors() const {
    std::vector<const HostTensor*> v;
    for (const HostTensor* t : {&w_.embed, &w_.finalNorm, &w_.posEmbed, &w_.typeEmbed, &w_.embedNorm, &w_.embedNormBias})
      if (t->data) v.push_back(t);
    if (!d_.tieWordEmbeddings && w_.lmHead.data) v.push_back(&w_.lmHead);
    for (const LayerWeights& L : w_.layers)
      for (const HostTensor* t : {&L.inputNorm, &L.q, &L.k, &L.v, &L.o, &L.qBias, &L.kBias, &L.vBias, &L.qNorm, &L.kNorm,
                                  &L.postAttnNorm, &L.gate, &L.up, &L.down, &L.oBias, &L.upBias, &L.downBias,
                                  &L.postAttnNormBias, &L.ffnNorm, &L.ffnNormBias})
        if (t->data) v.push_back(t);
    return v;
  }

  void applyRope(float* v, const float* c, const float* s) const {
    const int half = D_ / 2;
    if (d_.ropeLayout == RopeLayout::Half) {
      for (int i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c[i] - x1 * s[i];
        v[i + half] = x1 * c[i] + x0 * s[i];
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * c[i] - x1 * s[i];
        v[2 * i + 1] = x1 * c[i] + x0 * s[i];
      }
    }
  }

  /** Runs every layer over the step's tokens; leaves the residual stream (pre final norm) in x_. */
  void forwardLayers(const StepView& s, const KvView& kv) {
    const int64_t T = s.numTokens, H = H_, D = D_, half = D_ / 2;
    const int P = s.pageSize;
    const float eps = d_.rmsNormEps;
    // Embedding gather and the step's RoPE tables (shared by all layers).
    int64_t nextImageRow = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (s.imageEmbeds && s.tokens[t] == d_.imageTokenId) {
        // An image token takes its embedding row; under TP rank 0 alone adds it, as the all-reduce below sums.
        const float* e = s.imageEmbeds + nextImageRow++ * H;
        if (!group_ || opt_.tp.rank == 0) std::copy(e, e + H, &x_[t * H]);
        else std::fill(&x_[t * H], &x_[(t + 1) * H], 0.0f);
      } else {
        // Vocab-parallel: a token outside this rank's rows embeds to zeros, and the all-reduce below fills it in.
        const int64_t row = (int64_t)s.tokens[t] - vocabStart_;
        const size_t es = dtypeSize(w_.embed.dtype);
        if (row >= 0 && row < localVocab_)
          toF32(static_cast<const uint8_t*>(w_.embed.data) + (size_t)row * H * es, w_.embed.dtype, H, &x_[t * H]);
        else
          std::fill(&x_[t * H], &x_[(t + 1) * H], 0.0f);
      }
      // M-RoPE: pair i takes the time, height or width position by the section it falls in.
      const int sec0 = d_.mropeSection[0], sec01 = sec0 + d_.mropeSection[1];
      for (int64_t i = 0; i < half; ++i) {
        const int section = i < sec0 ? 0 : i < sec01 ? 1 : 2;
        const float pos = (float)(s.mropePositions ? s.mropePositions[section * T + t] : s.positions[t]);
        const float ang = pos * invFreq_[i];
        cos_[t * half + i] = (float)std::cos((double)ang);
        sin_[t * half + i] = (float)std::sin((double)ang);
      }
    }
    allReduce(x_.data(), T * H);
    buildUnits(s);
    for (int l = 0; l < d_.numLayers; ++l) {
      const LayerWeights& L = w_.layers[l];
      const LayerF32& F = layers_[l];
      for (int64_t t = 0; t < T; ++t) rmsNorm(&x_[t * H], F.inputNorm.data(), H, eps, &xn_[t * H]);
      matmul(pool_, xn_.data(), T, H, L.q.data, L.q.dtype, QD_, F.qBias.empty() ? nullptr : F.qBias.data(), q_.data(), QD_);
      matmul(pool_, xn_.data(), T, H, L.k.data, L.k.dtype, KD_, F.kBias.empty() ? nullptr : F.kBias.data(), k_.data(), KD_);
      matmul(pool_, xn_.data(), T, H, L.v.data, L.v.dtype, KD_, F.vBias.empty() ? nullptr : F.vBias.data(), v_.data(), KD_);
      float* K = kv.k(l);
      float* Vc = kv.v(l);
      for (int si = 0; si < s.numSeqs; ++si) {
        const SeqView& q = s.seqs[si];
        for (int32_t j = 0; j < q.qLen; ++j) {
          const int64_t t = q.qStart + j;
          const float* c = &cos_[t * half];
          const float* sn = &sin_[t * half];
          for (int h = 0; h < numHeads_; ++h) {
            float* qh = &q_[t * QD_ + h * D];
            if (d_.qkNorm) rmsNorm(qh, F.qNorm.data(), D, eps, qh);
            applyRope(qh, c, sn);
          }
          for (int h = 0; h < numKvHeads_; ++h) {
            float* kh = &k_[t * KD_ + h * D];
            if (d_.qkNorm) rmsNorm(kh, F.kNorm.data(), D, eps, kh);
            applyRope(kh, c, sn);
          }
          const int32_t pos = q.startPos() + j;
          const int64_t row = (int64_t)q.pages[pos / P] * P + pos % P;
          std::memcpy(K + row * KD_, &k_[t * KD_], (size_t)KD_ * 4);
          std::memcpy(Vc + row * KD_, &v_[t * KD_], (size_t)KD_ * 4);
        }
      }
      attention(s, K, Vc);
      matmul(pool_, attn_.data(), T, QD_, L.o.data, L.o.dtype, H, nullptr, xn_.data(), H);
      allReduce(xn_.data(), T * H);  // row-parallel O: partial sums until here
      for (int64_t i = 0; i < T * H; ++i) x_[i] += xn_[i];
      for (int64_t t = 0; t < T; ++t) rmsNorm(&x_[t * H], F.postAttnNorm.data(), H, eps, &xn_[t * H]);
      // The MLP runs in token chunks, so its [tokens, intermediate] buffers stay small for long prefills. Each
      // chunk's down projection overwrites its own rows of xn_, which the chunk has already consumed.
      for (int64_t c0 = 0; c0 < T; c0 += kMlpChunk) {
        const int64_t n = std::min<int64_t>(kMlpChunk, T - c0);
        float* xin = &xn_[c0 * H];
        matmul(pool_, xin, n, H, L.gate.data, L.gate.dtype, I_, nullptr, gate_.data(), I_);
        matmul(pool_, xin, n, H, L.up.data, L.up.dtype, I_, nullptr, up_.data(), I_);
        for (int64_t i = 0; i < n * I_; ++i) {
          const float g = gate_[i];
          gate_[i] = g / (1.0f + std::exp(-g)) * up_[i];
        }
        matmul(pool_, gate_.data(), n, I_, L.down.data, L.down.dtype, H, nullptr, xin, H);
        allReduce(xin, n * H);  // row-parallel down
        for (int64_t i = 0; i < n * H; ++i) x_[c0 * H + i] += xin[i];
      }
    }
  }

  /** out = LayerNorm(x) * w + b over n values (statistics in f64); out may alias x. */
  static void layerNorm(const float* x, const float* w, const float* b, int64_t n, float eps, float* out) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= n;
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    const double inv = 1.0 / std::sqrt(var / n + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = (float)((x[i] - mean) * inv) * w[i] + b[i];
  }

  /**
   * The BERT encoder over the step's sequences (token type 0, absolute positions): embeddings + LayerNorm, then per
   * layer bidirectional attention within each sequence, residual + LayerNorm, GELU (erf) MLP, residual + LayerNorm.
   * Leaves the last hidden states in x_. No KV is written: every query sees its whole sequence at once.
   */
  void forwardBert(const StepView& s) {
    const int64_t T = s.numTokens, H = H_, D = D_, I = I_;
    const float eps = d_.rmsNormEps;
    const size_t es = dtypeSize(w_.embed.dtype);
    std::vector<float> row(H), pos(H), type(H);
    toF32(w_.typeEmbed.data, w_.typeEmbed.dtype, H, type.data());
    for (int64_t t = 0; t < T; ++t) {
      toF32(static_cast<const uint8_t*>(w_.embed.data) + (size_t)s.tokens[t] * H * es, w_.embed.dtype, H, row.data());
      toF32(static_cast<const uint8_t*>(w_.posEmbed.data) + (size_t)s.positions[t] * H * dtypeSize(w_.posEmbed.dtype), w_.posEmbed.dtype, H, pos.data());
      for (int64_t i = 0; i < H; ++i) row[i] += pos[i] + type[i];
      layerNorm(row.data(), embedNorm_.data(), embedNormBias_.data(), H, eps, &x_[t * H]);
    }
    const float scale = 1.0f / std::sqrt((float)D);
    int32_t longest = 0;
    for (int si = 0; si < s.numSeqs; ++si) longest = std::max(longest, s.seqs[si].qLen);
    std::vector<float> scores((size_t)pool_.size() * longest);
    const int64_t units = (int64_t)s.numSeqs * numHeads_;
    for (int l = 0; l < d_.numLayers; ++l) {
      const LayerWeights& L = w_.layers[l];
      const LayerF32& F = layers_[l];
      matmul(pool_, x_.data(), T, H, L.q.data, L.q.dtype, QD_, F.qBias.data(), q_.data(), QD_);
      matmul(pool_, x_.data(), T, H, L.k.data, L.k.dtype, KD_, F.kBias.data(), k_.data(), KD_);
      matmul(pool_, x_.data(), T, H, L.v.data, L.v.dtype, KD_, F.vBias.data(), v_.data(), KD_);
      pool_.parallelFor(units, [&](int64_t u0, int64_t u1, int tid) {
        float* sc = &scores[(size_t)tid * longest];
        for (int64_t u = u0; u < u1; ++u) {
          const SeqView& q = s.seqs[u / numHeads_];
          const int64_t h = u % numHeads_;
          for (int32_t i = 0; i < q.qLen; ++i) {
            const float* qi = &q_[(q.qStart + i) * QD_ + h * D];
            float m = -std::numeric_limits<float>::infinity();
            for (int32_t j = 0; j < q.qLen; ++j) {
              const float* kj = &k_[(q.qStart + j) * KD_ + h * D];
              float dot = 0;
              for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
              sc[j] = dot * scale;
              m = std::max(m, sc[j]);
            }
            double z = 0;
            for (int32_t j = 0; j < q.qLen; ++j) z += (sc[j] = std::exp(sc[j] - m));
            float* o = &attn_[(q.qStart + i) * QD_ + h * D];
            std::fill(o, o + D, 0.0f);
            for (int32_t j = 0; j < q.qLen; ++j) {
              const float p = (float)(sc[j] / z);
              const float* vj = &v_[(q.qStart + j) * KD_ + h * D];
              for (int64_t d = 0; d < D; ++d) o[d] += p * vj[d];
            }
          }
        }
      });
      matmul(pool_, attn_.data(), T, QD_, L.o.data, L.o.dtype, H, F.oBias.data(), xn_.data(), H);
      for (int64_t t = 0; t < T; ++t) {
        float* xt = &x_[t * H];
        for (int64_t i = 0; i < H; ++i) xt[i] += xn_[t * H + i];
        layerNorm(xt, F.postAttnNorm.data(), F.postAttnNormBias.data(), H, eps, xt);
      }
      for (int64_t c0 = 0; c0 < T; c0 += kMlpChunk) {
        const int64_t n = std::min<int64_t>(kMlpChunk, T - c0);
        matmul(pool_, &x_[c0 * H], n, H, L.up.data, L.up.dtype, I, F.upBias.data(), up_.data(), I);
        for (int64_t i = 0; i < n * I; ++i) up_[i] = (float)(0.5 * up_[i] * (1.0 + std::erf(up_[i] / std::sqrt(2.0))));
        matmul(pool_, up_.data(), n, I, L.down.data, L.down.dtype, H, F.downBias.data(), &xn_[c0 * H], H);
        for (int64_t t = c0; t < c0 + n; ++t) {
          float* xt = &x_[t * H];
          for (int64_t i = 0; i < H; ++i) xt[i] += xn_[t * H + i];
          layerNorm(xt, F.ffnNorm.data(), F.ffnNormBias.data(), H, eps, xt);
        }
      }
    }
  }

  /** Sums a rank's partial result over the group (a no-op without tensor parallelism). */
  void allReduce(float* data, int64_t n) {
    if (group_) group_->allReduceSum(opt_.tp.rank, data, (size_t)n);
  }

  void buildUnits(const StepView& s) {
    units_.clear();
    for (int si = 0; si < s.numSeqs; ++si) {
      const SeqView& q = s.seqs[si];
      for (int32_t t0 = 0; t0 < q.qLen; t0 += kQueryTile)
        for (int h = 0; h < numKvHeads_; ++h) units_.push_back(AttnUnit{si, h, t0, std::min(q.qLen, t0 + kQueryTile)});
    }
  }

  /** Causal attention of each query token over its sequence's paged K/V (cached prefix + this chunk). */
  void attention(const StepView& s, const float* K, const float* Vc) {
    const int64_t D = D_;
    const int P = s.pageSize, group = numHeads_ / numKvHeads_;
    const float scale = 1.0f / std::sqrt((float)D);
    std::atomic<int64_t> next{0};
    const int64_t numUnits = (int64_t)units_.size();
    // Work grows with context length; a single short decode is not worth waking the pool.
    int64_t keys = 0;
    for (int si = 0; si < s.numSeqs; ++si) keys += (int64_t)s.seqs[si].kvLen * s.seqs[si].qLen;
    const int threads = keys * numHeads_ * D < (1 << 18) ? 1 : pool_.size();
    const int64_t scratchFloats = attentionScratchFloats(group, D);
    pool_.parallelFor(threads, [&](int64_t, int64_t, int tid) {
      float* scratch = &attnScratch_[(size_t)tid * scratchFloats];
      for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < numUnits;) {
        const AttnUnit& un = units_[u];
        const SeqView& q = s.seqs[un.seq];
        for (int32_t j = un.t0; j < un.t1; ++j) {
          const int64_t t = q.qStart + j;
          const int64_t h0 = (int64_t)un.kvHead * group;  // the group's query heads are contiguous
          attendPaged(&q_[t * QD_ + h0 * D], group, D, K + un.kvHead * D, Vc + un.kvHead * D, KD_, q.pages, P,
                      q.startPos() + j + 1, scale, &attn_[t * QD_ + h0 * D], scratch);
        }
      }
    });
  }

  ModelDesc d_;
  ModelWeights w_;
  BackendOptions opt_;
  ThreadPool pool_;
  std::shared_ptr<TpGroup> group_;  // null without tensor parallelism
  int numHeads_, numKvHeads_;       // this rank's query / KV heads
  int64_t H_, D_, QD_, KD_, I_;     // QD_, KD_, I_: this rank's slice
  int V_, vocabStart_, localVocab_; // the full vocabulary; this rank's rows of it
  std::vector<LayerF32> layers_;
  std::vector<float> finalNorm_, invFreq_, embedNorm_, embedNormBias_;
  std::vector<float> x_, xn_, q_, k_, v_, attn_, gate_, up_, cos_, sin_, lastHidden_, logits_, localLogits_, attnScratch_, samplingScratch_;
  std::vector<AttnUnit> units_;
  std::vector<int> chunkSeqs_;
  int64_t workspaceBytes_ = 0, weightsBytes_ = 0, bytesPerPage_ = 0, numPages_ = 0;
  std::unique_ptr<HostBuffer> kvPool_;
  KvView kv_{};
};

}  // namespace

std::unique_ptr<Backend> createCpuBackend(const ModelDesc& desc, const ModelWeights& weights, const BackendOptions& options) {
  return std::make_unique<CpuBackend>(desc, weights, options);
}

}  // namespace dsg
