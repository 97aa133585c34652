// The model: config, timm-layout weights, sites, and a forward pass whose linear layers and
// attention matmuls go through a SiteHandler, so quantization can act at every site without the
// model knowing about it. Four families: ViT and DeiT, Swin, and RepVGG (a CNN whose fused convs
// are linear sites over im2col patches, core/repvgg.h).
//
//   QS_ASSIGN_OR_RETURN(ViTModel model, ViTModel::Load(config_path, weights_path));
//   torch::Tensor logits = model.Forward(images);        // float, no quantization
//   torch::Tensor q = model.Forward(images, &handler);   // every site through `handler`
#ifndef QS_CORE_VIT_H_
#define QS_CORE_VIT_H_

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"

namespace qs::core {

// The config JSON (timm's names; docs/checkpoints.md lists the keys). "architecture" names the
// family: "vit" and "deit" (one forward: class, distillation and register tokens, LayerScale),
// "swin" (windowed attention with shifts, relative position bias, patch merging) or "repvgg" (the
// CNN of core/repvgg.h: its fused 3×3 convs are linear sites over im2col patches).
struct ViTConfig {
  std::string architecture = "vit";
  int64_t img_size = 0;
  int64_t patch_size = 0;
  int64_t in_chans = 0;
  int64_t embed_dim = 0;              // Swin: the first stage's width (doubled by every merging)
  int64_t depth = 0;                  // ViT: blocks; Swin: blocks of all stages
  int64_t num_heads = 0;              // ViT: heads of every block; Swin: the first stage's
  double mlp_ratio = 4.0;
  int64_t num_classes = 0;
  std::string global_pool = "token";  // "token" (class token) or "avg" (mean of patch tokens)
  bool qkv_bias = true;
  double layer_norm_eps = 1e-6;
  // ViT/DeiT only.
  bool distilled = false;              // dist_token and head_dist, heads averaged at inference
  int64_t reg_tokens = 0;              // register tokens after the class (and dist) token
  bool no_embed_class = false;         // pos_embed covers the patches only
  std::optional<double> init_values;   // LayerScale (ls1/ls2 gammas) when set
  // Swin only.
  std::vector<int64_t> depths;         // blocks per stage
  std::vector<int64_t> stage_heads;    // heads per stage (the JSON key "num_heads")
  int64_t window_size = 0;
  // RepVGG only (depths above: blocks per stage).
  int64_t stem_chs = 0;
  std::vector<int64_t> widths;  // output channels per stage
  double bn_eps = 1e-5;
  // The evaluation transform (timm's data config; timm's defaults when absent).
  std::vector<double> mean;           // per input channel
  std::vector<double> std;            // per input channel
  double crop_pct = 0.875;
  std::string interpolation = "bicubic";

