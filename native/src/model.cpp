// Weight loading: memory-map each file named by the ModelSpec once, find every tensor the architecture needs by
// its canonical HF name, and check dtype, shape and bounds before any backend sees a pointer.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <string>

#include "loader.h"

namespace dsg {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    throw EngineError(e == ENOENT ? "LLM_ERR_MODEL_NOT_FOUND" : "LLM_ERR_MODEL_FORMAT",
                      "cannot open weight file " + path + ": " + std::strerror(e));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw EngineError("LLM_ERR_MODEL_FORMAT", "weight file " + path + " is not a regular file");
  }
  size_ = (uint64_t)st.st_size;
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw EngineError("LLM_ERR_MODEL_FORMAT", "cannot memory-map weight file " + path + ": " + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
    ::madvise(p, size_, MADV_WILLNEED);  // start reading the weights in now, not on the first step's page faults
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {

std::string shapeStr(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void checkDesc(const ModelDesc& d) {
  auto positive = [](const char* field, int v) {
    if (v <= 0) throw EngineError("LLM_ERR_MODEL_FORMAT", std::string("model spec: ") + field + " must be > 0, got " + std::to_string(v));
  };
  positive("vocabSize", d.vocabSize);
  positive("hiddenSize", d.hiddenSize);
  positive("intermediateSize", d.intermediateSize);
  positive("numLayers", d.numLayers);
  positive("numHeads", d.numHeads);
  positive("numKvHeads", d.numKvHeads);
  positive("headDim", d.headDim);
  if (d.numHeads % d.numKvHeads != 0)
    throw EngineError("LLM_ERR_MODEL_FORMAT", "model spec: numHeads " + std::to_string(d.numHeads) + " is not a multiple of numKvHeads " + std::to_string(d.numKvHeads));
  if (d.headDim % 2 != 0) throw EngineError("LLM_ERR_MODEL_FORMAT", "model spec: headDim " + std::to_string(d.headDim) + " must be even (RoPE pairs)");
  if (d.arch == Arch::Bert) positive("typeVocabSize", d.typeVocabSize);
  if (!(d.rmsNormEps > 0)) throw EngineError("LLM_ERR_MODEL_FORMAT", "model spec: rmsNormEps must be > 0");
  if (!(d.ropeTheta > 0)) throw EngineError("LLM_ERR_MODEL_FORMAT", "model spec: ropeTheta must be > 0");
}

}  // namespace

std::unique_ptr<LoadedModel> loadModel(const ModelDesc& desc, const std::vector<TensorRefDesc>& tensors) {
  checkDesc(desc);
  auto model = std::make_unique<LoadedModel>();
  model->desc = desc;
  std::map<std::string, const TensorRefDesc*> byName;
  for (const TensorRefDesc& t : tensors) byName[t.name] = &t;
  std::map<std::string, MappedFile*> fileByPath;

  auto get = [&](const std::string& name, std::vector<int64_t> shape, bool required) -> HostTensor {
    HostTensor h;
    auto it = byName.find(name);
    if (it == byName.end()) {
      if (required) throw EngineError("LLM_ERR_MODEL_FORMAT", "tensor " + name + " is missing from the model");
      return h;
    }
    const TensorRefDesc& t = *it->second;
    if (t.shape != shape)
      throw EngineError("LLM_ERR_SHAPE_MISMATCH", name + " in " + t.file + ": expected " + shapeStr(shape) + ", got " + shapeStr(t.shape));
    MappedFile*& f = fileByPath[t.file];
    if (!f) {
      model->files.push_back(std::make_unique<MappedFile>(t.file));
      f = model->files.back().get();
    }
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const uint64_t bytes = (uint64_t)numel * dtypeSize(t.dtype);
    if (t.offset > f->size() || bytes > f->size() - t.offset)
      throw EngineError("LLM_ERR_MODEL_FORMAT", name + " in " + t.file + ": data [" + std::to_string(t.offset) + ", " +
                                                    std::to_string(t.offset + bytes) + ") runs past the end of the file (" +
                                                    std::to_string(f->size()) + " bytes): truncated file?");
    h.data = f->data() + t.offset;
    h.dtype = t.dtype;
    h.shape = shape;
    h.name = name;
    model->weightsBytes += (int64_t)bytes;
    return h;
  };

  const int64_t H = desc.hiddenSize, V = desc.vocabSize, I = desc.intermediateSize, D = desc.headDim;
  const int64_t QD = (int64_t)desc.numHeads * D, KD = (int64_t)desc.numKvHeads * D;
  const bool qwen2 = desc.qkvBias, qwen3 = desc.qkNorm;
  ModelWeights& w = model->weights;
  if (desc.arch == Arch::Bert) {
    // BertModel's own names (a "bert." prefix is stripped on the TS side).
    w.embed = get("embeddings.word_embeddings.weight", {V, H}, true);
    w.posEmbed = get("embeddings.position_embeddings.weight", {(int64_t)desc.maxPositionEmbeddings, H}, true);
    w.typeEmbed = get("embeddings.token_type_embeddings.weight", {(int64_t)desc.typeVocabSize, H}, true);
    w.embedNorm = get("embeddings.LayerNorm.weight", {H}, true);
    w.embedNormBias = get("embeddings.LayerNorm.bias", {H}, true);
    w.layers.resize(desc.numLayers);
    for (int l = 0; l < desc.numLayers; ++l) {
      const std::string p = "encoder.layer." + std::to_string(l) + ".";
      LayerWeights& L = w.layers[l];
      L.q = get(p + "attention.self.query.weight", {QD, H}, true);
      L.qBias = get(p + "attention.self.query.bias", {QD}, true);
      L.k = get(p + "attention.self.key.weight", {KD, H}, true);
      L.kBias = get(p + "attention.self.key.bias", {KD}, true);
      L.v = get(p + "attention.self.value.weight", {KD, H}, true);
      L.vBias = get(p + "attention.self.value.bias", {KD}, true);
      L.o = get(p + "attention.output.dense.weight", {H, QD}, true);
      L.oBias = get(p + "attention.output.dense.bias", {H}, true);
      L.postAttnNorm = get(p + "attention.output.LayerNorm.weight", {H}, true);
      L.postAttnNormBias = get(p + "attention.output.LayerNorm.bias", {H}, true);
      L.up = get(p + "intermediate.dense.weight", {I, H}, true);
      L.upBias = get(p + "intermediate.dense.bias", {I}, true);
      L.down = get(p + "output.dense.weight", {H, I}, true);
      L.downBias = get(p + "output.dense.bias", {H}, true);
      L.ffnNorm = get(p + "output.LayerNorm.weight", {H}, true);
      L.ffnNormBias = get(p + "output.LayerNorm.bias", {H}, true);
    }
    return model;
  }
  w.embed = get("model.embed_tokens.weight", {V, H}, true);
  w.layers.resize(desc.numLayers);
  for (int l = 0; l < desc.numLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& L = w.layers[l];
    L.inputNorm = get(p + "input_layernorm.weight", {H}, true);
    L.q = get(p + "self_attn.q_proj.weight", {QD, H}, true);
    L.k = get(p + "self_attn.k_proj.weight", {KD, H}, true);
    L.v = get(p + "self_attn.v_proj.weight", {KD, H}, true);
    L.o = get(p + "self_attn.o_proj.weight", {H, QD}, true);
    if (qwen2) {
      L.qBias = get(p + "self_attn.q_proj.bias", {QD}, true);
      L.kBias = get(p + "self_attn.k_proj.bias", {KD}, true);
      L.vBias = get(p + "self_attn.v_proj.bias", {KD}, true);
    }
    if (qwen3) {
      L.qNorm = get(p + "self_attn.q_norm.weight", {D}, true);
      L.kNorm = get(p + "self_attn.k_norm.weight", {D}, true);
    }
    L.postAttnNorm = get(p + "post_attention_layernorm.weight", {H}, true);
    L.gate = get(p + "mlp.gate_proj.weight", {I, H}, true);
    L.up = get(p + "mlp.up_proj.weight", {I, H}, true);
    L.down = get(p + "mlp.down_proj.weight", {H, I}, true);
  }
  w.finalNorm = get("model.norm.weight", {H}, true);
  w.lmHead = desc.tieWordEmbeddings ? w.embed : get("lm_head.weight", {V, H}, true);
  return model;
}

}  // namespace dsg
