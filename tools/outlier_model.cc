// Writes a copy of a ViT whose post-LayerNorm activations carry outlier channels, as real
// ImageNet ViTs' do, computing the same float function: the LayerNorms before every attn.qkv and
// mlp.fc1 get a few channels' gain and bias multiplied by --factor, and the next layer's input
// columns divided by it (core/test_models.h: WithLayerNormOutliers). Per-tensor activation
// quantization collapses on it; RepQ-ViT reparameterization should not (docs/results.md).
//
//   build/tools/qs_outlier_model --config tests/data/fixture/config.json \
//       --weights tests/data/fixture/model.safetensors --out out/outlier \
//       [--channels 4] [--factor 40]
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "common/file_util.h"
#include "core/safetensors.h"
#include "core/test_models.h"
#include "core/vit.h"

int main(int argc, char** argv) {
  std::string config, weights, out;
  int64_t channels = 4;
  double factor = 40;
  CLI::App app("qs_outlier_model: a ViT with post-LayerNorm outlier channels, same float function");
  app.add_option("--config", config, "model config JSON")->required();
  app.add_option("--weights", weights, "model safetensors")->required();
  app.add_option("--out", out, "output directory (config.json, model.safetensors)")->required();
  app.add_option("--channels", channels, "outlier channels per LayerNorm")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--factor", factor, "how much larger they are")
      ->check(CLI::Range(1.0, 1e6))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const qs::Status& s) {
    std::fprintf(stderr, "qs_outlier_model: %s\n", s.ToString().c_str());
    return 1;
  };
  auto model = qs::core::ViTModel::Load(config, weights);
  if (!model.ok()) return fail(model.status());
  auto changed =
      model->WithTensors(qs::core::testing::WithLayerNormOutliers(*model, channels, factor));
  if (!changed.ok()) return fail(changed.status());
  if (auto s = qs::MakeDirectories(out); !s.ok()) return fail(s);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [name, t] : changed->tensors()) tensors[name] = t.contiguous();
  auto s = qs::core::WriteSafetensors(
      out + "/model.safetensors", tensors,
      {{"format", "pt"},
       {"outliers", std::to_string(channels) + " channels x " + std::to_string(factor)}});
  if (s.ok()) {
    s = qs::WriteFileAtomically(out + "/config.json",
                                qs::core::ToJson(changed->config()).dump(2) + "\n");
  }
  if (!s.ok()) return fail(s);
  std::printf("wrote %s: %lld outlier channels x %g after every qkv and fc1 LayerNorm\n",
              out.c_str(), static_cast<long long>(channels), factor);
  return 0;
}
