// Addon-internal pieces around the backend: memory-mapped weight files and the step descriptor check.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

namespace dsg {

/** A read-only memory mapping of a whole file; unmapped on destruction. */
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws EngineError LLM_ERR_MODEL_NOT_FOUND / _FORMAT
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

/** A tensor as the JS ModelSpec lists it. */
struct TensorRefDesc {
  std::string name, file;
  uint64_t offset = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

/** The mapped files plus the weights that point into them; keeps the mappings alive as long as it lives. */
struct LoadedModel {
  ModelDesc desc;
  std::vector<std::unique_ptr<MappedFile>> files;
  ModelWeights weights;
  int64_t weightsBytes = 0;
  std::vector<std::vector<uint8_t>> shardCopies;  // column slices of this rank's shard (shardWeights)
};

/** Checks ModelDesc, maps the files, finds every tensor the architecture needs and checks its shape and bounds. */
std::unique_ptr<LoadedModel> loadModel(const ModelDesc& desc, const std::vector<TensorRefDesc>& tensors);

/** Narrows the weights to one rank's slice (tensor_parallel.h); size 1 leaves them untouched. */
void shardWeights(LoadedModel& model, const ShardLayout& shard);

struct StepLimits {
  int32_t vocabSize, pageSize, maxBatchTokens, maxSeqsPerStep;
  int64_t numPages;
};

/** A validated step: the view plus the decoded sequence records it points to. */
struct CheckedStep {
  StepView view;
  std::vector<SeqView> seqs;
  std::vector<int32_t> touchedPages;  // scratch, reused across steps
};

/**
 * Validates a descriptor (step.h) once at the boundary. Throws EngineError LLM_ERR_STEP_INVALID naming the field
 * and sequence, e.g. "seq 3: page 9999 out of range [0, 512)". `pageOwner` is scratch of numPages entries, all -1
 * between calls. `previousSampled` (null: placeholders not allowed, a token < 0 is out of range): which sequence
 * rows of the previously begun step sample a token (empty: none was begun, or it failed); a token word < 0 is then a
 * placeholder -(1 + row) for that step's token of `row` (Backend::stepBegin) and must name a row that samples.
 */
void checkStep(const int32_t* words, size_t numWords, const StepLimits& limits, CheckedStep& out,
               std::vector<int32_t>& pageOwner, const std::vector<uint8_t>* previousSampled);

}  // namespace dsg
