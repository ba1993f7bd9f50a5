// The decode path as it was before decode_attention.cu: attention.cu of an earlier commit, compiled under a renamed
// namespace so decode_attention_check can time it beside the new kernel in one process. The source is
// baseline_attention.inc beside this file (run_decode_attention_check.sh extracts it with git show) or the file
// named by -DDSG_BASELINE_ATTENTION='"path"'; without it this file compiles to nothing.
#include <algorithm>

#ifndef DSG_BASELINE_ATTENTION
#define DSG_BASELINE_ATTENTION "baseline_attention.inc"
#endif
#if __has_include(DSG_BASELINE_ATTENTION)
#define dsg dsg_baseline
#include DSG_BASELINE_ATTENTION
#undef dsg

namespace decode_check {

/** That commit's decode step: attentionKernel with the backend's old split rule, then the merge when split. */
void baselineDecode(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, const int4* seqs,
                    const int32_t* pageTable, int numSeqs, int pageSize, int heads, int kvHeads, int headDim,
                    float scale, int numSplits, __nv_bfloat16* out, float* partO, float* partLse, cudaStream_t stream) {
  const dsg_baseline::cuda::AttnBatch b{seqs, pageTable, numSeqs, 1, pageSize};
  dsg_baseline::cuda::launchAttention(q, k, v, b, numSeqs, heads, kvHeads, headDim, scale, numSplits, out, partO,
                                      partLse, stream);
  if (numSplits > 1)
    dsg_baseline::cuda::launchAttentionMerge(partO, partLse, numSplits, numSeqs, heads, headDim, out, stream);
}

void baselineMerge(const float* partO, const float* partLse, int numSplits, int numTokens, int heads, int headDim,
                   __nv_bfloat16* out, cudaStream_t stream) {
  dsg_baseline::cuda::launchAttentionMerge(partO, partLse, numSplits, numTokens, heads, headDim, out, stream);
}

/** The old backend's splitsFor: about two blocks per SM, at most 16. */
int baselineSplits(int numSeqs, int kvHeads, int smCount) {
  const int want = (2 * smCount + numSeqs * kvHeads - 1) / (numSeqs * kvHeads);
  return std::max(1, std::min(16, want));
}

void baselinePrepare() { dsg_baseline::cuda::prepareAttentionKernels(); }

}  // namespace decode_check
#endif  // __has_include(DSG_BASELINE_ATTENTION)
