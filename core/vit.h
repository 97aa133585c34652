// The ViT/DeiT model: config, timm-layout weights, sites, and a forward pass whose linear layers and
// attention matmuls go through a SiteHandler, so quantization can act at every site without the
// model knowing about it.
//
//   QS_ASSIGN_OR_RETURN(ViTModel model, ViTModel::Load(config_path, weights_path));
//   torch::Tensor logits = model.Forward(images);        // float, no quantization
//   torch::Tensor q = model.Forward(images, &handler);   // every site through `handler`
#ifndef QS_CORE_VIT_H_
#define QS_CORE_VIT_H_

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"

namespace qs::core {

// The config JSON, with exactly these keys (timm names).
struct ViTConfig {
  std::string architecture = "vit";
  int64_t img_size = 0;
  int64_t patch_size = 0;
  int64_t in_chans = 0;
  int64_t embed_dim = 0;
  int64_t depth = 0;
  int64_t num_heads = 0;
  double mlp_ratio = 4.0;
  int64_t num_classes = 0;
  std::string global_pool = "token";  // "token" (class token) or "avg" (mean of patch tokens)
  bool qkv_bias = true;
  double layer_norm_eps = 1e-6;
  std::vector<double> mean;           // per input channel
  std::vector<double> std;            // per input channel

  int64_t num_patches() const { return (img_size / patch_size) * (img_size / patch_size); }
  int64_t head_dim() const { return embed_dim / num_heads; }
  int64_t mlp_hidden() const { return static_cast<int64_t>(embed_dim * mlp_ratio); }
};

// Parses and validates a config: every key present with the right type, no unknown key, sizes that
// divide (img_size by patch_size, embed_dim by num_heads), mean/std one per channel.
StatusOr<ViTConfig> ParseViTConfig(const nlohmann::json& j);
StatusOr<ViTConfig> LoadViTConfig(const std::string& path);
nlohmann::json ToJson(const ViTConfig& config);

// One quantizable point of the model.
struct Site {
  std::string name;         // module path, e.g. "blocks.3.mlp.fc1" or "blocks.3.attn.qk_matmul"
  SiteKind kind;
  std::string weight;       // linear sites: the weight tensor name; empty for matmul sites
};

// Whether `site` is the patch embedding, the convolution the model runs as a linear site over
// flattened patches (ERQ treats it as a convolution; it sees patches, not tokens).
inline bool IsPatchEmbedding(const Site& site) { return site.name == "patch_embed.proj"; }

// Called by ViTModel::Forward at every site. The defaults compute the float operation.
class SiteHandler {
 public:
  virtual ~SiteHandler() = default;
  // y = x·Wᵀ + b for the linear site `site` (x: [..., in], weight: [out, in], bias may be undefined).
  virtual torch::Tensor Linear(const Site& site, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias);
  // lhs·rhs for an attention matmul site (lhs: [B, H, N, K], rhs: [B, H, K, M]).
  virtual torch::Tensor Matmul(const Site& site, const torch::Tensor& lhs,
                               const torch::Tensor& rhs);
};

class ViTModel {
 public:
  // Loads the config and the safetensors weights (F32, F16 or BF16; kept as float32), or a
  // qsearch quantized-weights file (dequantized). Errors name the tensor: NOT_FOUND for a missing one, INVALID_ARGUMENT for a wrong shape or dtype, DATA_LOSS
  // for a damaged file.
  static StatusOr<ViTModel> Load(const std::string& config_path, const std::string& weights_path);
  // The same from a parsed config and tensors already in memory (validated identically).
  static StatusOr<ViTModel> FromTensors(const ViTConfig& config,
                                        std::map<std::string, torch::Tensor> tensors);

  const ViTConfig& config() const { return config_; }
  const std::vector<Site>& sites() const { return sites_; }
  const Site* FindSite(const std::string& name) const;
  std::map<std::string, SiteKind> SiteKinds() const;
  // All parameters by timm name (float32, CPU or the model's device).
  const std::map<std::string, torch::Tensor>& tensors() const { return tensors_; }
  const torch::Tensor& tensor(const std::string& name) const { return tensors_.at(name); }

  // A model sharing this one's tensors except those in `replacements`. INVALID_ARGUMENT for a
  // name the model lacks, another shape, a non-float dtype or non-finite values.
  StatusOr<ViTModel> WithTensors(const std::map<std::string, torch::Tensor>& replacements) const;
  // The model on `device` (weights copied).
  ViTModel To(const torch::Device& device) const;

  // Logits [B, num_classes] for normalized images [B, in_chans, img_size, img_size]. With
  // `handler`, every site goes through it. Records autograd when its tensors require grad.
  torch::Tensor Forward(const torch::Tensor& images, SiteHandler* handler = nullptr) const;

  // The same pass in segments, so one block can be run (and its site inputs captured) alone:
  // segment 0 is the patch embedding (images → tokens with class token and position embedding),
  // segment 1 + i is block i (tokens → tokens), segment depth + 1 the head (tokens → logits).
  // Forward(images) equals running the segments in order, bit for bit.
  int64_t num_segments() const { return config_.depth + 2; }
  torch::Tensor ForwardSegment(int64_t segment, const torch::Tensor& input,
                               SiteHandler* handler = nullptr) const;
  // The segment holding `site` (its index in sites() decides), and the sites of a segment.
  int64_t SegmentOf(const Site& site) const;
  std::vector<const Site*> SegmentSites(int64_t segment) const;

  // Forward in batches under inference mode; images may be on the CPU and are moved to the model's
  // device a batch at a time. Returns CPU float logits.
  StatusOr<torch::Tensor> Logits(const torch::Tensor& images, SiteHandler* handler = nullptr,
                                 int64_t batch_size = 256) const;

  // The sha256 digest of the canonical config JSON and every tensor's name, shape and bytes.
  std::string Digest() const;

 private:
  ViTConfig config_;
  std::map<std::string, torch::Tensor> tensors_;
  std::vector<Site> sites_;
  std::map<std::string, size_t> site_index_;
};

// The tensor names and shapes a model with `config` must have; `has_cls_token` and the final-norm
// name ("norm" or "fc_norm") vary with the checkpoint.
std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(const ViTConfig& config,
                                                                 bool has_cls_token,
                                                                 const std::string& final_norm);

// Fresh weights for `config` (truncated-normal linear weights, std 0.02, as timm initializes),
// drawn from `seed`. Used by training and tests.
std::map<std::string, torch::Tensor> InitViTTensors(const ViTConfig& config, uint64_t seed);

}  // namespace qs::core

#endif  // QS_CORE_VIT_H_
