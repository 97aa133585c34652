#include "core/vit.h"

#include <cmath>
#include <set>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "common/json_fields.h"
#include "common/sha256.h"
#include "core/quantized_format.h"
#include "core/safetensors.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

using nlohmann::json;

const std::set<std::string> kConfigKeys = {
    "architecture", "img_size",    "patch_size",  "in_chans",  "embed_dim",
    "depth",        "num_heads",   "mlp_ratio",   "num_classes", "global_pool",
    "qkv_bias",     "layer_norm_eps", "mean",     "std"};

template <typename T>
Status Read(const json& j, const char* key, T* out) {
  if (!j.contains(key)) return InvalidArgumentError(std::string("config: missing key '") + key + "'");
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
  *out = v.get<T>();
  return OkStatus();
}

// Sites per transformer block, in forward order: qkv, q·kᵀ, softmax·v, proj, fc1, fc2.
constexpr int64_t kSitesPerBlock = 6;

// Linear weights and their sites, in forward order.
std::vector<Site> BuildSites(int64_t depth) {
  std::vector<Site> sites;
  sites.push_back({"patch_embed.proj", SiteKind::kLinear, "patch_embed.proj.weight"});
  for (int64_t i = 0; i < depth; ++i) {
    std::string b = "blocks." + std::to_string(i);
    sites.push_back({b + ".attn.qkv", SiteKind::kLinear, b + ".attn.qkv.weight"});
    sites.push_back({b + ".attn.qk_matmul", SiteKind::kMatmul, ""});
    sites.push_back({b + ".attn.av_matmul", SiteKind::kMatmul, ""});
    sites.push_back({b + ".attn.proj", SiteKind::kLinear, b + ".attn.proj.weight"});
    sites.push_back({b + ".mlp.fc1", SiteKind::kLinear, b + ".mlp.fc1.weight"});
    sites.push_back({b + ".mlp.fc2", SiteKind::kLinear, b + ".mlp.fc2.weight"});
  }
  sites.push_back({"head", SiteKind::kLinear, "head.weight"});
  return sites;
}

std::string ShapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

