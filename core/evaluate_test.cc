#include "core/evaluate.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/erq.h"
#include "core/test_models.h"

namespace qs::core {
namespace {

struct Fixture {
  ViTModel model;
  SiteInputs inputs;
};

Fixture Make() {
  const auto c = testing::TinyConfig();
  auto model = ViTModel::FromTensors(c, testing::TinyTensors(c, 31));
  EXPECT_TRUE(model.ok());
  torch::manual_seed(32);
  auto inputs = CaptureSiteInputs(*model, torch::randn({16, 1, 16, 16}));
  EXPECT_TRUE(inputs.ok());
  return {*model, *inputs};
}

QuantConfig Linear(int wbits, int abits, WeightMethod m = WeightMethod::kRtn) {
  QuantConfig c;
  c.weight.bits = wbits;
  c.weight.method = m;
  c.activation.bits = abits;
  return c;
}

TEST(EvaluateTest, CapturesEverySiteAndDescribesSizes) {
  auto f = Make();
  EXPECT_EQ(f.inputs.size(), f.model.sites().size());
  EXPECT_EQ(f.inputs.at("blocks.0.attn.qkv")[0].sizes().vec(), (std::vector<int64_t>{16, 17, 32}));
  EXPECT_EQ(f.inputs.at("blocks.0.attn.av_matmul").size(), 2u);
  auto sites = DescribeSites(f.model);
  ASSERT_EQ(sites.size(), f.model.sites().size());
  EXPECT_EQ(sites[0].weight_params, 32 * 16);   // patch_embed: 32 × (1·4·4)
  EXPECT_EQ(sites[0].macs, 16 * 32 * 16);       // 16 patches
  EXPECT_EQ(sites[1].macs, 17 * 96 * 32);       // qkv over 17 tokens
  EXPECT_EQ(sites[2].macs, 4 * 17 * 17 * 8);    // q·kᵀ
  EXPECT_EQ(sites.back().macs, 5 * 32);         // head on the pooled token
}

TEST(EvaluateTest, MoreBitsMeasureBetterAndFloatIsLossless) {
  auto f = Make();
  const Site& site = *f.model.FindSite("blocks.1.mlp.fc1");
  const auto& in = f.inputs.at(site.name);
  auto flt = EvaluateCandidate(f.model, site, Linear(0, 0), in, "k0");
  ASSERT_TRUE(flt.ok()) << flt.error;
  EXPECT_TRUE(std::isinf(flt.sqnr_db));
  EXPECT_EQ(flt.noise_ratio, 0.0);
  EXPECT_EQ(flt.key, "k0");
  double prev = -1;
  for (int bits : {2, 3, 4, 6, 8}) {
    auto e = EvaluateCandidate(f.model, site, Linear(bits, 8), in, "k");
    ASSERT_TRUE(e.ok()) << e.error;
    EXPECT_GT(e.sqnr_db, prev) << bits;
    EXPECT_NEAR(e.noise_ratio, std::pow(10, -e.sqnr_db / 10), 1e-12);
    EXPECT_LE(e.cosine, 1.0 + 1e-12);
    prev = e.sqnr_db;
  }
  auto gptq = EvaluateCandidate(f.model, site, Linear(3, 0, WeightMethod::kGptq), in, "g");
  auto rtn = EvaluateCandidate(f.model, site, Linear(3, 0), in, "r");
  ASSERT_TRUE(gptq.ok() && rtn.ok());
  EXPECT_LE(gptq.mse, rtn.mse);
}

TEST(EvaluateTest, WeightOnlyFromTheGramMatrixEqualsTheDirectMeasurement) {
  auto f = Make();
  for (const char* name : {"blocks.0.attn.qkv", "blocks.1.mlp.fc2", "patch_embed.proj", "head"}) {
    const Site& site = *f.model.FindSite(name);
    const auto& in = f.inputs.at(name);
    const auto gram = AugmentedGram(in[0]);
    for (auto method : {WeightMethod::kRtn, WeightMethod::kGptq, WeightMethod::kErq}) {
      for (auto g : {Granularity::kPerChannel, Granularity::kPerGroup}) {
        QuantConfig c = Linear(3, 0, method);
        c.weight.granularity = g;
        c.weight.group_size = 8;
        auto direct = EvaluateCandidate(f.model, site, c, in, "d");
        auto viagram = EvaluateCandidate(f.model, site, c, in, "g", gram);
        ASSERT_TRUE(direct.ok() && viagram.ok()) << direct.error << viagram.error;
        const std::string what = std::string(name) + " " + ToString(method) + " " + ToString(g);
        EXPECT_NEAR(viagram.sqnr_db, direct.sqnr_db, 1e-3) << what;
        EXPECT_NEAR(viagram.mse / direct.mse, 1.0, 1e-4) << what;
        EXPECT_NEAR(viagram.mae / direct.mae, 1.0, 1e-4) << what;
        EXPECT_NEAR(viagram.cosine, direct.cosine, 1e-7) << what;
        EXPECT_NEAR(viagram.noise_ratio / direct.noise_ratio, 1.0, 1e-4) << what;
      }
    }
  }
  // Activation-quantized candidates ignore the Gram matrix.
  const Site& fc1 = *f.model.FindSite("blocks.0.mlp.fc1");
  const auto& in = f.inputs.at(fc1.name);
  auto a = EvaluateCandidate(f.model, fc1, Linear(4, 8), in, "a");
  auto b = EvaluateCandidate(f.model, fc1, Linear(4, 8), in, "b", AugmentedGram(in[0]));
  EXPECT_EQ(a.sqnr_db, b.sqnr_db);
}

TEST(EvaluateTest, BadCandidatesComeBackAsErrorsNotCrashes) {
  auto f = Make();
  const Site& qk = *f.model.FindSite("blocks.0.attn.qk_matmul");
  QuantConfig log_on_q;
  log_on_q.activation.bits = 4;
  log_on_q.activation.quantizer = ActivationQuantizer::kLog2;
  auto e = EvaluateCandidate(f.model, qk, log_on_q, f.inputs.at(qk.name), "x");
  EXPECT_FALSE(e.ok());
  EXPECT_NE(e.error.find("post-softmax"), std::string::npos);
  auto missing = EvaluateCandidate(f.model, qk, QuantConfig{}, {}, "y");
  EXPECT_FALSE(missing.ok());
  const Site& fc1 = *f.model.FindSite("blocks.0.mlp.fc1");
  auto nan = EvaluateCandidate(f.model, fc1, Linear(4, 8),
                               {torch::full({2, 17, 32}, std::nanf(""))}, "z");
  EXPECT_FALSE(nan.ok());
}

}  // namespace
}  // namespace qs::core
