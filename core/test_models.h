// Small random models and inputs for core's tests.
#ifndef QS_CORE_TEST_MODELS_H_
#define QS_CORE_TEST_MODELS_H_

#include "core/vit.h"

namespace qs::core::testing {

// A 2-block ViT on 16×16 single-channel images, patch 4, width 32, 4 heads.
inline ViTConfig TinyConfig() {
  ViTConfig c;
  c.img_size = 16;
  c.patch_size = 4;
  c.in_chans = 1;
  c.embed_dim = 32;
  c.depth = 2;
  c.num_heads = 4;
  c.mlp_ratio = 2.0;
  c.num_classes = 5;
  c.mean = {0.5};
  c.std = {0.25};
  return c;
}

// Random weights with a larger spread than the training init, so activations are not tiny.
inline std::map<std::string, torch::Tensor> TinyTensors(const ViTConfig& c, uint64_t seed) {
  auto t = InitViTTensors(c, seed);
  torch::manual_seed(seed + 100);
  for (auto& [name, v] : t) {
    if (v.dim() >= 2 || name.find("bias") != std::string::npos) {
      v = torch::randn(v.sizes()) * (v.dim() >= 2 ? 0.2 : 0.05);
    }
  }
  return t;
}

}  // namespace qs::core::testing

#endif  // QS_CORE_TEST_MODELS_H_