StatusOr<ViTConfig> ParseViTConfig(const json& j) {
  if (!j.is_object()) return InvalidArgumentError("config: expected a JSON object");
  for (const auto& item : j.items()) {
    if (!kConfigKeys.count(item.key())) {
      return InvalidArgumentError("config: unknown key '" + item.key() + "'");
    }
  }
  ViTConfig c;
  QS_RETURN_IF_ERROR(Read(j, "architecture", &c.architecture));
  QS_RETURN_IF_ERROR(Read(j, "img_size", &c.img_size));
  QS_RETURN_IF_ERROR(Read(j, "patch_size", &c.patch_size));
  QS_RETURN_IF_ERROR(Read(j, "in_chans", &c.in_chans));
  QS_RETURN_IF_ERROR(Read(j, "embed_dim", &c.embed_dim));
  QS_RETURN_IF_ERROR(Read(j, "depth", &c.depth));
  QS_RETURN_IF_ERROR(Read(j, "num_heads", &c.num_heads));
  QS_RETURN_IF_ERROR(Read(j, "mlp_ratio", &c.mlp_ratio));
  QS_RETURN_IF_ERROR(Read(j, "num_classes", &c.num_classes));
  QS_RETURN_IF_ERROR(Read(j, "global_pool", &c.global_pool));
  QS_RETURN_IF_ERROR(Read(j, "qkv_bias", &c.qkv_bias));
  QS_RETURN_IF_ERROR(Read(j, "layer_norm_eps", &c.layer_norm_eps));
  QS_RETURN_IF_ERROR(Read(j, "mean", &c.mean));
  QS_RETURN_IF_ERROR(Read(j, "std", &c.std));

  auto bad = [](const std::string& why) { return InvalidArgumentError("config: " + why); };
  if (c.architecture != "vit") {
    return bad("architecture must be \"vit\", got \"" + c.architecture + "\"");
  }
  const std::pair<const char*, int64_t> positives[] = {
      {"img_size", c.img_size},   {"patch_size", c.patch_size}, {"in_chans", c.in_chans},
      {"embed_dim", c.embed_dim}, {"depth", c.depth},           {"num_heads", c.num_heads},
      {"num_classes", c.num_classes}};
  for (const auto& [key, value] : positives) {
    if (value <= 0) return bad(std::string(key) + " must be positive, got " + std::to_string(value));
  }
  if (c.img_size % c.patch_size != 0) {
    return bad("img_size " + std::to_string(c.img_size) + " is not a multiple of patch_size " +
               std::to_string(c.patch_size));
  }
  if (c.embed_dim % c.num_heads != 0) {
    return bad("embed_dim " + std::to_string(c.embed_dim) + " is not a multiple of num_heads " +
               std::to_string(c.num_heads));
  }
  const std::pair<const char*, std::pair<int64_t, int64_t>> limits[] = {
      {"img_size", {c.img_size, 8192}},    {"patch_size", {c.patch_size, c.img_size}},
      {"in_chans", {c.in_chans, 64}},      {"embed_dim", {c.embed_dim, 16384}},
      {"depth", {c.depth, 512}},           {"num_heads", {c.num_heads, c.embed_dim}},
      {"num_classes", {c.num_classes, 1000000}}};
  for (const auto& [key, v] : limits) {
    if (v.first > v.second) {
      return bad(std::string(key) + " " + std::to_string(v.first) + " exceeds the limit " +
                 std::to_string(v.second));
    }
  }
  if (!(c.mlp_ratio > 0) || !(c.mlp_ratio <= 64) || c.embed_dim * c.mlp_ratio < 1) {
    return bad("mlp_ratio must be in (0, 64] with embed_dim · mlp_ratio >= 1");
  }
  if (c.global_pool != "token" && c.global_pool != "avg") {
    return bad("global_pool must be \"token\" or \"avg\", got \"" + c.global_pool + "\"");
  }
  if (!(c.layer_norm_eps > 0)) return bad("layer_norm_eps must be positive");
  if (static_cast<int64_t>(c.mean.size()) != c.in_chans ||
      static_cast<int64_t>(c.std.size()) != c.in_chans) {
    return bad("mean and std need one value per input channel (" + std::to_string(c.in_chans) +
               ")");
  }
  for (double s : c.std) {
    if (!(s > 0)) return bad("std values must be positive");
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
  return json{{"architecture", c.architecture}, {"img_size", c.img_size},
              {"patch_size", c.patch_size},     {"in_chans", c.in_chans},
              {"embed_dim", c.embed_dim},       {"depth", c.depth},
              {"num_heads", c.num_heads},       {"mlp_ratio", c.mlp_ratio},
              {"num_classes", c.num_classes},   {"global_pool", c.global_pool},
              {"qkv_bias", c.qkv_bias},         {"layer_norm_eps", c.layer_norm_eps},
              {"mean", c.mean},                 {"std", c.std}};
}

std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(const ViTConfig& c,
                                                                 bool has_cls_token,
                                                                 const std::string& final_norm) {
  const int64_t d = c.embed_dim, h = c.mlp_hidden();
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"patch_embed.proj.weight", {d, c.in_chans, c.patch_size, c.patch_size}},
      {"patch_embed.proj.bias", {d}},
      {"pos_embed", {1, c.num_patches() + (has_cls_token ? 1 : 0), d}},
      {final_norm + ".weight", {d}},
      {final_norm + ".bias", {d}},
      {"head.weight", {c.num_classes, d}},
      {"head.bias", {c.num_classes}},
  };
  if (has_cls_token) shapes["cls_token"] = {1, 1, d};
  for (int64_t i = 0; i < c.depth; ++i) {
    std::string b = "blocks." + std::to_string(i) + ".";
    shapes[b + "norm1.weight"] = {d};
    shapes[b + "norm1.bias"] = {d};
    shapes[b + "attn.qkv.weight"] = {3 * d, d};
    if (c.qkv_bias) shapes[b + "attn.qkv.bias"] = {3 * d};
    shapes[b + "attn.proj.weight"] = {d, d};
    shapes[b + "attn.proj.bias"] = {d};
    shapes[b + "norm2.weight"] = {d};
    shapes[b + "norm2.bias"] = {d};
    shapes[b + "mlp.fc1.weight"] = {h, d};
    shapes[b + "mlp.fc1.bias"] = {h};
    shapes[b + "mlp.fc2.weight"] = {d, h};
    shapes[b + "mlp.fc2.bias"] = {d};
  }
  return shapes;
}

