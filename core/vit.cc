#include "core/vit.h"

#include <cmath>
#include <limits>
#include <set>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "common/json_fields.h"
#include "common/sha256.h"
#include "common/strings.h"
#include "core/quantized_format.h"
#include "core/repvgg.h"
#include "core/safetensors.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

using nlohmann::json;

// Keys every family reads, the transformers' and each family's own.
const std::set<std::string> kCommonKeys = {"architecture", "img_size", "in_chans", "num_classes",
                                           "mean",         "std",      "crop_pct", "interpolation"};
const std::set<std::string> kTransformerKeys = {"patch_size", "embed_dim",   "mlp_ratio",
                                                "qkv_bias",   "global_pool", "layer_norm_eps"};
const std::set<std::string> kViTKeys = {"depth",      "num_heads",      "distilled",
                                        "reg_tokens", "no_embed_class", "init_values"};
const std::set<std::string> kSwinKeys = {"depths", "num_heads", "window_size"};
const std::set<std::string> kRepVggKeys = {"stem_chs", "depths", "widths", "bn_eps"};

// Reads `key` into `out`; absent keys are an error unless `optional` (`out` then keeps its
// default).
template <typename T>
Status Read(const json& j, const char* key, T* out, bool optional = false) {
  if (!j.contains(key)) {
    if (optional) return OkStatus();
    return InvalidArgumentError(std::string("config: missing key '") + key + "'");
  }
  const json& v = j[key];
  bool type_ok = true;
  if constexpr (std::is_same_v<T, bool>) {
    type_ok = v.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    type_ok = v.is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    type_ok = v.is_number();
  } else if constexpr (std::is_same_v<T, std::string>) {
    type_ok = v.is_string();
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    type_ok = v.is_array();
    if (type_ok) {
      for (const auto& e : v) type_ok = type_ok && e.is_number_integer();
    }
  } else {
    type_ok = v.is_array();
    if (type_ok) {
      for (const auto& e : v) type_ok = type_ok && e.is_number();
    }
  }
  if (!type_ok) {
    return InvalidArgumentError(std::string("config: key '") + key + "' has the wrong type (" +
                                v.type_name() + ")");
  }
  // Integers beyond int64 (2^64 - 1 once read as -1) are out of range, said with their value.
  auto too_big = [](const json& e) {
    return e.is_number_unsigned() &&
           e.template get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  };
  bool in_range = !too_big(v);
  if (v.is_array()) {
    for (const auto& e : v) in_range = in_range && !too_big(e);
  }
  if (!in_range) {
    return InvalidArgumentError(std::string("config: key '") + key + "' is out of range (" +
                                v.dump().substr(0, 60) + ")");
  }
  *out = v.get<T>();
  return OkStatus();
}

std::string ShapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Status CheckPositive(const std::string& key, int64_t value, int64_t limit) {
  if (value <= 0) {
    return InvalidArgumentError("config: " + key + " must be positive, got " +
                                std::to_string(value));
  }
  if (value > limit) {
    return InvalidArgumentError("config: " + key + " " + std::to_string(value) +
                                " exceeds the limit " + std::to_string(limit));
  }
  return OkStatus();
}

// The ViT/DeiT keys: blocks, heads, prefix tokens, LayerScale.
Status ParseViTFamily(const json& j, ViTConfig* c) {
  auto bad = [](const std::string& why) { return InvalidArgumentError("config: " + why); };
  QS_RETURN_IF_ERROR(Read(j, "depth", &c->depth));
  QS_RETURN_IF_ERROR(Read(j, "num_heads", &c->num_heads));
  QS_RETURN_IF_ERROR(Read(j, "distilled", &c->distilled, true));
  QS_RETURN_IF_ERROR(Read(j, "reg_tokens", &c->reg_tokens, true));
  QS_RETURN_IF_ERROR(Read(j, "no_embed_class", &c->no_embed_class, true));
  if (j.contains("init_values") && !j["init_values"].is_null()) {
    double v = 0;
    QS_RETURN_IF_ERROR(Read(j, "init_values", &v));
    if (!std::isfinite(v)) return bad("init_values must be finite");
    if (v != 0) c->init_values = v;  // timm: LayerScale only for a non-zero value
  }
  QS_RETURN_IF_ERROR(CheckPositive("depth", c->depth, 512));
  QS_RETURN_IF_ERROR(CheckPositive("num_heads", c->num_heads, c->embed_dim));
  if (c->embed_dim % c->num_heads != 0) {
    return bad("embed_dim " + std::to_string(c->embed_dim) + " is not a multiple of num_heads " +
               std::to_string(c->num_heads));
  }
  if (c->reg_tokens < 0 || c->reg_tokens > 256) return bad("reg_tokens must be in [0, 256]");
  if (c->global_pool != "token" && c->global_pool != "avg") {
    return bad("global_pool must be \"token\" or \"avg\", got \"" + c->global_pool + "\"");
  }
  if (c->distilled && (c->global_pool != "token" || c->reg_tokens > 0 || c->no_embed_class)) {
    return bad("distilled models take global_pool \"token\" without register tokens or "
               "no_embed_class (as timm's VisionTransformerDistilled)");
  }
  return OkStatus();
}

