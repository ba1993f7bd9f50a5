// Weight sharding for tensor parallelism (tensor_parallel.h): a rank's ModelWeights keep only its slice, in the
// file dtype. A slice of rows (column-parallel QKV and gate/up, the vocab-parallel embedding and LM head) is
// contiguous, so it stays a view into the memory-mapped file; a slice of columns (row-parallel O and down) is
// copied into host memory that LoadedModel owns. Norms are replicated untouched.
#include <cstring>

#include "loader.h"

namespace dsg {
namespace {

/** Rows [start, start + count) of a [rows, ...] tensor: a view into the same memory. */
HostTensor rowSlice(const HostTensor& t, int64_t start, int64_t count) {
  HostTensor s = t;
  const int64_t rowElems = t.numel() / t.shape[0];
  s.data = static_cast<const uint8_t*>(t.data) + (size_t)(start * rowElems) * dtypeSize(t.dtype);
  s.shape[0] = count;
  return s;
}

/** Columns [start, start + count) of a [rows, cols] tensor, copied. */
HostTensor columnSlice(const HostTensor& t, int64_t start, int64_t count, std::vector<std::vector<uint8_t>>& owner) {
  const size_t es = dtypeSize(t.dtype);
  const int64_t rows = t.shape[0], cols = t.shape[1];
  std::vector<uint8_t>& bytes = owner.emplace_back((size_t)(rows * count) * es);
  const uint8_t* src = static_cast<const uint8_t*>(t.data);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(&bytes[(size_t)(r * count) * es], src + (size_t)(r * cols + start) * es, (size_t)count * es);
  HostTensor s = t;
  s.data = bytes.data();
  s.shape[1] = count;
  return s;
}

int64_t tensorBytes(const HostTensor& t) { return t.data ? t.numel() * (int64_t)dtypeSize(t.dtype) : 0; }

}  // namespace

void shardWeights(LoadedModel& model, const ShardLayout& s) {
  if (s.size == 1) return;
  const int64_t D = model.desc.headDim;
  ModelWeights& w = model.weights;
  const bool tied = w.lmHead.data == w.embed.data;
  w.embed = rowSlice(w.embed, s.vocabStart, s.vocabSize);
  w.lmHead = tied ? w.embed : rowSlice(w.lmHead, s.vocabStart, s.vocabSize);
  int64_t bytes = tensorBytes(w.embed) + (tied ? 0 : tensorBytes(w.lmHead)) + tensorBytes(w.finalNorm);
  for (LayerWeights& L : w.layers) {
    L.q = rowSlice(L.q, s.headStart * D, s.numHeads * D);
    L.k = rowSlice(L.k, s.kvHeadStart * D, s.numKvHeads * D);
    L.v = rowSlice(L.v, s.kvHeadStart * D, s.numKvHeads * D);
    if (L.qBias.data) {
      L.qBias = rowSlice(L.qBias, s.headStart * D, s.numHeads * D);
      L.kBias = rowSlice(L.kBias, s.kvHeadStart * D, s.numKvHeads * D);
      L.vBias = rowSlice(L.vBias, s.kvHeadStart * D, s.numKvHeads * D);
    }
    L.o = columnSlice(L.o, s.headStart * D, s.numHeads * D, model.shardCopies);
    L.gate = rowSlice(L.gate, s.interStart, s.intermediateSize);
    L.up = rowSlice(L.up, s.interStart, s.intermediateSize);
    L.down = columnSlice(L.down, s.interStart, s.intermediateSize, model.shardCopies);
    for (const HostTensor* t : {&L.inputNorm, &L.q, &L.k, &L.v, &L.o, &L.qBias, &L.kBias, &L.vBias, &L.qNorm, &L.kNorm,
                                &L.postAttnNorm, &L.gate, &L.up, &L.down})
      bytes += tensorBytes(*t);
  }
  model.weightsBytes = bytes;
}

}  // namespace dsg