StatusOr<ViTModel> ViTModel::FromTensors(const ViTConfig& config,
                                         std::map<std::string, torch::Tensor> tensors) {
  // The class token is optional only with average pooling (timm's class_token=False); the final
  // norm is "fc_norm" when timm applies it after average pooling, else "norm".
  const bool has_cls = tensors.count("cls_token") > 0;
  if (!has_cls && config.global_pool == "token") {
    return NotFoundError("missing tensor 'cls_token' (required with global_pool \"token\")");
  }
  const std::string final_norm =
      tensors.count("fc_norm.weight") && !tensors.count("norm.weight") ? "fc_norm" : "norm";
  auto expected = ExpectedTensorShapes(config, has_cls, final_norm);
  for (const auto& [name, shape] : expected) {
    auto it = tensors.find(name);
    if (it == tensors.end()) return NotFoundError("missing tensor '" + name + "'");
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
      return InvalidArgumentError("unexpected tensor '" + name + "' for this config");
    }
  }
  ViTModel model;
  model.config_ = config;
  for (auto& [name, t] : tensors) {
    auto f = t.to(torch::kFloat32).contiguous();
    if (!torch::isfinite(f).all().item<bool>()) {
      return InvalidArgumentError("tensor '" + name + "' holds NaN or infinite values");
    }
    model.tensors_[name] = f;
  }
  model.sites_ = BuildSites(config.depth);
  for (size_t i = 0; i < model.sites_.size(); ++i) model.site_index_[model.sites_[i].name] = i;
  return model;
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

int64_t ViTModel::SegmentOf(const Site& site) const {
  const int64_t index = static_cast<int64_t>(site_index_.at(site.name));
  if (index == 0) return 0;
  if (index == static_cast<int64_t>(sites_.size()) - 1) return config_.depth + 1;
  return 1 + (index - 1) / kSitesPerBlock;
}

std::vector<const Site*> ViTModel::SegmentSites(int64_t segment) const {
  std::vector<const Site*> out;
  if (segment == 0) {
    out.push_back(&sites_.front());
  } else if (segment == config_.depth + 1) {
    out.push_back(&sites_.back());
  } else if (segment > 0 && segment <= config_.depth) {
    for (int64_t k = 0; k < kSitesPerBlock; ++k) {
      out.push_back(&sites_[1 + (segment - 1) * kSitesPerBlock + k]);
    }
  }
  return out;
}

torch::Tensor ViTModel::Forward(const torch::Tensor& images, SiteHandler* handler) const {
  auto x = ForwardSegment(0, images, handler);
  for (int64_t i = 0; i < config_.depth; ++i) x = ForwardSegment(1 + i, x, handler);
  return ForwardSegment(config_.depth + 1, x, handler);
}