// The Swin keys: stages, their heads, the window.
Status ParseSwinFamily(const json& j, ViTConfig* c) {
  auto bad = [](const std::string& why) { return InvalidArgumentError("config: " + why); };
  QS_RETURN_IF_ERROR(Read(j, "depths", &c->depths));
  QS_RETURN_IF_ERROR(Read(j, "num_heads", &c->stage_heads));
  QS_RETURN_IF_ERROR(Read(j, "window_size", &c->window_size));
  if (c->depths.empty() || c->depths.size() > 8) return bad("depths must list 1 to 8 stages");
  if (c->stage_heads.size() != c->depths.size()) {
    return bad("num_heads must list one value per stage (" + std::to_string(c->depths.size()) +
               ")");
  }
  QS_RETURN_IF_ERROR(CheckPositive("window_size", c->window_size, 256));
  if (c->global_pool != "avg") return bad("Swin takes global_pool \"avg\"");
  c->depth = 0;
  for (int64_t s = 0; s < c->num_stages(); ++s) {
    const std::string stage = "stage " + std::to_string(s);
    QS_RETURN_IF_ERROR(CheckPositive("depths[" + std::to_string(s) + "]", c->depths[s], 512));
    QS_RETURN_IF_ERROR(CheckPositive("num_heads[" + std::to_string(s) + "]", c->stage_heads[s],
                                     c->stage_dim(s)));
    if (c->stage_dim(s) % c->stage_heads[s] != 0) {
      return bad(stage + ": width " + std::to_string(c->stage_dim(s)) +
                 " is not a multiple of num_heads " + std::to_string(c->stage_heads[s]));
    }
    if (s > 0 && c->stage_resolution(s - 1) % 2 != 0) {
      return bad(stage + ": patch merging needs an even grid, got " +
                 std::to_string(c->stage_resolution(s - 1)));
    }
    if (c->stage_resolution(s) < 1 || c->stage_resolution(s) % c->stage_window(s) != 0) {
      return bad(stage + ": grid " + std::to_string(c->stage_resolution(s)) +
                 " is not a multiple of window_size " + std::to_string(c->stage_window(s)));
    }
    c->depth += c->depths[s];
  }
  if (c->depth > 512) return bad("depths sum to more than 512 blocks");
  c->num_heads = c->stage_heads[0];
  return OkStatus();
}

// The RepVGG keys: stem width, blocks and width per stage, BatchNorm epsilon.
Status ParseRepVggFamily(const json& j, ViTConfig* c) {
  auto bad = [](const std::string& why) { return InvalidArgumentError("config: " + why); };
  QS_RETURN_IF_ERROR(Read(j, "stem_chs", &c->stem_chs));
  QS_RETURN_IF_ERROR(Read(j, "depths", &c->depths));
  QS_RETURN_IF_ERROR(Read(j, "widths", &c->widths));
  QS_RETURN_IF_ERROR(Read(j, "bn_eps", &c->bn_eps, true));
  QS_RETURN_IF_ERROR(CheckPositive("stem_chs", c->stem_chs, 16384));
  if (c->depths.empty() || c->depths.size() > 8) return bad("depths must list 1 to 8 stages");
  if (c->widths.size() != c->depths.size()) {
    return bad("widths must list one value per stage (" + std::to_string(c->depths.size()) + ")");
  }
  c->depth = 0;
  for (size_t s = 0; s < c->depths.size(); ++s) {
    QS_RETURN_IF_ERROR(CheckPositive("depths[" + std::to_string(s) + "]", c->depths[s], 512));
    QS_RETURN_IF_ERROR(CheckPositive("widths[" + std::to_string(s) + "]", c->widths[s], 16384));
    c->depth += c->depths[s];
  }
  if (c->depth > 512) return bad("depths sum to more than 512 blocks");
  if (!(c->bn_eps > 0) || !std::isfinite(c->bn_eps)) return bad("bn_eps must be positive");
  // Not read by the family; set so that shared code sees a consistent config.
  c->patch_size = 1;
  c->embed_dim = c->stem_chs;
  c->global_pool = "avg";
  c->num_heads = 1;
  return OkStatus();
}

// ImageNet's statistics, timm's defaults for three-channel models.
const std::vector<double> kImageNetMean = {0.485, 0.456, 0.406};
const std::vector<double> kImageNetStd = {0.229, 0.224, 0.225};

}  // namespace

StatusOr<ViTConfig> ParseViTConfig(const json& j) {
  if (!j.is_object()) return InvalidArgumentError("config: expected a JSON object");
  ViTConfig c;
  QS_RETURN_IF_ERROR(Read(j, "architecture", &c.architecture));
  if (c.architecture != "vit" && c.architecture != "deit" && c.architecture != "swin" &&
      c.architecture != "repvgg") {
    return InvalidArgumentError("config: architecture \"" + c.architecture +
                                "\" is not a supported family (\"vit\", \"deit\", \"swin\", "
                                "\"repvgg\")");
  }
  const std::set<std::string>& family_keys =
      c.is_repvgg() ? kRepVggKeys : c.is_swin() ? kSwinKeys : kViTKeys;
  for (const auto& item : j.items()) {
    if (!kCommonKeys.count(item.key()) && !family_keys.count(item.key()) &&
        (c.is_repvgg() || !kTransformerKeys.count(item.key()))) {
      return InvalidArgumentError("config: unknown key '" + item.key() + "' for architecture \"" +
                                  c.architecture + "\"");
    }
  }
  if (c.is_swin()) {
    c.global_pool = "avg";
    c.layer_norm_eps = 1e-5;  // timm's Swin uses nn.LayerNorm's default
  }
  QS_RETURN_IF_ERROR(Read(j, "img_size", &c.img_size));
  QS_RETURN_IF_ERROR(Read(j, "in_chans", &c.in_chans));
  QS_RETURN_IF_ERROR(Read(j, "num_classes", &c.num_classes));
  QS_RETURN_IF_ERROR(Read(j, "mean", &c.mean, true));
  QS_RETURN_IF_ERROR(Read(j, "std", &c.std, true));
  QS_RETURN_IF_ERROR(Read(j, "crop_pct", &c.crop_pct, true));
  QS_RETURN_IF_ERROR(Read(j, "interpolation", &c.interpolation, true));
  auto bad = [](const std::string& why) { return InvalidArgumentError("config: " + why); };
  QS_RETURN_IF_ERROR(CheckPositive("img_size", c.img_size, 8192));
  QS_RETURN_IF_ERROR(CheckPositive("in_chans", c.in_chans, 64));
  QS_RETURN_IF_ERROR(CheckPositive("num_classes", c.num_classes, 1000000));
  if (c.is_repvgg()) {
    QS_RETURN_IF_ERROR(ParseRepVggFamily(j, &c));
  } else {
    QS_RETURN_IF_ERROR(Read(j, "patch_size", &c.patch_size));
    QS_RETURN_IF_ERROR(Read(j, "embed_dim", &c.embed_dim));
    QS_RETURN_IF_ERROR(Read(j, "mlp_ratio", &c.mlp_ratio, true));
    QS_RETURN_IF_ERROR(Read(j, "global_pool", &c.global_pool, true));
    QS_RETURN_IF_ERROR(Read(j, "qkv_bias", &c.qkv_bias, true));
    QS_RETURN_IF_ERROR(Read(j, "layer_norm_eps", &c.layer_norm_eps, true));
    QS_RETURN_IF_ERROR(CheckPositive("patch_size", c.patch_size, c.img_size));
    QS_RETURN_IF_ERROR(CheckPositive("embed_dim", c.embed_dim, 16384));
    if (c.img_size % c.patch_size != 0) {
      return bad("img_size " + std::to_string(c.img_size) + " is not a multiple of patch_size " +
                 std::to_string(c.patch_size));
    }
    if (!(c.mlp_ratio > 0) || !(c.mlp_ratio <= 64) || c.embed_dim * c.mlp_ratio < 1) {
      return bad("mlp_ratio must be in (0, 64] with embed_dim · mlp_ratio >= 1");
    }
    if (!(c.layer_norm_eps > 0)) return bad("layer_norm_eps must be positive");
    QS_RETURN_IF_ERROR(c.is_swin() ? ParseSwinFamily(j, &c) : ParseViTFamily(j, &c));
  }
  if (c.mean.empty() && c.std.empty() && c.in_chans == 3) {
    c.mean = kImageNetMean;
    c.std = kImageNetStd;
  }
  if (static_cast<int64_t>(c.mean.size()) != c.in_chans ||
      static_cast<int64_t>(c.std.size()) != c.in_chans) {
    return bad("mean and std need one value per input channel (" + std::to_string(c.in_chans) +
               "; timm's ImageNet defaults apply only to 3 channels)");
  }
  // float32 is what the images are divided in: a std below its normal range (1e-320, say)
  // divides to infinity and the logits to NaN.
  for (double s : c.std) {
    if (!(s >= 1e-6) || !std::isfinite(s)) return bad("std values must be finite and at least 1e-6");
  }
  for (double m : c.mean) {
    if (!std::isfinite(m)) return bad("mean values must be finite");
  }
  if (!(c.crop_pct > 0) || !(c.crop_pct <= 1)) return bad("crop_pct must be in (0, 1]");
  if (c.interpolation != "bicubic" && c.interpolation != "bilinear" &&
      c.interpolation != "nearest") {
    return bad("interpolation must be \"bicubic\", \"bilinear\" or \"nearest\", got \"" +
               c.interpolation + "\"");
  }
  return c;
}