  bool is_swin() const { return architecture == "swin"; }
  bool is_repvgg() const { return architecture == "repvgg"; }
  int64_t grid() const { return img_size / patch_size; }
  int64_t num_patches() const { return grid() * grid(); }
  // ViT: class, distillation and register tokens before the patches.
  int64_t num_prefix_tokens(bool has_cls_token) const {
    return (has_cls_token ? 1 : 0) + (distilled ? 1 : 0) + reg_tokens;
  }
  int64_t head_dim() const { return embed_dim / num_heads; }
  int64_t mlp_hidden() const { return static_cast<int64_t>(embed_dim * mlp_ratio); }
  // Swin stages: width, token-grid side, window and the blocks' heads.
  int64_t num_stages() const { return static_cast<int64_t>(depths.size()); }
  int64_t stage_dim(int64_t stage) const { return embed_dim << stage; }
  int64_t stage_resolution(int64_t stage) const { return grid() >> stage; }
  // timm's rule: a stage no larger than the window attends globally, without shift.
  int64_t stage_window(int64_t stage) const {
    return std::min(window_size, stage_resolution(stage));
  }
  int64_t num_features() const {
    if (is_repvgg()) return widths.back();
    return is_swin() ? stage_dim(num_stages() - 1) : embed_dim;
  }
};

// Parses and validates a config: required keys present, every key of the right type, no key unknown
// to the family, sizes that divide (img_size by patch_size, widths by heads, Swin's stage grids by
// 2 and by the window), mean/std one per channel (ImageNet's when absent for 3 channels). RepVGG
// takes no transformer keys (patch_size, embed_dim, ...): stem_chs, depths, widths, bn_eps.
StatusOr<ViTConfig> ParseViTConfig(const nlohmann::json& j);
StatusOr<ViTConfig> LoadViTConfig(const std::string& path);
nlohmann::json ToJson(const ViTConfig& config);

// One quantizable point of the model.
struct Site {
  std::string name;         // module path, e.g. "blocks.3.mlp.fc1" or "blocks.3.attn.qk_matmul"
  SiteKind kind;
  std::string weight;       // linear sites: the weight tensor name; empty for the others
  int64_t num_heads = 1;    // heads of the attention around the site (per-head grouping)
  int64_t macs = 0;         // multiply-adds per image; non-linear sites: elements per image
  int64_t input_elements = 0;  // elements of the site's inputs per image (both matmul operands)
};

// Whether `site` is the patch embedding, the convolution the model runs as a linear site over
// flattened patches (ERQ treats it as a convolution; it sees patches, not tokens).
inline bool IsPatchEmbedding(const Site& site) { return site.name == "patch_embed.proj"; }

class ViTModel;
// The patch embedding and the classifier head(s) ("head", distilled DeiT's "head_dist", Swin's
// "head.fc"): the sites uniform recipes keep at 8 bits.
std::vector<std::string> EdgeSites(const ViTModel& model);

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
  // The non-linear sites: softmax over the last dimension of the attention scores [G, H, N, N],
  // the exact GELU of fc1's output, and LayerNorm over the last dimension with affine
  // `weight`, `bias` (float [C]) and `eps`.
  virtual torch::Tensor Softmax(const Site& site, const torch::Tensor& x);
  virtual torch::Tensor Gelu(const Site& site, const torch::Tensor& x);
  virtual torch::Tensor LayerNorm(const Site& site, const torch::Tensor& x,
                                  const torch::Tensor& weight, const torch::Tensor& bias,
                                  double eps);
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
  // Every site, segment by segment: a segment's linear and matmul sites in forward order, then its
  // non-linear sites (LayerNorms, softmax, GELU; none in RepVGG) in forward order. Non-linear
  // site names: "<block>.norm1", "<block>.attn.softmax", "<block>.norm2", "<block>.mlp.act",
  // the final "norm" / "fc_norm", Swin's "patch_embed.norm" and "<stage>.downsample.norm"; a
  // LayerNorm site's affine is "<name>.weight" / "<name>.bias".
  const std::vector<Site>& sites() const { return sites_; }
  const Site* FindSite(const std::string& name) const;
  std::map<std::string, SiteKind> SiteKinds() const;
  // All parameters by timm name (float32, CPU or the model's device).
  const std::map<std::string, torch::Tensor>& tensors() const { return tensors_; }
  const torch::Tensor& tensor(const std::string& name) const { return tensors_.at(name); }
  // Where the weights live.
  torch::Device device() const { return tensors_.at(sites_.front().weight).device(); }

  // A model sharing this one's tensors except those in `replacements`. INVALID_ARGUMENT for a
  // name the model lacks, another shape, a non-float dtype or non-finite values.
  StatusOr<ViTModel> WithTensors(const std::map<std::string, torch::Tensor>& replacements) const;
  // The model on `device` (weights copied).
  ViTModel To(const torch::Device& device) const;

