#include "core/repvgg.h"

#include <ATen/ATen.h>

#include <cmath>

#include "common/strings.h"

namespace qs::core {
namespace {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

constexpr int64_t kNoPadding = 0;
constexpr const char* kBatchNormFields[] = {"weight", "bias", "running_mean", "running_var"};

void AddBatchNorm(const std::string& p, int64_t c, ShapeMap* shapes) {
  for (const char* f : kBatchNormFields) (*shapes)[p + f] = {c};
}

// A branch's conv weight scaled by its BatchNorm, and the BatchNorm's shift:
// (W·γ/σ, β − μ·γ/σ).
std::pair<torch::Tensor, torch::Tensor> FoldBatchNorm(const torch::Tensor& weight,
                                                      const std::map<std::string, torch::Tensor>& t,
                                                      const std::string& bn, double eps) {
  auto get = [&](const char* f) { return t.at(bn + f).to(torch::kFloat64); };
  auto scale = get("weight") / (get("running_var") + eps).sqrt();
  return {weight * scale.reshape({-1, 1, 1, 1}), get("bias") - get("running_mean") * scale};
}

torch::Tensor BatchNorm(const std::map<std::string, torch::Tensor>& t, const std::string& bn,
                        const torch::Tensor& x, bool training, double eps) {
  return at::batch_norm(x, t.at(bn + "weight"), t.at(bn + "bias"), t.at(bn + "running_mean"),
                        t.at(bn + "running_var"), training, /*momentum=*/0.1, eps,
                        /*cudnn_enabled=*/true);
}

}  // namespace

std::vector<RepVggBlockSpec> RepVggBlocks(const ViTConfig& c) {
  std::vector<RepVggBlockSpec> out;
  int64_t side = c.img_size;
  auto add = [&](const std::string& prefix, int64_t in, int64_t o, int64_t stride) {
    const int64_t next = RepVggOutSide(side, stride);
    out.push_back({prefix, in, o, stride, in == o && stride == 1, side, next});
    side = next;
  };
  add("stem.", c.in_chans, c.stem_chs, 2);
  int64_t in = c.stem_chs;
  for (size_t s = 0; s < c.depths.size(); ++s) {
    for (int64_t b = 0; b < c.depths[s]; ++b) {
      add("stages." + std::to_string(s) + "." + std::to_string(b) + ".", in, c.widths[s],
          b == 0 ? 2 : 1);
      in = c.widths[s];
    }
  }
  return out;
}

ShapeMap RepVggTrainShapes(const ViTConfig& c) {
  ShapeMap shapes;
  for (const auto& b : RepVggBlocks(c)) {
    shapes[b.prefix + "conv_kxk.conv.weight"] = {b.out_chs, b.in_chs, 3, 3};
    AddBatchNorm(b.prefix + "conv_kxk.bn.", b.out_chs, &shapes);
    shapes[b.prefix + "conv_1x1.conv.weight"] = {b.out_chs, b.in_chs, 1, 1};
    AddBatchNorm(b.prefix + "conv_1x1.bn.", b.out_chs, &shapes);
    if (b.identity) AddBatchNorm(b.prefix + "identity.", b.out_chs, &shapes);
  }
  shapes["head.fc.weight"] = {c.num_classes, c.num_features()};
  shapes["head.fc.bias"] = {c.num_classes};
  return shapes;
}

ShapeMap RepVggDeployShapes(const ViTConfig& c) {
  ShapeMap shapes;
  for (const auto& b : RepVggBlocks(c)) {
    shapes[b.prefix + "reparam_conv.weight"] = {b.out_chs, b.in_chs, 3, 3};
    shapes[b.prefix + "reparam_conv.bias"] = {b.out_chs};
  }
  shapes["head.fc.weight"] = {c.num_classes, c.num_features()};
  shapes["head.fc.bias"] = {c.num_classes};
  return shapes;
}

bool IsRepVggTrainForm(const std::map<std::string, torch::Tensor>& tensors) {
  for (const auto& [name, t] : tensors) {
    if (name.find(".conv_kxk.") != std::string::npos) return true;
  }
  return false;
}

std::map<std::string, torch::Tensor> FuseRepVggBranches(
    const ViTConfig& c, const std::map<std::string, torch::Tensor>& t) {
  std::map<std::string, torch::Tensor> out;
  const double eps = c.bn_eps;
  for (const auto& b : RepVggBlocks(c)) {
    auto [w, bias] = FoldBatchNorm(t.at(b.prefix + "conv_kxk.conv.weight").to(torch::kFloat64), t,
                                   b.prefix + "conv_kxk.bn.", eps);
    // The 1×1 kernel sits at the centre of the 3×3 one (padding 1 against
    // padding 0).
    auto one = at::constant_pad_nd(t.at(b.prefix + "conv_1x1.conv.weight").to(torch::kFloat64),
                                   {1, 1, 1, 1});
    auto [w1, b1] = FoldBatchNorm(one, t, b.prefix + "conv_1x1.bn.", eps);
    w = w + w1;
    bias = bias + b1;
    if (b.identity) {
      auto id = torch::zeros({b.out_chs, b.in_chs, 3, 3}, torch::kFloat64);
      id.select(3, 1).select(2, 1).copy_(torch::eye(b.out_chs, torch::kFloat64));
      auto [wi, bi] = FoldBatchNorm(id, t, b.prefix + "identity.", eps);
      w = w + wi;
      bias = bias + bi;
    }
    out[b.prefix + "reparam_conv.weight"] = w.to(torch::kFloat32).contiguous();
    out[b.prefix + "reparam_conv.bias"] = bias.to(torch::kFloat32).contiguous();
  }
  out["head.fc.weight"] = t.at("head.fc.weight");
  out["head.fc.bias"] = t.at("head.fc.bias");
  return out;
}

torch::Tensor RepVggTrainForward(const ViTConfig& c, const std::map<std::string, torch::Tensor>& t,
                                 const torch::Tensor& images, bool training) {
  auto x = images;
  for (const auto& b : RepVggBlocks(c)) {
    const std::string& p = b.prefix;
    auto y =
        BatchNorm(t, p + "conv_kxk.bn.",
                  at::conv2d(x, t.at(p + "conv_kxk.conv.weight"), torch::Tensor(), b.stride, 1),
                  training, c.bn_eps);
    y = y + BatchNorm(t, p + "conv_1x1.bn.",
                      at::conv2d(x, t.at(p + "conv_1x1.conv.weight"), torch::Tensor(),
                                 at::IntArrayRef(b.stride), at::IntArrayRef(kNoPadding)),
                      training, c.bn_eps);
    if (b.identity) y = y + BatchNorm(t, p + "identity.", x, training, c.bn_eps);
    x = at::relu(y);
  }
  return at::linear(x.mean({2, 3}), t.at("head.fc.weight"), t.at("head.fc.bias"));
}

std::map<std::string, torch::Tensor> InitRepVggTensors(const ViTConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, shape] : RepVggTrainShapes(c)) {
    torch::Tensor t;
    if (EndsWith(name, "conv.weight")) {
      const int64_t fan_in = shape[1] * shape[2] * shape[3];
      t = torch::randn(shape) * std::sqrt(2.0 / fan_in);
    } else if (EndsWith(name, "running_var") ||
               (EndsWith(name, "weight") && name != "head.fc.weight")) {
      t = torch::ones(shape);  // BatchNorm γ and running variance
    } else if (name == "head.fc.weight") {
      t = torch::randn(shape) * 0.01;
    } else {
      t = torch::zeros(shape);  // β, running mean, the head's bias
    }
    out[name] = t;
  }
  return out;
}

torch::Tensor ConvAsLinear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                           const torch::Tensor& bias, int64_t stride, SiteHandler& handler) {
  const int64_t batch = x.size(0), k = weight.size(2), pad = k / 2;
  const int64_t oh = (x.size(2) + 2 * pad - k) / stride + 1;
  const int64_t ow = (x.size(3) + 2 * pad - k) / stride + 1;
  auto patches = at::im2col(x, {k, k}, {1, 1}, {pad, pad}, {stride, stride})
                     .transpose(1, 2)
                     .contiguous();  // [B, H'·W', C·k·k]
  auto y = handler.Linear(site, patches, weight.reshape({weight.size(0), -1}), bias);
  return y.transpose(1, 2).reshape({batch, weight.size(0), oh, ow});
}

}  // namespace qs::core