StatusOr<ViTConfig> LoadViTConfig(const std::string& path) {
  QS_ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  auto config = ParseViTConfig(j);
  if (!config.ok()) return config.status().WithContext(path);
  return config;
}

json ToJson(const ViTConfig& c) {
  if (c.is_repvgg()) {
    json j = {{"architecture", c.architecture}, {"img_size", c.img_size},
              {"in_chans", c.in_chans},         {"num_classes", c.num_classes},
              {"stem_chs", c.stem_chs},         {"depths", c.depths},
              {"widths", c.widths},             {"mean", c.mean},
              {"std", c.std}};
    if (c.bn_eps != 1e-5) j["bn_eps"] = c.bn_eps;
    if (c.crop_pct != 0.875) j["crop_pct"] = c.crop_pct;
    if (c.interpolation != "bicubic") j["interpolation"] = c.interpolation;
    return j;
  }
  json j = {{"architecture", c.architecture}, {"img_size", c.img_size},
            {"patch_size", c.patch_size},     {"in_chans", c.in_chans},
            {"embed_dim", c.embed_dim},       {"mlp_ratio", c.mlp_ratio},
            {"num_classes", c.num_classes},   {"global_pool", c.global_pool},
            {"qkv_bias", c.qkv_bias},         {"layer_norm_eps", c.layer_norm_eps},
            {"mean", c.mean},                 {"std", c.std}};
  // Keys at their defaults are left out, so configs written before they existed keep their digest.
  if (c.is_swin()) {
    j["depths"] = c.depths;
    j["num_heads"] = c.stage_heads;
    j["window_size"] = c.window_size;
  } else {
    j["depth"] = c.depth;
    j["num_heads"] = c.num_heads;
    if (c.distilled) j["distilled"] = true;
    if (c.reg_tokens > 0) j["reg_tokens"] = c.reg_tokens;
    if (c.no_embed_class) j["no_embed_class"] = true;
    if (c.init_values) j["init_values"] = *c.init_values;
  }
  if (c.crop_pct != 0.875) j["crop_pct"] = c.crop_pct;
  if (c.interpolation != "bicubic") j["interpolation"] = c.interpolation;
  return j;
}

