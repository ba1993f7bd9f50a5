// The Qwen2.5-VL vision tower on the CPU: patch embedding, 2-D rotary, window / full attention blocks (RMSNorm,
// qkv and proj with bias, SwiGLU MLP with bias) and the patch merger. Matrices stay in their file dtype (kernels.h
// widens them); norm weights and biases are copied to f32 at load. Images are encoded one at a time: attention never
// crosses an image (full-attention blocks see one frame, the others one window), so that equals a batch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

namespace dsg {

struct TensorRefDesc;
class MappedFile;
class ThreadPool;

struct VisionDesc {
  int depth = 0, hiddenSize = 0, intermediateSize = 0, numHeads = 0, inChannels = 0, outHiddenSize = 0;
  int patchSize = 0, spatialMergeSize = 0, temporalPatchSize = 0, windowSize = 0;
  std::vector<int> fullAttBlockIndexes;
  float rmsNormEps = 1e-6f;
};

class VisionTower {
 public:
  /** Maps the files and checks every tower tensor (name, shape, bounds); throws EngineError. */
  VisionTower(const VisionDesc& desc, const std::vector<TensorRefDesc>& tensors, int threads);
  ~VisionTower();
  VisionTower(const VisionTower&) = delete;
  VisionTower& operator=(const VisionTower&) = delete;

  const VisionDesc& desc() const { return desc_; }
  /** Values per patch row of pixelValues: channels * temporal * patch^2. */
  int64_t patchDim() const;
  /** Encodes one image: pixels [t*h*w, patchDim] in the processor's patch order; out [t*h*w / merge^2, outHidden].
   * The caller has checked the shapes (the addon boundary). */
  void encode(const float* pixels, int t, int h, int w, float* out);

 private:
  struct Mat {
    const void* data = nullptr;
    DType dtype = DType::F32;
  };
  struct Block {
    std::vector<float> norm1, norm2, qkvBias, projBias, gateBias, upBias, downBias;
    Mat qkv, proj, gate, up, down;
    bool fullAttention = false;
  };
  VisionDesc desc_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::unique_ptr<ThreadPool> pool_;
  Mat patchEmbed_, mergerFc1_, mergerFc2_;
  std::vector<float> mergerNorm_, mergerBias1_, mergerBias2_;
  std::vector<Block> blocks_;
};

}  // namespace dsg