torch::Tensor ViTModel::ForwardSegment(int64_t segment, const torch::Tensor& input,
                                       SiteHandler* handler) const {
  SiteHandler float_handler;
  SiteHandler& h = handler ? *handler : float_handler;
  const ViTConfig& c = config_;
  const int64_t batch = input.size(0);
  const double eps = c.layer_norm_eps;
  auto t = [this](const std::string& name) -> const torch::Tensor& { return tensors_.at(name); };
  auto opt = [this](const std::string& name) {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? torch::Tensor() : it->second;
  };

  if (segment == 0) {
    // Patch embedding as a linear layer over flattened patches, in the conv weight's (C, p, p)
    // order.
    const int64_t p = c.patch_size, g = c.img_size / p;
    auto patches = input.reshape({batch, c.in_chans, g, p, g, p})
                       .permute({0, 2, 4, 1, 3, 5})
                       .reshape({batch, g * g, c.in_chans * p * p});
    auto x = h.Linear(sites_.front(), patches,
                      t("patch_embed.proj.weight").reshape({c.embed_dim, -1}),
                      t("patch_embed.proj.bias"));
    if (tensors_.count("cls_token")) {
      x = at::cat({t("cls_token").expand({batch, 1, c.embed_dim}), x}, 1);
    }
    return x + t("pos_embed");
  }

  if (segment <= c.depth) {
    const int64_t i = segment - 1;
    const Site* site = &sites_[1 + i * kSitesPerBlock];
    const int64_t tokens = input.size(1), heads = c.num_heads, hd = c.head_dim();
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    const std::string b = "blocks." + std::to_string(i) + ".";
    auto x = input;
    auto y = at::layer_norm(x, {c.embed_dim}, t(b + "norm1.weight"), t(b + "norm1.bias"), eps);
    auto qkv = h.Linear(*site++, y, t(b + "attn.qkv.weight"), opt(b + "attn.qkv.bias"))
                   .reshape({batch, tokens, 3, heads, hd})
                   .permute({2, 0, 3, 1, 4});
    auto q = qkv[0] * scale;
    auto attn = h.Matmul(*site++, q, qkv[1].transpose(-2, -1)).softmax(-1);
    auto ctx = h.Matmul(*site++, attn, qkv[2]).transpose(1, 2).reshape({batch, tokens, -1});
    x = x + h.Linear(*site++, ctx, t(b + "attn.proj.weight"), t(b + "attn.proj.bias"));
    y = at::layer_norm(x, {c.embed_dim}, t(b + "norm2.weight"), t(b + "norm2.bias"), eps);
    y = at::gelu(h.Linear(*site++, y, t(b + "mlp.fc1.weight"), t(b + "mlp.fc1.bias")));
    return x + h.Linear(*site++, y, t(b + "mlp.fc2.weight"), t(b + "mlp.fc2.bias"));
  }

  auto x = input;
  const int64_t tokens = x.size(1), prefix = tensors_.count("cls_token") ? 1 : 0;
  torch::Tensor pooled;
  if (tensors_.count("norm.weight")) {
    x = at::layer_norm(x, {c.embed_dim}, t("norm.weight"), t("norm.bias"), eps);
  }
  if (c.global_pool == "token") {
    pooled = x.select(1, 0);
  } else {
    pooled = x.narrow(1, prefix, tokens - prefix).mean(1);
  }
  if (tensors_.count("fc_norm.weight")) {
    pooled = at::layer_norm(pooled, {c.embed_dim}, t("fc_norm.weight"), t("fc_norm.bias"), eps);
  }
  return h.Linear(sites_.back(), pooled, t("head.weight"), t("head.bias"));
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
    const auto device = tensors_.at("head.weight").device();
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
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    torch::Tensor t;
    if (ends_with("norm1.weight") || ends_with("norm2.weight") || name == "norm.weight") {
      t = torch::ones(shape);
    } else if (ends_with(".bias")) {
      t = torch::zeros(shape);
    } else {
      t = at::clamp(torch::randn(shape) * 0.02, -0.04, 0.04);
    }
    out[name] = t;
  }
  return out;
}

}  // namespace qs::core