namespace {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// A pre-norm transformer block's tensors under `p` (width d, MLP width h).
void AddBlockShapes(const std::string& p, int64_t d, int64_t h, bool qkv_bias, ShapeMap* shapes) {
  ShapeMap& s = *shapes;
  s[p + "norm1.weight"] = {d};
  s[p + "norm1.bias"] = {d};
  s[p + "attn.qkv.weight"] = {3 * d, d};
  if (qkv_bias) s[p + "attn.qkv.bias"] = {3 * d};
  s[p + "attn.proj.weight"] = {d, d};
  s[p + "attn.proj.bias"] = {d};
  s[p + "norm2.weight"] = {d};
  s[p + "norm2.bias"] = {d};
  s[p + "mlp.fc1.weight"] = {h, d};
  s[p + "mlp.fc1.bias"] = {h};
  s[p + "mlp.fc2.weight"] = {d, h};
  s[p + "mlp.fc2.bias"] = {d};
}

ShapeMap SwinTensorShapes(const ViTConfig& c) {
  const int64_t d = c.embed_dim;
  ShapeMap shapes = {
      {"patch_embed.proj.weight", {d, c.in_chans, c.patch_size, c.patch_size}},
      {"patch_embed.proj.bias", {d}},
      {"patch_embed.norm.weight", {d}},
      {"patch_embed.norm.bias", {d}},
      {"norm.weight", {c.num_features()}},
      {"norm.bias", {c.num_features()}},
      {"head.fc.weight", {c.num_classes, c.num_features()}},
      {"head.fc.bias", {c.num_classes}},
  };
  for (int64_t s = 0; s < c.num_stages(); ++s) {
    const std::string stage = "layers." + std::to_string(s) + ".";
    const int64_t dim = c.stage_dim(s), w = c.stage_window(s);
    if (s > 0) {
      shapes[stage + "downsample.norm.weight"] = {2 * dim};
      shapes[stage + "downsample.norm.bias"] = {2 * dim};
      shapes[stage + "downsample.reduction.weight"] = {dim, 2 * dim};
    }
    for (int64_t b = 0; b < c.depths[s]; ++b) {
      const std::string p = stage + "blocks." + std::to_string(b) + ".";
      AddBlockShapes(p, dim, static_cast<int64_t>(dim * c.mlp_ratio), c.qkv_bias, &shapes);
      shapes[p + "attn.relative_position_bias_table"] = {(2 * w - 1) * (2 * w - 1),
                                                         c.stage_heads[s]};
    }
  }
  return shapes;
}

// timm's relative position index of a w×w window: [N·N] indices into the bias table.
torch::Tensor RelativePositionIndex(int64_t w) {
  auto rows = torch::arange(w, torch::kInt64).repeat_interleave(w);  // [N]
  auto cols = torch::arange(w, torch::kInt64).repeat(w);
  auto dr = rows.unsqueeze(1) - rows.unsqueeze(0) + (w - 1);
  auto dc = cols.unsqueeze(1) - cols.unsqueeze(0) + (w - 1);
  return (dr * (2 * w - 1) + dc).reshape({-1});
}

// [B, r, r, C] → [B·(r/w)², w·w, C] and back.
torch::Tensor WindowPartition(const torch::Tensor& x, int64_t w) {
  const int64_t b = x.size(0), r = x.size(1), c = x.size(3);
  return x.reshape({b, r / w, w, r / w, w, c}).permute({0, 1, 3, 2, 4, 5}).reshape({-1, w * w, c});
}
torch::Tensor WindowReverse(const torch::Tensor& windows, int64_t w, int64_t r) {
  const int64_t c = windows.size(-1), b = windows.size(0) / ((r / w) * (r / w));
  return windows.reshape({b, r / w, r / w, w, w, c}).permute({0, 1, 3, 2, 4, 5}).reshape(
      {b, r, r, c});
}

// timm's shifted-window mask: -100 between tokens that the cyclic shift brought from different
// regions, 0 elsewhere; [nW, N, N].
torch::Tensor ShiftedWindowMask(int64_t r, int64_t w, int64_t shift) {
  auto regions = torch::zeros({1, r, r, 1});
  const int64_t bounds[4] = {0, r - w, r - shift, r};
  float label = 0;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      regions.narrow(1, bounds[i], bounds[i + 1] - bounds[i])
          .narrow(2, bounds[j], bounds[j + 1] - bounds[j])
          .fill_(label++);
    }
  }
  auto windows = WindowPartition(regions, w).squeeze(-1);  // [nW, N]
  auto diff = windows.unsqueeze(1) - windows.unsqueeze(2);
  return torch::zeros_like(diff).masked_fill(diff != 0, -100.0);
}

}  // namespace

std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(const ViTConfig& c,
                                                                 bool has_cls_token,
                                                                 const std::string& final_norm) {
  if (c.is_swin()) return SwinTensorShapes(c);
  if (c.is_repvgg()) return RepVggDeployShapes(c);
  const int64_t d = c.embed_dim;
  const int64_t pos_tokens =
      c.num_patches() + (c.no_embed_class ? 0 : c.num_prefix_tokens(has_cls_token));
  ShapeMap shapes = {
      {"patch_embed.proj.weight", {d, c.in_chans, c.patch_size, c.patch_size}},
      {"patch_embed.proj.bias", {d}},
      {"pos_embed", {1, pos_tokens, d}},
      {final_norm + ".weight", {d}},
      {final_norm + ".bias", {d}},
      {"head.weight", {c.num_classes, d}},
      {"head.bias", {c.num_classes}},
  };
  if (has_cls_token) shapes["cls_token"] = {1, 1, d};
  if (c.distilled) {
    shapes["dist_token"] = {1, 1, d};
    shapes["head_dist.weight"] = {c.num_classes, d};
    shapes["head_dist.bias"] = {c.num_classes};
  }
  if (c.reg_tokens > 0) shapes["reg_token"] = {1, c.reg_tokens, d};
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    AddBlockShapes(b, d, c.mlp_hidden(), c.qkv_bias, &shapes);
    if (c.init_values) {
      shapes[b + "ls1.gamma"] = {d};
      shapes[b + "ls2.gamma"] = {d};
    }
  }
  return shapes;
}