  // Logits [B, num_classes] for normalized images [B, in_chans, img_size, img_size]. With
  // `handler`, every site goes through it. Records autograd when its tensors require grad.
  torch::Tensor Forward(const torch::Tensor& images, SiteHandler* handler = nullptr) const;

  // The same pass in segments, so one block can be run (and its site inputs captured) alone:
  // segment 0 is the patch embedding (images → tokens with the prefix tokens and position
  // embedding), then one segment per block (tokens → tokens; Swin's patch mergings are segments
  // of their own), the last the head (tokens → logits). RepVGG: the stem, one segment per block
  // (feature maps [B, C, H, W]), the head. Forward(images) equals running the segments in order,
  // bit for bit.
  int64_t num_segments() const { return static_cast<int64_t>(segments_.size()); }
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
  struct Segment {
    enum class Kind { kEmbed, kBlock, kMerge, kHead } kind;
    std::string prefix;  // tensor-name prefix ("blocks.3.", "layers.1.blocks.0.", ...)
    int64_t stage = 0;   // Swin
    int64_t shift = 0;   // Swin blocks: the cyclic shift
    int64_t stride = 1;  // RepVGG blocks: the conv's stride
    size_t first_site = 0, num_sites = 0;
  };
  void BuildSites();
  torch::Tensor OptionalTensor(const std::string& name) const;  // undefined when absent
  // A block's attention (sites[0..3]: qkv, q·kᵀ, softmax·v, proj; sites[7]: the softmax) over
  // token groups x [G, N, C]
  // (G: images for ViT, windows for Swin); `adjust`, when set, changes q·kᵀ before the softmax.
  using ScoreAdjust = std::function<torch::Tensor(const torch::Tensor&)>;
  torch::Tensor Attention(const Site* sites, const std::string& prefix, const torch::Tensor& x,
                          int64_t heads, const ScoreAdjust& adjust, SiteHandler& h) const;
  // A block's MLP (sites[0..1]: fc1, fc2; sites[5]: the GELU).
  torch::Tensor Mlp(const Site* sites, const std::string& prefix, const torch::Tensor& x,
                    SiteHandler& h) const;
  torch::Tensor EmbedPatches(const torch::Tensor& images, SiteHandler& h) const;
  torch::Tensor ViTBlock(const Segment& s, const torch::Tensor& x, SiteHandler& h) const;
  torch::Tensor SwinBlock(const Segment& s, const torch::Tensor& x, SiteHandler& h) const;
  torch::Tensor SwinMerge(const Segment& s, const torch::Tensor& x, SiteHandler& h) const;
  torch::Tensor Head(const Segment& s, const torch::Tensor& x, SiteHandler& h) const;
  // A fused RepVGG block (the stem included): ReLU(conv3×3(x) + bias) on [B, C, H, W].
  torch::Tensor RepVggBlock(const Segment& s, const torch::Tensor& x, SiteHandler& h) const;

  ViTConfig config_;
  std::vector<Segment> segments_;
  std::vector<int64_t> segment_of_site_;
  // Swin: per block, the relative position index [N·N] and (shifted blocks) the mask [nW, N, N].
  std::map<std::string, torch::Tensor> derived_;
  std::map<std::string, torch::Tensor> tensors_;
  std::vector<Site> sites_;
  std::map<std::string, size_t> site_index_;
};

// The tensor names and shapes a model with `config` must have; `has_cls_token` and the final-norm
// name ("norm" or "fc_norm") vary with ViT checkpoints (Swin has neither choice).
std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(const ViTConfig& config,
                                                                 bool has_cls_token,
                                                                 const std::string& final_norm);

// Fresh weights for `config` (truncated-normal linear weights, std 0.02, as timm initializes; a
// class token; LayerScale gammas at init_values), drawn from `seed`. Used by training and tests.
std::map<std::string, torch::Tensor> InitViTTensors(const ViTConfig& config, uint64_t seed);

}  // namespace qs::core

#endif  // QS_CORE_VIT_H_
