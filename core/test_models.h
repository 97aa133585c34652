// Small random models and inputs for core's tests.
#ifndef QS_CORE_TEST_MODELS_H_
#define QS_CORE_TEST_MODELS_H_

#include "core/reparam.h"
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

// The other families, as small: distilled DeiT, a ViT with LayerScale and register tokens (pos
// embedding over the patches only, average pooling), and a two-stage Swin on 16×16 RGB images
// (patch 2, window 4: stage grids 8 and 4, so stage 0 shifts its odd blocks and stage 1 attends
// globally).
inline ViTConfig TinyDistilledConfig() {
  ViTConfig c = TinyConfig();
  c.architecture = "deit";
  c.distilled = true;
  return c;
}
inline ViTConfig TinyLayerScaleRegistersConfig() {
  ViTConfig c = TinyConfig();
  c.init_values = 0.5;
  c.reg_tokens = 2;
  c.no_embed_class = true;
  c.global_pool = "avg";
  return c;
}
inline ViTConfig TinySwinConfig() {
  ViTConfig c;
  c.architecture = "swin";
  c.img_size = 16;
  c.patch_size = 2;
  c.in_chans = 3;
  c.embed_dim = 16;
  c.depths = {2, 2};
  c.stage_heads = {2, 4};
  c.num_heads = 2;
  c.depth = 4;
  c.window_size = 4;
  c.mlp_ratio = 2.0;
  c.num_classes = 5;
  c.global_pool = "avg";
  c.layer_norm_eps = 1e-5;
  c.mean = {0.485, 0.456, 0.406};
  c.std = {0.229, 0.224, 0.225};
  return c;
}

// Random weights with a larger spread than the training init, so activations are not tiny.
inline std::map<std::string, torch::Tensor> TinyTensors(const ViTConfig& c, uint64_t seed) {
  auto t = InitViTTensors(c, seed);
  torch::manual_seed(seed + 100);
  for (auto& [name, v] : t) {
    if (v.dim() >= 2 || name.find("bias") != std::string::npos) {
      v = torch::randn(v.sizes()) * (v.dim() >= 2 ? 0.2 : 0.05);
    } else if (name.find(".gamma") != std::string::npos) {
      v = 0.5 + torch::rand(v.sizes());
    }
  }
  return t;
}

// `model`'s tensors with outlier channels after the LayerNorms that feed attn.qkv and mlp.fc1,
// as real ImageNet ViTs have: `channels` channels of each such LayerNorm get their gain and bias
// multiplied by `factor`, and the next layer's matching input columns divided by it, so the float
// model computes the same function (to float rounding). The channels are spread over the width,
// the same in every block (real outliers sit in a few fixed residual channels).
inline std::map<std::string, torch::Tensor> WithLayerNormOutliers(const ViTModel& model,
                                                                  int64_t channels,
                                                                  double factor) {
  std::map<std::string, torch::Tensor> out;
  for (const Site& site : model.sites()) {
    const std::string norm = ReparamNorm(site.name);
    if (site.kind != SiteKind::kLinear || norm.empty()) continue;
    auto gamma = model.tensor(norm + ".weight").clone();
    auto beta = model.tensor(norm + ".bias").clone();
    auto weight = model.tensor(site.weight).clone();
    const int64_t width = gamma.size(0);
    for (int64_t k = 0; k < channels && k < width; ++k) {
      const int64_t c = (k * width / channels + width / (2 * channels) + 1) % width;
      gamma[c] *= factor;
      beta[c] *= factor;
      weight.select(1, c).div_(factor);
    }
    out[norm + ".weight"] = gamma;
    out[norm + ".bias"] = beta;
    out[site.weight] = weight;
  }
  return out;
}

}  // namespace qs::core::testing

#endif  // QS_CORE_TEST_MODELS_H_