namespace {

// NOT_FOUND for a tensor `expected` names that `tensors` lacks, INVALID_ARGUMENT for a wrong dtype
// or shape or a tensor not expected.
Status CheckTensorShapes(const ViTConfig& config, const ShapeMap& expected,
                         const std::map<std::string, torch::Tensor>& tensors) {
  for (const auto& [name, shape] : expected) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      return NotFoundError("missing tensor '" + name + "' (shape " + ShapeString(shape) +
                           ", expected by the \"" + config.architecture + "\" config)");
    }
    const torch::Tensor& t = it->second;
    auto type = t.scalar_type();
    if (type != torch::kFloat32 && type != torch::kFloat16 && type != torch::kBFloat16) {
      return InvalidArgumentError("tensor '" + name + "' has dtype " +
                                  std::string(c10::toString(type)) +
                                  "; expected F32, F16 or BF16");
    }
    if (t.sizes().vec() != shape) {
      return InvalidArgumentError("tensor '" + name + "' has shape " +
                                  ShapeString(t.sizes().vec()) + ", expected " +
                                  ShapeString(shape));
    }
  }
  for (const auto& [name, t] : tensors) {
    if (!expected.count(name)) {
      return InvalidArgumentError("unexpected tensor '" + name + "' for this \"" +
                                  config.architecture + "\" config");
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<ViTModel> ViTModel::FromTensors(const ViTConfig& config,
                                         std::map<std::string, torch::Tensor> tensors) {
  if (config.is_repvgg()) {
    // timm's BatchNorm step counters carry nothing inference needs.
    for (auto it = tensors.begin(); it != tensors.end();) {
      it = EndsWith(it->first, ".num_batches_tracked") ? tensors.erase(it) : ++it;
    }
    if (IsRepVggTrainForm(tensors)) {
      // The trained branches, checked as they are, then fused: the model runs the deploy form.
      QS_RETURN_IF_ERROR(CheckTensorShapes(config, RepVggTrainShapes(config), tensors));
      tensors = FuseRepVggBranches(config, tensors);
    }
  }
  if (config.is_swin()) {
    // Buffers timm derives from the config (older checkpoints persisted them): recomputed here.
    for (auto it = tensors.begin(); it != tensors.end();) {
      const std::string& n = it->first;
      auto ends = [&](const std::string& s) {
        return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
      };
      it = ends("attn.relative_position_index") || ends(".attn_mask") ? tensors.erase(it) : ++it;
    }
  }
  // ViT: the class token is optional only with average pooling (timm's class_token=False); the
  // final norm is "fc_norm" when timm applies it after average pooling, else "norm".
  const bool transformer = !config.is_swin() && !config.is_repvgg();
  const bool has_cls = transformer && tensors.count("cls_token") > 0;
  if (transformer && !has_cls && (config.global_pool == "token" || config.distilled)) {
    return NotFoundError("missing tensor 'cls_token' (required with global_pool \"token\")");
  }
  const std::string final_norm =
      tensors.count("fc_norm.weight") && !tensors.count("norm.weight") ? "fc_norm" : "norm";
  QS_RETURN_IF_ERROR(
      CheckTensorShapes(config, ExpectedTensorShapes(config, has_cls, final_norm), tensors));
  ViTModel model;
  model.config_ = config;
  for (auto& [name, t] : tensors) {
    auto f = t.to(torch::kFloat32).contiguous();
    if (!torch::isfinite(f).all().item<bool>()) {
      return InvalidArgumentError("tensor '" + name + "' holds NaN or infinite values");
    }
    model.tensors_[name] = f;
  }
  model.BuildSites();
  return model;
}

void ViTModel::BuildSites() {
  const ViTConfig& c = config_;
  sites_.clear();
  segments_.clear();
  derived_.clear();
  auto add_segment = [&](Segment segment, std::vector<Site> segment_sites) {
    segment.first_site = sites_.size();
    segment.num_sites = segment_sites.size();
    for (auto& s : segment_sites) sites_.push_back(std::move(s));
    segments_.push_back(std::move(segment));
  };
  auto linear = [&](const std::string& name, int64_t rows, int64_t heads) {
    const auto& w = tensors_.at(name + ".weight");
    const int64_t in = w.numel() / w.size(0);
    return Site{name, SiteKind::kLinear, name + ".weight", heads, rows * w.numel(), rows * in};
  };
  auto nonlinear = [&](const std::string& name, int64_t elements, int64_t heads) {
    return Site{name, SiteKind::kNonlinear, "", heads, elements, elements};
  };
  // A block's sites over `tokens` tokens per image attending in groups of `group` tokens
  // (windows; all tokens for ViT): each matmul costs tokens · group · dim multiply-adds. The
  // non-linear sites follow the six linear and matmul ones (ViTBlock and SwinBlock rely on it).
  auto block_sites = [&](const std::string& p, int64_t tokens, int64_t group, int64_t dim,
                         int64_t heads) {
    const int64_t macs = tokens * group * dim;
    const int64_t hidden = tensors_.at(p + "mlp.fc1.weight").size(0);
    return std::vector<Site>{
        linear(p + "attn.qkv", tokens, heads),
        Site{p + "attn.qk_matmul", SiteKind::kMatmul, "", heads, macs, 2 * tokens * dim},
        Site{p + "attn.av_matmul", SiteKind::kMatmul, "", heads, macs,
             heads * tokens * group + tokens * dim},
        linear(p + "attn.proj", tokens, heads),
        linear(p + "mlp.fc1", tokens, heads),
        linear(p + "mlp.fc2", tokens, heads),
        nonlinear(p + "norm1", tokens * dim, heads),
        nonlinear(p + "attn.softmax", heads * tokens * group, heads),
        nonlinear(p + "norm2", tokens * dim, heads),
        nonlinear(p + "mlp.act", tokens * hidden, heads)};
  };
  if (c.is_repvgg()) {
    // One conv site per fused block; its macs and input count the conv, not the im2col copies.
    for (const auto& b : RepVggBlocks(c)) {
      const std::string name = b.prefix + "reparam_conv";
      Site conv = linear(name, b.out_side * b.out_side, 1);
      conv.input_elements = b.in_chs * b.in_side * b.in_side;
      Segment segment{b.prefix == "stem." ? Segment::Kind::kEmbed : Segment::Kind::kBlock,
                      b.prefix};
      segment.stride = b.stride;
      add_segment(segment, {conv});
    }
    add_segment({Segment::Kind::kHead, ""}, {linear("head.fc", 1, 1)});
  } else {
    const int64_t first_heads = c.is_swin() ? c.stage_heads.front() : c.num_heads;
    std::vector<Site> embed = {linear("patch_embed.proj", c.num_patches(), first_heads)};
    if (c.is_swin()) {
      embed.push_back(nonlinear("patch_embed.norm", c.num_patches() * c.embed_dim, first_heads));
    }
    add_segment({Segment::Kind::kEmbed, "patch_embed."}, std::move(embed));
    if (c.is_swin()) {
      for (int64_t s = 0; s < c.num_stages(); ++s) {
        const std::string stage = "layers." + std::to_string(s) + ".";
        const int64_t r = c.stage_resolution(s), w = c.stage_window(s), heads = c.stage_heads[s];
        if (s > 0) {
          add_segment({Segment::Kind::kMerge, stage + "downsample.", s},
                      {linear(stage + "downsample.reduction", r * r, heads),
                       nonlinear(stage + "downsample.norm", r * r * 2 * c.stage_dim(s), heads)});
        }
        derived_[stage + "relative_position_index"] = RelativePositionIndex(w);
        const int64_t shift = r > c.window_size ? c.window_size / 2 : 0;
        if (shift > 0) derived_[stage + "attn_mask"] = ShiftedWindowMask(r, w, shift);
        for (int64_t b = 0; b < c.depths[s]; ++b) {
          const std::string p = stage + "blocks." + std::to_string(b) + ".";
          add_segment({Segment::Kind::kBlock, p, s, b % 2 == 1 ? shift : 0},
                      block_sites(p, r * r, w * w, c.stage_dim(s), heads));
        }
      }
      const int64_t last = c.num_stages() - 1, r = c.stage_resolution(last);
      add_segment({Segment::Kind::kHead, "", last},
                  {linear("head.fc", 1, c.stage_heads.back()),
                   nonlinear("norm", r * r * c.num_features(), c.stage_heads.back())});
    } else {
      const int64_t tokens = c.num_patches() + c.num_prefix_tokens(tensors_.count("cls_token") > 0);
      for (int64_t i = 0; i < c.depth; ++i) {
        const std::string p = "blocks." + std::to_string(i) + ".";
        add_segment({Segment::Kind::kBlock, p}, block_sites(p, tokens, tokens, c.embed_dim,
                                                            c.num_heads));
      }
      std::vector<Site> heads = {linear("head", 1, c.num_heads)};
      if (c.distilled) heads.push_back(linear("head_dist", 1, c.num_heads));
      if (tensors_.count("norm.weight")) {
        heads.push_back(nonlinear("norm", tokens * c.embed_dim, c.num_heads));
      }
      if (tensors_.count("fc_norm.weight")) {
        heads.push_back(nonlinear("fc_norm", c.embed_dim, c.num_heads));
      }
      add_segment({Segment::Kind::kHead, ""}, std::move(heads));
    }
  }
  site_index_.clear();
  segment_of_site_.assign(sites_.size(), 0);
  for (size_t i = 0; i < sites_.size(); ++i) site_index_[sites_[i].name] = i;
  for (size_t s = 0; s < segments_.size(); ++s) {
    for (size_t k = 0; k < segments_[s].num_sites; ++k) {
      segment_of_site_[segments_[s].first_site + k] = static_cast<int64_t>(s);
    }
  }
}

StatusOr<ViTModel> ViTModel::Load(const std::string& config_path,
                                  const std::string& weights_path) {
  QS_ASSIGN_OR_RETURN(ViTConfig config, LoadViTConfig(config_path));
  QS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(weights_path));
  std::map<std::string, torch::Tensor> tensors;
  if (IsQuantizedWeightsFile(file)) {
    // A qsearch artifact: the quantized weights, dequantized to float.
    auto read = ReadQuantizedWeights(file);
    if (!read.ok()) return read.status().WithContext(weights_path);
    tensors = std::move(*read);
  } else {
    for (const auto& [name, entry] : file.entries()) {
      QS_ASSIGN_OR_RETURN(tensors[name], file.Tensor(name));
    }
  }
  auto model = GuardTorch(weights_path, [&] { return FromTensors(config, std::move(tensors)); });
  if (!model.ok()) return model.status().WithContext(weights_path);
  return model;
}

std::vector<std::string> EdgeSites(const ViTModel& model) {
  std::vector<std::string> out;
  for (int64_t s : {int64_t{0}, model.num_segments() - 1}) {
    for (const Site* site : model.SegmentSites(s)) {
      if (site->kind == SiteKind::kLinear) out.push_back(site->name);
    }
  }
  return out;
}

const Site* ViTModel::FindSite(const std::string& name) const {
  auto it = site_index_.find(name);
  return it == site_index_.end() ? nullptr : &sites_[it->second];
}

std::map<std::string, SiteKind> ViTModel::SiteKinds() const {
  std::map<std::string, SiteKind> kinds;
  for (const auto& s : sites_) kinds[s.name] = s.kind;
  return kinds;
}

StatusOr<ViTModel> ViTModel::WithTensors(
    const std::map<std::string, torch::Tensor>& replacements) const {
  ViTModel out = *this;
  for (const auto& [name, t] : replacements) {
    auto it = out.tensors_.find(name);
    if (it == out.tensors_.end()) return InvalidArgumentError("no tensor '" + name + "'");
    if (!t.defined() || t.sizes() != it->second.sizes() || !t.is_floating_point()) {
      return InvalidArgumentError("replacement for '" + name + "' has another shape or dtype");
    }
    auto f = t.to(it->second.device(), torch::kFloat32);
    if (!torch::isfinite(f).all().item<bool>()) {
      return InvalidArgumentError("replacement for '" + name + "' holds NaN or infinite values");
    }
    it->second = f;
  }
  return out;
}

ViTModel ViTModel::To(const torch::Device& device) const {
  ViTModel out = *this;
  for (auto& [name, t] : out.tensors_) t = t.to(device);
  for (auto& [name, t] : out.derived_) t = t.to(device);
  return out;
}

torch::Tensor SiteHandler::Linear(const Site&, const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& bias) {
  return at::linear(x, weight, bias);
}

torch::Tensor SiteHandler::Matmul(const Site&, const torch::Tensor& lhs,
                                  const torch::Tensor& rhs) {
  return at::matmul(lhs, rhs);
}

torch::Tensor SiteHandler::Softmax(const Site&, const torch::Tensor& x) { return x.softmax(-1); }

torch::Tensor SiteHandler::Gelu(const Site&, const torch::Tensor& x) { return at::gelu(x); }

torch::Tensor SiteHandler::LayerNorm(const Site&, const torch::Tensor& x,
                                     const torch::Tensor& weight, const torch::Tensor& bias,
                                     double eps) {
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

int64_t ViTModel::SegmentOf(const Site& site) const {
  return segment_of_site_.at(site_index_.at(site.name));
}

std::vector<const Site*> ViTModel::SegmentSites(int64_t segment) const {
  std::vector<const Site*> out;
  if (segment < 0 || segment >= num_segments()) return out;
  const Segment& s = segments_[segment];
  for (size_t k = 0; k < s.num_sites; ++k) out.push_back(&sites_[s.first_site + k]);
  return out;
}

torch::Tensor ViTModel::Forward(const torch::Tensor& images, SiteHandler* handler) const {
  auto x = images;
  for (int64_t s = 0; s < num_segments(); ++s) x = ForwardSegment(s, x, handler);
  return x;
}

torch::Tensor ViTModel::ForwardSegment(int64_t segment, const torch::Tensor& input,
                                       SiteHandler* handler) const {
  SiteHandler float_handler;
  SiteHandler& h = handler ? *handler : float_handler;
  const Segment& s = segments_.at(segment);
  if (config_.is_repvgg() && s.kind != Segment::Kind::kHead) return RepVggBlock(s, input, h);
  switch (s.kind) {
    case Segment::Kind::kEmbed:
      return EmbedPatches(input, h);
    case Segment::Kind::kBlock:
      return config_.is_swin() ? SwinBlock(s, input, h) : ViTBlock(s, input, h);
    case Segment::Kind::kMerge:
      return SwinMerge(s, input, h);
    case Segment::Kind::kHead:
      break;
  }
  return Head(s, input, h);
}

torch::Tensor ViTModel::EmbedPatches(const torch::Tensor& images, SiteHandler& h) const {
  const ViTConfig& c = config_;
  const int64_t batch = images.size(0), p = c.patch_size, g = c.grid();
  // The patch embedding as a linear layer over flattened patches, in the conv weight's (C, p, p)
  // order; tokens in row-major patch order.
  auto patches = images.reshape({batch, c.in_chans, g, p, g, p})
                     .permute({0, 2, 4, 1, 3, 5})
                     .reshape({batch, g * g, c.in_chans * p * p});
  auto x = h.Linear(sites_.front(), patches,
                    tensor("patch_embed.proj.weight").reshape({c.embed_dim, -1}),
                    tensor("patch_embed.proj.bias"));
  if (c.is_swin()) {
    x = h.LayerNorm(sites_[1], x, tensor("patch_embed.norm.weight"),
                    tensor("patch_embed.norm.bias"), c.layer_norm_eps);
    return x.reshape({batch, g, g, c.embed_dim});
  }
  // timm's order: class token, distillation token, registers, then the patches.
  std::vector<torch::Tensor> prefix;
  for (const char* name : {"cls_token", "dist_token", "reg_token"}) {
    auto it = tensors_.find(name);
    if (it != tensors_.end()) prefix.push_back(it->second.expand({batch, -1, c.embed_dim}));
  }
  if (c.no_embed_class) {
    x = x + tensor("pos_embed");
    prefix.push_back(x);
    return prefix.size() == 1 ? x : at::cat(prefix, 1);
  }
  if (!prefix.empty()) {
    prefix.push_back(x);
    x = at::cat(prefix, 1);
  }
  return x + tensor("pos_embed");
}

torch::Tensor ViTModel::OptionalTensor(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? torch::Tensor() : it->second;
}

torch::Tensor ViTModel::Attention(const Site* sites, const std::string& b, const torch::Tensor& x,
                                  int64_t heads, const ScoreAdjust& adjust, SiteHandler& h) const {
  const int64_t groups = x.size(0), tokens = x.size(1), dim = x.size(2), hd = dim / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto qkv = h.Linear(sites[0], x, tensor(b + "attn.qkv.weight"),
                      OptionalTensor(b + "attn.qkv.bias"))
                 .reshape({groups, tokens, 3, heads, hd})
                 .permute({2, 0, 3, 1, 4});
  auto q = qkv[0] * scale;
  auto scores = h.Matmul(sites[1], q, qkv[1].transpose(-2, -1));
  if (adjust) scores = adjust(scores);
  auto ctx = h.Matmul(sites[2], h.Softmax(sites[7], scores), qkv[2])
                 .transpose(1, 2)
                 .reshape({groups, tokens, -1});
  return h.Linear(sites[3], ctx, tensor(b + "attn.proj.weight"), tensor(b + "attn.proj.bias"));
}

torch::Tensor ViTModel::Mlp(const Site* sites, const std::string& b, const torch::Tensor& x,
                            SiteHandler& h) const {
  auto y = h.Gelu(sites[5], h.Linear(sites[0], x, tensor(b + "mlp.fc1.weight"),
                                      tensor(b + "mlp.fc1.bias")));
  return h.Linear(sites[1], y, tensor(b + "mlp.fc2.weight"), tensor(b + "mlp.fc2.bias"));
}

torch::Tensor ViTModel::ViTBlock(const Segment& s, const torch::Tensor& input,
                                 SiteHandler& h) const {
  const ViTConfig& c = config_;
  const Site* sites = &sites_[s.first_site];
  const std::string& b = s.prefix;
  const double eps = c.layer_norm_eps;
  auto x = input;
  auto y = h.LayerNorm(sites[6], x, tensor(b + "norm1.weight"), tensor(b + "norm1.bias"), eps);
  auto out = Attention(sites, b, y, c.num_heads, nullptr, h);
  x = x + (c.init_values ? out * tensor(b + "ls1.gamma") : out);
  y = h.LayerNorm(sites[8], x, tensor(b + "norm2.weight"), tensor(b + "norm2.bias"), eps);
  out = Mlp(sites + 4, b, y, h);
  return x + (c.init_values ? out * tensor(b + "ls2.gamma") : out);
}

torch::Tensor ViTModel::SwinBlock(const Segment& s, const torch::Tensor& input,
                                  SiteHandler& h) const {
  const ViTConfig& c = config_;
  const Site* sites = &sites_[s.first_site];
  const std::string& b = s.prefix;
  const std::string stage = "layers." + std::to_string(s.stage) + ".";
  const int64_t batch = input.size(0), r = input.size(1), dim = input.size(3);
  const int64_t w = c.stage_window(s.stage), n = w * w, heads = c.stage_heads[s.stage];
  const double eps = c.layer_norm_eps;
  auto y = h.LayerNorm(sites[6], input, tensor(b + "norm1.weight"), tensor(b + "norm1.bias"), eps);
  if (s.shift > 0) y = at::roll(y, {-s.shift, -s.shift}, {1, 2});
  // Windows [B·nW, N, C] attend within themselves, with the relative position bias and, in
  // shifted blocks, the mask that keeps regions the roll brought together apart.
  auto adjust = [&](const torch::Tensor& scores) {
    auto bias = tensor(b + "attn.relative_position_bias_table")
                    .index_select(0, derived_.at(stage + "relative_position_index"))
                    .reshape({n, n, heads})
                    .permute({2, 0, 1});
    auto out = scores + bias.unsqueeze(0);
    if (s.shift == 0) return out;
    const auto& mask = derived_.at(stage + "attn_mask");  // [nW, N, N]
    return (out.reshape({batch, mask.size(0), heads, n, n}) + mask.unsqueeze(1).unsqueeze(0))
        .reshape({-1, heads, n, n});
  };
  auto out = WindowReverse(Attention(sites, b, WindowPartition(y, w), heads, adjust, h), w, r);
  if (s.shift > 0) out = at::roll(out, {s.shift, s.shift}, {1, 2});
  auto x = input + out;
  y = h.LayerNorm(sites[8], x, tensor(b + "norm2.weight"), tensor(b + "norm2.bias"), eps);
  return x + Mlp(sites + 4, b, y, h);
}

torch::Tensor ViTModel::SwinMerge(const Segment& s, const torch::Tensor& input,
                                  SiteHandler& h) const {
  const int64_t batch = input.size(0), r = input.size(1), dim = input.size(3);
  // timm's order of the 2×2 neighbours: (0,0), (1,0), (0,1), (1,1) as (row, column).
  auto x = input.reshape({batch, r / 2, 2, r / 2, 2, dim})
               .permute({0, 1, 3, 4, 2, 5})
               .reshape({batch, r / 2, r / 2, 4 * dim});
  x = h.LayerNorm(sites_[s.first_site + 1], x, tensor(s.prefix + "norm.weight"),
                  tensor(s.prefix + "norm.bias"), config_.layer_norm_eps);
  return h.Linear(sites_[s.first_site], x, tensor(s.prefix + "reduction.weight"), torch::Tensor());
}

torch::Tensor ViTModel::Head(const Segment& s, const torch::Tensor& input, SiteHandler& h) const {
  const ViTConfig& c = config_;
  const double eps = c.layer_norm_eps;
  const Site& head = sites_[s.first_site];
  if (c.is_repvgg()) {
    return h.Linear(head, input.mean({2, 3}), tensor("head.fc.weight"), tensor("head.fc.bias"));
  }
  if (c.is_swin()) {
    auto x = h.LayerNorm(sites_[s.first_site + 1], input, tensor("norm.weight"),
                         tensor("norm.bias"), eps);
    return h.Linear(head, x.mean({1, 2}), tensor("head.fc.weight"), tensor("head.fc.bias"));
  }
  auto x = input;
  const int64_t tokens = x.size(1), prefix = c.num_prefix_tokens(tensors_.count("cls_token") > 0);
  const Site* norm_site = &sites_[s.first_site + (c.distilled ? 2 : 1)];
  if (tensors_.count("norm.weight")) {
    x = h.LayerNorm(*norm_site++, x, tensor("norm.weight"), tensor("norm.bias"), eps);
  }
  torch::Tensor pooled;
  if (c.global_pool == "token") {
    pooled = x.select(1, 0);
  } else {
    pooled = x.narrow(1, prefix, tokens - prefix).mean(1);
  }
  if (tensors_.count("fc_norm.weight")) {
    pooled = h.LayerNorm(*norm_site, pooled, tensor("fc_norm.weight"), tensor("fc_norm.bias"),
                         eps);
  }
  auto logits = h.Linear(head, pooled, tensor("head.weight"), tensor("head.bias"));
  if (!c.distilled) return logits;
  // timm's distilled models average the class and distillation heads at inference.
  auto dist = h.Linear(sites_[s.first_site + 1], x.select(1, 1), tensor("head_dist.weight"),
                       tensor("head_dist.bias"));
  return (logits + dist) / 2;
}

torch::Tensor ViTModel::RepVggBlock(const Segment& s, const torch::Tensor& input,
                                    SiteHandler& h) const {
  const Site& conv = sites_[s.first_site];
  return at::relu(ConvAsLinear(conv, input, tensor(conv.weight),
                               tensor(s.prefix + "reparam_conv.bias"), s.stride, h));
}

StatusOr<torch::Tensor> ViTModel::Logits(const torch::Tensor& images, SiteHandler* handler,
                                         int64_t batch_size) const {
  const ViTConfig& c = config_;
  if (images.dim() != 4 || images.size(1) != c.in_chans || images.size(2) != c.img_size ||
      images.size(3) != c.img_size) {
    return InvalidArgumentError("images have shape " + ShapeString(images.sizes().vec()) +
                                "; the model expects [N, " + std::to_string(c.in_chans) + ", " +
                                std::to_string(c.img_size) + ", " + std::to_string(c.img_size) +
                                "]");
  }
  if (batch_size < 1) return InvalidArgumentError("batch size must be >= 1");
  return GuardTorch("forward", [&]() -> StatusOr<torch::Tensor> {
    c10::InferenceMode guard;
    const auto device = this->device();
    std::vector<torch::Tensor> out;
    for (int64_t start = 0; start < images.size(0); start += batch_size) {
      auto batch = images.narrow(0, start, std::min(batch_size, images.size(0) - start));
      out.push_back(Forward(batch.to(device, torch::kFloat32), handler).to(torch::kCPU));
    }
    if (out.empty()) return torch::empty({0, c.num_classes});
    return at::cat(out, 0);
  });
}

std::string ViTModel::Digest() const {
  Sha256 hash;
  hash.Update(ToJson(config_).dump());
  for (const auto& [name, t] : tensors_) {
    auto c = t.to(torch::kCPU).contiguous();
    hash.Update(name);
    for (auto s : c.sizes()) hash.Update(std::to_string(s) + ",");
    hash.Update(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  return hash.HexDigest();
}

std::map<std::string, torch::Tensor> InitViTTensors(const ViTConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, shape] : ExpectedTensorShapes(config, true, "norm")) {
    torch::Tensor t;
    if (EndsWith(name, "norm1.weight") || EndsWith(name, "norm2.weight") ||
        EndsWith(name, "norm.weight")) {
      t = torch::ones(shape);
    } else if (EndsWith(name, ".gamma")) {
      t = torch::full(shape, config.init_values.value_or(1.0));
    } else if (EndsWith(name, ".bias")) {
      t = torch::zeros(shape);
    } else {
      t = at::clamp(torch::randn(shape) * 0.02, -0.04, 0.04);
    }
    out[name] = t;
  }
  return out;
}

}  // namespace qs::core
