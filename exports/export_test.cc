#include "exports/export.h"

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "common/file_util.h"
#include "core/quantized_format.h"
#include "core/safetensors.h"
#include "core/test_models.h"
#include "exports/onnx_qdq.h"

namespace qs::exports {
namespace {

using core::QuantizedModel;
using core::ViTModel;
using core::testing::TinyConfig;
using core::testing::TinyTensors;

QuantizedModel Quantized(const core::ViTConfig& config, const Recipe& recipe) {
  auto model = ViTModel::FromTensors(config, TinyTensors(config, 5));
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  torch::manual_seed(6);
  auto calib = torch::randn({24, config.in_chans, config.img_size, config.img_size});
  auto q = core::QuantizeModel(*model, recipe, calib);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  return std::move(*q);
}

Recipe Shorthand(const std::string& s) {
  auto r = ParseUniformRecipe(s, /*quantize_edges=*/true);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return *r;
}

std::map<std::string, int> OpCounts(const onnx::ModelProto& m) {
  std::map<std::string, int> n;
  for (const auto& node : m.graph().node()) ++n[node.op_type()];
  return n;
}

std::string Meta(const onnx::ModelProto& m, const std::string& key) {
  for (const auto& p : m.metadata_props()) {
    if (p.key() == key) return p.value();
  }
  return "";
}

TEST(OnnxQdqTest, UniformRecipesPassTheCheckerWithAPairAtEveryQuantizedTensor) {
  const auto config = TinyConfig();
  // 2 blocks × (4 linear + 2 matmul) sites plus patch embedding and head.
  const int linear = 2 * 4 + 2, matmul = 2 * 2;
  for (const char* shorthand : {"w8a8", "w4a8", "w4a4"}) {
    SCOPED_TRACE(shorthand);
    const QuantizedModel q = Quantized(config, Shorthand(shorthand));
    OnnxExportSummary summary;
    auto m = BuildQdqModel(q, &summary);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_TRUE(CheckOnnxModel(*m).ok()) << CheckOnnxModel(*m).ToString();
    EXPECT_EQ(summary.weight_qdq, linear);
    EXPECT_EQ(summary.activation_qdq, linear + 2 * matmul);
    const auto ops = OpCounts(*m);
    EXPECT_EQ(ops.at("QuantizeLinear"), linear + linear + 2 * matmul);
    EXPECT_EQ(ops.at("DequantizeLinear"), ops.at("QuantizeLinear"));
    // A 4-bit activation grid is clipped before its QuantizeLinear; an 8-bit one needs none.
    EXPECT_EQ(ops.count("Clip") ? ops.at("Clip") : 0,
              std::string(shorthand) == "w4a4" ? linear + 2 * matmul : 0);
    EXPECT_TRUE(summary.float_nonlinear_sites.empty());
    EXPECT_EQ(Meta(*m, "qsearch.format"), "qsearch.onnx-qdq.v1");
    EXPECT_EQ(Meta(*m, "qsearch.model_digest"), q.float_model().Digest());
  }
}

TEST(OnnxQdqTest, WeightPairsUseTheGridsTypeAxisAndZeroPoint) {
  const QuantizedModel q = Quantized(TinyConfig(), Shorthand("w4a8"));
  auto m = BuildQdqModel(q);
  ASSERT_TRUE(m.ok());
  std::map<std::string, const onnx::TensorProto*> init;
  for (const auto& t : m->graph().initializer()) init[t.name()] = &t;
  const auto& fc1 = *q.sites().at("blocks.0.mlp.fc1").weight;
  bool found = false;
  for (const auto& node : m->graph().node()) {
    if (node.op_type() != "QuantizeLinear" || node.input(0) != "blocks.0.mlp.fc1/weight_t") {
      continue;
    }
    found = true;
    ASSERT_EQ(node.attribute_size(), 1);
    EXPECT_EQ(node.attribute(0).name(), "axis");
    EXPECT_EQ(node.attribute(0).i(), -1);  // output channels: the last axis of Wᵀ
    const auto& scale = *init.at(node.input(1));
    const auto& zero = *init.at(node.input(2));
    EXPECT_EQ(scale.dims(0), fc1.codes.size(0));
    EXPECT_EQ(zero.data_type(), onnx::TensorProto::INT8);  // symmetric weights
    float first;
    std::memcpy(&first, scale.raw_data().data(), sizeof(float));
    EXPECT_EQ(first, fc1.grid.scale.reshape({-1})[0].item<float>());
  }
  EXPECT_TRUE(found);
}

TEST(OnnxQdqTest, MixedRecipeKeepsWhatHasNoOperatorInFloatAndSaysSo) {
  const auto config = TinyConfig();
  Recipe r = Shorthand("w4a8");
  QuantConfig grouped = r.linear_default;
  grouped.weight.granularity = Granularity::kPerGroup;
  grouped.weight.group_size = 24;  // 32 inputs: groups of 24 and 8
  r.sites["blocks.0.attn.qkv"] = grouped;
  QuantConfig per_channel_input = r.linear_default;
  per_channel_input.activation.granularity = Granularity::kPerChannel;
  per_channel_input.activation.bits = 6;
  r.sites["blocks.1.mlp.fc1"] = per_channel_input;
  QuantConfig heads = r.matmul_default;
  heads.activation.granularity = heads.activation_rhs.granularity = Granularity::kPerHead;
  r.sites["blocks.0.attn.qk_matmul"] = heads;
  QuantConfig log2 = r.matmul_default;
  log2.activation.quantizer = ActivationQuantizer::kLog2;
  log2.activation.bits = 4;
  r.sites["blocks.1.attn.av_matmul"] = log2;
  QuantConfig ibert;
  ibert.nonlinear = {NonlinearMethod::kIbert, 8};
  r.sites["blocks.0.attn.softmax"] = ibert;
  const QuantizedModel q = Quantized(config, r);
  OnnxExportSummary summary;
  auto m = BuildQdqModel(q, &summary);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(CheckOnnxModel(*m).ok()) << CheckOnnxModel(*m).ToString();
  EXPECT_EQ(summary.float_nonlinear_sites, std::vector<std::string>{"blocks.0.attn.softmax"});
  EXPECT_EQ(summary.float_activation_sites,
            std::vector<std::string>{"blocks.1.attn.av_matmul/lhs"});
  EXPECT_EQ(Meta(*m, "qsearch.float_nonlinear_sites"), "[\"blocks.0.attn.softmax\"]");
  // qkv's two groups are two pairs: 10 linear weights become 11 pairs.
  EXPECT_EQ(summary.weight_qdq, 11);
  const auto ops = OpCounts(*m);
  EXPECT_EQ(ops.at("Sum"), 1);
  // The 6-bit per-channel input is clipped by Max/Min against per-channel bounds.
  EXPECT_EQ(ops.at("Max"), 1);
  EXPECT_EQ(ops.at("Min"), 1);
}

TEST(OnnxQdqTest, OtherViTFamiliesExportAndSwinIsRefused) {
  for (const auto& config :
       {core::testing::TinyDistilledConfig(), core::testing::TinyLayerScaleRegistersConfig()}) {
    const QuantizedModel q = Quantized(config, Shorthand("w8a8"));
    auto m = BuildQdqModel(q);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_TRUE(CheckOnnxModel(*m).ok()) << CheckOnnxModel(*m).ToString();
  }
  const QuantizedModel swin = Quantized(core::testing::TinySwinConfig(), Shorthand("w8a8"));
  EXPECT_EQ(BuildQdqModel(swin).status().code(), StatusCode::kUnimplemented);
  // Commands ask first, before their work.
  const auto swin_config = core::testing::TinySwinConfig();
  EXPECT_EQ(
      CheckExportable(swin_config, {ExportFormat::kSafetensorsFakeQuant, ExportFormat::kOnnxQdq})
          .code(),
      StatusCode::kUnimplemented);
  EXPECT_TRUE(CheckExportable(swin_config, {ExportFormat::kSafetensorsFakeQuant,
                                            ExportFormat::kSafetensorsPacked})
                  .ok());
  EXPECT_TRUE(CheckExportable(TinyConfig(), {ExportFormat::kOnnxQdq}).ok());
}

TEST(ExportTest, PackedWeightsReadBackAsTheFakeQuantTensors) {
  const QuantizedModel q = Quantized(TinyConfig(), Shorthand("w3a8"));
  const std::string dir = ::testing::TempDir() + "/qs_export_packed";
  auto packed = Export(q, ExportFormat::kSafetensorsPacked, {dir});
  ASSERT_TRUE(packed.ok()) << packed.status().ToString();
  auto fake = Export(q, ExportFormat::kSafetensorsFakeQuant, {dir});
  ASSERT_TRUE(fake.ok()) << fake.status().ToString();
  auto file = core::SafetensorsFile::Open(dir + "/weights.safetensors");
  ASSERT_TRUE(file.ok());
  auto read = core::ReadQuantizedWeights(*file);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  auto fq_file = core::SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(fq_file.ok());
  const auto deployed = q.DeployedTensors();
  ASSERT_EQ(read->size(), deployed.size());
  for (const auto& [name, t] : deployed) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(read->count(name));
    EXPECT_TRUE(torch::equal(read->at(name), t));
    auto stored = fq_file->Tensor(name);
    ASSERT_TRUE(stored.ok());
    EXPECT_TRUE(torch::equal(*stored, t));
  }
  // A 3-bit weight takes 8 codes on its grid per row at most.
  const auto& w = deployed.at("blocks.0.mlp.fc1.weight");
  for (int64_t row = 0; row < w.size(0); ++row) {
    EXPECT_LE(std::get<0>(at::_unique(w[row])).numel(), 8);
  }
}

TEST(ExportTest, EncodingsNameEveryQuantizedOperand) {
  const QuantizedModel q = Quantized(TinyConfig(), Shorthand("w4a8"));
  const auto e = ActivationEncodings(q);
  EXPECT_EQ(e["format"], "qsearch.encodings.v1");
  int operands = 0;
  for (const auto& [site, entry] : e["activation_encodings"].items()) {
    for (const auto& [operand, enc] : entry.items()) {
      ++operands;
      EXPECT_EQ(enc["quantizer"], "uniform");
      EXPECT_EQ(enc["bits"], 8);
      EXPECT_EQ(enc["scale"].size(), 1u);
      EXPECT_EQ(enc["qmin"], 0);
      EXPECT_EQ(enc["qmax"], 255);
    }
  }
  EXPECT_EQ(operands, 10 + 2 * 4);
  EXPECT_EQ(e["param_encodings"].size(), 10u);
  const auto& fc1 = e["param_encodings"]["blocks.0.mlp.fc1.weight"];
  EXPECT_EQ(fc1["bits"], 4);
  EXPECT_EQ(fc1["scale"].size(), 64u);  // one per output row
  EXPECT_EQ(fc1["qmin"], -8);
}

TEST(ExportTest, FormatsParseAndBadOnesAreNamed) {
  auto f = ParseExportFormats("onnx-qdq,safetensors-packed");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->size(), 2u);
  auto bad = ParseExportFormats("onnx-qdq,tflite");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("tflite"), std::string::npos);
  EXPECT_EQ(ParseExportFormats("onnx-qdq,onnx-qdq").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseExportFormats("").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs::exports
