#include "core/evaluate.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/dataset.h"
#include "core/erq.h"
#include "core/metrics.h"
#include "core/quantize_model.h"
#include "core/test_models.h"

namespace qs::core {
namespace {

struct Fixture {
  ViTModel model;
  SiteInputs inputs;
  torch::Tensor images;
};

// The tiny model at MLP ratio 4, as ViTs have it: fc2's input is 4× its output.
Fixture Make(int64_t images = 16) {
  auto c = testing::TinyConfig();
  c.mlp_ratio = 4.0;
  auto model = ViTModel::FromTensors(c, testing::TinyTensors(c, 31));
  EXPECT_TRUE(model.ok());
  torch::manual_seed(32);
  auto x = torch::randn({images, 1, 16, 16});
  auto inputs = CaptureSiteInputs(*model, x);
  EXPECT_TRUE(inputs.ok());
  return {*model, *inputs, x};
}

QuantConfig Linear(int wbits, int abits, WeightMethod m = WeightMethod::kRtn) {
  QuantConfig c;
  c.weight.bits = wbits;
  c.weight.method = m;
  c.activation.bits = abits;
  return c;
}

// The straightforward measurement: the site quantized on its inputs as calibration does it, and
// its output compared with the float output element by element.
Evaluation Reference(const Fixture& f, const Site& site, const QuantConfig& config) {
  const auto& w = f.model.tensor(site.weight);
  const std::string bias_name = site.weight.substr(0, site.weight.size() - 6) + "bias";
  auto bias = f.model.tensors().count(bias_name) ? f.model.tensor(bias_name) : torch::Tensor();
  auto r = QuantizeLinearSite(site, config, f.model.config().num_heads, f.inputs.at(site.name)[0],
                              w.reshape({w.size(0), -1}), bias);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  Evaluation e;
  e.sqnr_db = r->report.sqnr_db;
  e.mse = Mse(r->reference_output, r->output);
  e.mae = Mae(r->reference_output, r->output);
  e.cosine = Cosine(r->reference_output, r->output);
  e.noise_ratio = std::pow(10.0, -e.sqnr_db / 10);
  return e;
}

TEST(EvaluateTest, CapturesEverySiteAndDescribesSizes) {
  auto f = Make();
  size_t linear_and_matmul = 0;
  for (const Site& s : f.model.sites()) linear_and_matmul += s.kind != SiteKind::kNonlinear;
  EXPECT_EQ(f.inputs.size(), linear_and_matmul);
  // Non-linear inputs only when asked for: every site then.
  auto all = CaptureSiteInputs(f.model, f.images, /*nonlinear=*/true);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), f.model.sites().size());
  EXPECT_EQ(all->at("blocks.0.attn.softmax")[0].sizes().vec(),
            (std::vector<int64_t>{16, 4, 17, 17}));
  EXPECT_EQ(f.inputs.at("blocks.0.attn.qkv")[0].sizes().vec(), (std::vector<int64_t>{16, 17, 32}));
  EXPECT_EQ(f.inputs.at("blocks.0.attn.av_matmul").size(), 2u);
  auto sites = DescribeSites(f.model);
  ASSERT_EQ(sites.size(), f.model.sites().size());
  EXPECT_EQ(sites[0].weight_params, 32 * 16);   // patch_embed: 32 × (1·4·4)
  EXPECT_EQ(sites[0].macs, 16 * 32 * 16);       // 16 patches
  EXPECT_EQ(sites[1].macs, 17 * 96 * 32);       // qkv over 17 tokens
  EXPECT_EQ(sites[2].macs, 4 * 17 * 17 * 8);    // q·kᵀ
  EXPECT_EQ(sites[f.model.SegmentSites(3).front() - &f.model.sites()[0]].macs,
            5 * 32);  // head on the pooled token
  EXPECT_EQ(sites.back().kind, SiteKind::kNonlinear);
  EXPECT_EQ(sites.back().macs, 17 * 32);       // the final norm over 17 tokens
}

TEST(EvaluateTest, SegmentCaptureEqualsTheWholePass) {
  auto f = Make();
  torch::manual_seed(32);
  auto x = torch::randn({16, 1, 16, 16});
  SiteInputs by_segment;
  for (int64_t seg = 0; seg < f.model.num_segments(); ++seg) {
    auto out = CaptureSegmentInputs(f.model, seg, x, &by_segment);
    ASSERT_TRUE(out.ok());
    x = *out;
  }
  ASSERT_EQ(by_segment.size(), f.inputs.size());
  for (const auto& [name, tensors] : f.inputs) {
    ASSERT_EQ(by_segment.at(name).size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_TRUE(torch::equal(by_segment.at(name)[i], tensors[i])) << name;
    }
  }
  EXPECT_FALSE(CaptureSegmentInputs(f.model, f.model.num_segments(), x, &by_segment).ok());
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

// The Gram-block measurement (qkv, proj, fc1, the patch embedding and the head, inputs at most
// twice as wide as the output; GPTQ and ERQ everywhere) and the direct one (RTN at fc2, whose
// input is 4× its output at MLP ratio 4) both equal the straightforward element-by-element
// measurement of the same quantized site.
TEST(EvaluateTest, EveryPathEqualsTheStraightforwardMeasurement) {
  auto f = Make();
  SiteEvaluationOptions with_mae;
  with_mae.measure_mae = true;
  for (const char* name :
       {"blocks.0.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc2", "patch_embed.proj", "head"}) {
    const Site& site = *f.model.FindSite(name);
    const auto& in = f.inputs.at(name);
    for (auto method : {WeightMethod::kRtn, WeightMethod::kGptq, WeightMethod::kErq}) {
      for (int abits : {0, 4, 8}) {
        for (auto g : {Granularity::kPerChannel, Granularity::kPerGroup}) {
          QuantConfig c = Linear(3, abits, method);
          c.weight.granularity = g;
          c.weight.group_size = 8;
          auto fast = EvaluateCandidate(f.model, site, c, in, "k", with_mae);
          auto ref = Reference(f, site, c);
          ASSERT_TRUE(fast.ok()) << fast.error;
          const std::string what = std::string(name) + " " + ToString(method) + " a" +
                                   std::to_string(abits) + " " + ToString(g) +
                                   (MeasuredFromGram(f.model, site, c) ? " gram" : " direct");
          // GPTQ and ERQ solve from the blocks rather than the inputs, so their rounding may
          // differ in a weight or two; RTN's weights are the same, so only summation differs.
          const double tol = method == WeightMethod::kRtn ? 1e-4 : 0.05;
          EXPECT_NEAR(fast.sqnr_db, ref.sqnr_db, method == WeightMethod::kRtn ? 1e-3 : 0.2)
              << what;
          EXPECT_NEAR(fast.mse / ref.mse, 1.0, tol) << what;
          ASSERT_TRUE(fast.mae.has_value()) << what;
          EXPECT_NEAR(*fast.mae / *ref.mae, 1.0, tol) << what;
          EXPECT_NEAR(fast.cosine, ref.cosine, tol / 100) << what;
        }
      }
    }
  }
}

TEST(EvaluateTest, ReparamCandidatesEqualTheStraightforwardMeasurement) {
  // Their own folded input, layer and Gram matrix (A' = TᵀAT), with and without the others.
  auto f = Make();
  for (const char* name : {"blocks.0.attn.qkv", "blocks.1.mlp.fc1"}) {
    const Site& site = *f.model.FindSite(name);
    const auto& in = f.inputs.at(name);
    std::vector<SiteCandidate> candidates;
    for (auto method : {WeightMethod::kRtn, WeightMethod::kGptq, WeightMethod::kErq}) {
      for (bool reparam : {false, true}) {
        QuantConfig c = Linear(4, 4, method);
        c.reparam = reparam;
        candidates.push_back({c, std::string(ToString(method)) + (reparam ? "+r" : "")});
      }
    }
    SiteData data{in, torch::Tensor()};
    auto together = EvaluateSite(f.model, site, candidates, &data, {});
    for (size_t i = 0; i < candidates.size(); ++i) {
      const QuantConfig& c = candidates[i].config;
      const std::string what = std::string(name) + " " + candidates[i].key;
      ASSERT_TRUE(together[i].ok()) << what << ": " << together[i].error;
      auto ref = Reference(f, site, c);
      const double tol = c.weight.method == WeightMethod::kRtn ? 1e-3 : 0.2;
      EXPECT_NEAR(together[i].sqnr_db, ref.sqnr_db, tol) << what;
      auto alone = EvaluateCandidate(f.model, site, c, in, "k", {});
      EXPECT_EQ(alone.sqnr_db, together[i].sqnr_db) << what;
    }
    // Per-tensor 4-bit inputs: reparam's per-channel calibration measures better here.
    EXPECT_GT(together[1].sqnr_db, together[0].sqnr_db) << name;
  }
  // Where it does not apply, a reparam candidate is an error, not a silent duplicate.
  QuantConfig c = Linear(4, 4);
  c.reparam = true;
  auto e = EvaluateCandidate(f.model, *f.model.FindSite("blocks.0.mlp.fc2"), c,
                             f.inputs.at("blocks.0.mlp.fc2"), "k", {});
  EXPECT_FALSE(e.ok());
  EXPECT_NE(e.error.find("reparam applies only"), std::string::npos) << e.error;
}

TEST(EvaluateTest, LiuCandidatesAreTheSiteQuantizedAsCalibrationDoesIt) {
  // Searched with its input's interval, a Liu candidate is measured directly: the same numbers as
  // the straightforward measurement, alone or among others, with reparam too.
  auto f = Make();
  for (const char* name : {"blocks.0.attn.qkv", "blocks.1.mlp.fc2", "head"}) {
    const Site& site = *f.model.FindSite(name);
    const auto& in = f.inputs.at(name);
    std::vector<SiteCandidate> candidates;
    for (int abits : {0, 6}) {
      for (auto method : {WeightMethod::kRtn, WeightMethod::kLiu}) {
        QuantConfig c = Linear(4, abits, method);
        candidates.push_back({c, std::string(ToString(method)) + std::to_string(abits)});
      }
    }
    if (ReparamApplies(name, SiteKind::kLinear)) {
      QuantConfig c = Linear(4, 6, WeightMethod::kLiu);
      c.reparam = true;
      candidates.push_back({c, "liu6+r"});
    }
    SiteData data{in, torch::Tensor()};
    auto together = EvaluateSite(f.model, site, candidates, &data, {});
    for (size_t i = 0; i < candidates.size(); ++i) {
      const std::string what = std::string(name) + " " + candidates[i].key;
      ASSERT_TRUE(together[i].ok()) << what << ": " << together[i].error;
      if (candidates[i].config.weight.method != WeightMethod::kLiu) continue;
      EXPECT_FALSE(MeasuredFromGram(f.model, site, candidates[i].config));
      auto ref = Reference(f, site, candidates[i].config);
      EXPECT_NEAR(together[i].sqnr_db, ref.sqnr_db, 1e-6) << what;
      auto alone = EvaluateCandidate(f.model, site, candidates[i].config, in, "k", {});
      EXPECT_EQ(alone.sqnr_db, together[i].sqnr_db) << what;
    }
  }
}

TEST(EvaluateTest, LiuMatmulCandidatesAreMeasuredAsCalibrationQuantizes) {
  auto f = Make();
  for (const char* name : {"blocks.0.attn.qk_matmul", "blocks.1.attn.av_matmul"}) {
    const Site& site = *f.model.FindSite(name);
    const auto& in = f.inputs.at(name);
    QuantConfig liu, minmax;
    for (QuantConfig* c : {&liu, &minmax}) {
      c->activation.bits = c->activation_rhs.bits = 4;
      c->activation.calibrator = c->activation_rhs.calibrator =
          c == &liu ? RangeCalibrator::kLiu : RangeCalibrator::kMinMax;
    }
    SiteData data{in, torch::Tensor()};
    auto e = EvaluateSite(f.model, site, {{minmax, "minmax"}, {liu, "liu"}}, &data, {});
    ASSERT_TRUE(e[0].ok() && e[1].ok()) << e[1].error;
    QuantizeOptions plain;
    plain.site_reports = true;
    auto ref = QuantizeMatmulSite(site, liu, site.num_heads, in[0], in[1], plain);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    EXPECT_NEAR(e[1].sqnr_db, ref->report.sqnr_db, 1e-6) << name;
    EXPECT_NE(e[1].sqnr_db, e[0].sqnr_db) << name;  // the search moved off min-max
  }
}

TEST(EvaluateTest, NuclearNormsOfAttentionMapsLieBetweenOneAndTheirSize) {
  // A row-stochastic T × T matrix has nuclear norm in [1, T]: 1 for uniform attention (rank 1),
  // T for the identity.
  const int64_t t = 9;
  EXPECT_NEAR(MeanNuclearNorm(torch::full({1, t, t}, 1.0 / t)), 1.0, 1e-6);  // float32 1/9
  EXPECT_NEAR(MeanNuclearNorm(torch::eye(t).unsqueeze(0)), static_cast<double>(t), 1e-9);
  torch::manual_seed(4);
  auto maps = torch::softmax(3 * torch::randn({5, 4, t, t}), -1);  // [images, heads, T, T]
  const double per_image = MeanNuclearNorm(maps);
  EXPECT_GE(per_image, 4 * 1.0);  // four heads per image, each in [1, T]
  EXPECT_LE(per_image, 4.0 * t);
  // Averaged over the leading items, summed within one.
  EXPECT_NEAR(MeanNuclearNorm(torch::cat({torch::eye(t).unsqueeze(0),
                                          torch::full({1, t, t}, 1.0 / t)})),
              (t + 1.0) / 2, 1e-6);
}

TEST(EvaluateTest, NuclearErrorIsTheOutputsNuclearNormTimesTheErrorPerImage) {
  auto f = Make();
  SiteEvaluationOptions nuclear;
  nuclear.measure_nuclear = true;
  for (const char* name : {"blocks.0.attn.qkv", "blocks.0.mlp.fc2", "blocks.1.attn.av_matmul",
                           "blocks.1.attn.qk_matmul", "head"}) {
    const Site& site = *f.model.FindSite(name);
    const auto& in = f.inputs.at(name);
    std::vector<SiteCandidate> candidates;
    for (int bits : {3, 8}) {
      QuantConfig c = site.kind == SiteKind::kLinear ? Linear(bits, 8) : QuantConfig{};
      if (site.kind == SiteKind::kMatmul) c.activation.bits = c.activation_rhs.bits = bits;
      candidates.push_back({c, std::to_string(bits)});
    }
    SiteData data{in, torch::Tensor()};
    auto plain = EvaluateSite(f.model, site, candidates, &data, {});
    SiteData again{in, torch::Tensor()};
    auto with = EvaluateSite(f.model, site, candidates, &again, nuclear);
    // The float output's matrices: per image (and head at the matmuls).
    torch::Tensor y, sensitivity;
    if (site.kind == SiteKind::kLinear) {
      const auto& w = f.model.tensor(site.weight);
      y = at::linear(in[0], w, f.model.tensor(site.weight.substr(0, site.weight.size() - 6) +
                                              "bias"));
      sensitivity = y.dim() == 2 ? y.unsqueeze(1) : y;
    } else {
      y = at::matmul(in[0], in[1]);
      sensitivity = std::string(name).find("av_matmul") != std::string::npos ? in[0] : y;
    }
    const double nu = MeanNuclearNorm(sensitivity);
    const double per_image = static_cast<double>(y.numel()) / static_cast<double>(y.size(0));
    for (size_t i = 0; i < candidates.size(); ++i) {
      ASSERT_TRUE(with[i].ok()) << name << ": " << with[i].error;
      EXPECT_FALSE(plain[i].nuclear_error.has_value());
      ASSERT_TRUE(with[i].nuclear_error.has_value()) << name;
      EXPECT_EQ(with[i].mse, plain[i].mse) << name;  // measuring it changes nothing else
      EXPECT_NEAR(*with[i].nuclear_error / (nu * with[i].mse * per_image), 1.0, 1e-6) << name;
    }
    EXPECT_GT(*with[0].nuclear_error, *with[1].nuclear_error) << name;  // 3 bits worse than 8
  }
}

// The blocks are float32 GEMMs accumulated in float64: on the fixture's real activations the
// noise they give stays within 1e-5 of a float64 computation of the same quantized output.
TEST(EvaluateTest, Float32BlocksMatchFloat64OnTheFixture) {
  auto model = ViTModel::Load("tests/data/fixture/config.json",
                              "tests/data/fixture/model.safetensors");
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto train = LoadDataset("fashion-mnist:train");
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  auto images = NormalizeImages(DrawSubset(*train, 256, 0), model->config());
  auto inputs = CaptureSiteInputs(*model, *images);
  ASSERT_TRUE(inputs.ok());
  double worst = 0;
  int checked = 0;
  for (const auto& site : model->sites()) {
    if (site.kind != SiteKind::kLinear) continue;
    const auto& x = inputs->at(site.name)[0];
    auto w = model->tensor(site.weight);
    w = w.reshape({w.size(0), -1});
    const auto bias = model->tensor(site.weight.substr(0, site.weight.size() - 6) + "bias");
    for (int abits : {0, 8}) {
      for (int bits : {3, 4, 8}) {
        QuantConfig c = Linear(bits, abits);
        if (!MeasuredFromGram(*model, site, c)) continue;
        auto e = EvaluateCandidate(*model, site, c, {x}, "k");
        ASSERT_TRUE(e.ok()) << e.error;
        auto act = ActivationQuantizerState::Fit(
            x, c.activation, ActivationLayout(c.activation, site, model->config().num_heads),
            OperandDomain(site, 0));
        auto q = QuantizeWeightRtn(w, c.weight);
        ASSERT_TRUE(act.ok() && q.ok());
        auto rows = x.reshape({-1, x.size(-1)});
        auto y = at::linear(rows.to(torch::kFloat64), w.to(torch::kFloat64), bias.to(torch::kFloat64));
        auto y_hat = at::linear(act->Apply(rows).to(torch::kFloat64),
                                q->dequantized.to(torch::kFloat64), bias.to(torch::kFloat64));
        const double noise_ratio =
            (y - y_hat).pow(2).sum().item<double>() / y.pow(2).sum().item<double>();
        worst = std::max(worst, std::abs(e.noise_ratio / noise_ratio - 1));
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 40);
  EXPECT_LT(worst, 1e-5);
}

TEST(EvaluateTest, PathsDependOnTheSiteShapeAndMethodOnly) {
  auto f = Make();
  const Site& qkv = *f.model.FindSite("blocks.0.attn.qkv");
  const Site& fc2 = *f.model.FindSite("blocks.0.mlp.fc2");
  const Site& qk = *f.model.FindSite("blocks.0.attn.qk_matmul");
  EXPECT_TRUE(MeasuredFromGram(f.model, qkv, Linear(4, 8)));
  EXPECT_FALSE(MeasuredFromGram(f.model, fc2, Linear(4, 8)));
  EXPECT_TRUE(MeasuredFromGram(f.model, fc2, Linear(4, 8, WeightMethod::kGptq)));
  EXPECT_TRUE(MeasuredFromGram(f.model, fc2, Linear(4, 0, WeightMethod::kErq)));
  EXPECT_FALSE(MeasuredFromGram(f.model, qk, QuantConfig{}));
}

// A key's numbers must not depend on which other candidates shared its task.
TEST(EvaluateTest, TogetherOrAloneGiveTheSameNumbersBitForBit) {
  auto f = Make();
  for (const char* name : {"blocks.0.attn.qkv", "blocks.1.mlp.fc2", "blocks.0.attn.av_matmul"}) {
    const Site& site = *f.model.FindSite(name);
    std::vector<SiteCandidate> candidates;
    if (site.kind == SiteKind::kLinear) {
      for (auto method : {WeightMethod::kRtn, WeightMethod::kGptq, WeightMethod::kErq}) {
        for (int bits : {2, 4, 8}) {
          for (int abits : {0, 6, 8}) {
            candidates.push_back({Linear(bits, abits, method), "k" + std::to_string(candidates.size())});
          }
        }
      }
    } else {
      for (int abits : {0, 4, 8}) {
        QuantConfig c;
        c.activation.bits = abits;
        c.activation_rhs.bits = 8;
        candidates.push_back({c, "k" + std::to_string(candidates.size())});
      }
    }
    SiteData together{f.inputs.at(name), {}};
    std::vector<std::string> streamed;
    auto all = EvaluateSite(f.model, site, candidates, &together, {},
                            [&](const Evaluation& e) { streamed.push_back(e.key); });
    ASSERT_EQ(all.size(), candidates.size());
    ASSERT_EQ(streamed.size(), candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
      EXPECT_EQ(all[i].key, candidates[i].key);
      EXPECT_EQ(streamed[i], candidates[i].key);
      SiteData alone{f.inputs.at(name), {}};
      auto one = EvaluateSite(f.model, site, {candidates[i]}, &alone)[0];
      ASSERT_TRUE(one.ok() && all[i].ok()) << one.error << all[i].error;
      EXPECT_EQ(one.sqnr_db, all[i].sqnr_db) << name << " " << i;
      EXPECT_EQ(one.mse, all[i].mse) << name << " " << i;
      EXPECT_EQ(one.cosine, all[i].cosine) << name << " " << i;
      EXPECT_EQ(one.weight_sqnr_db, all[i].weight_sqnr_db) << name << " " << i;
    }
  }
}

// Once a site's blocks exist, another weight candidate costs O(out · in²) multiply-adds, however
// many tokens the calibration set has; the activation quantizer's blocks are paid once.
TEST(EvaluateTest, ExtraCandidatesCostQuadraticFormsNotTokens) {
  for (int64_t images : {8, 32}) {
    auto f = Make(images);
    const Site& site = *f.model.FindSite("blocks.0.attn.qkv");
    const double m = 96, n = 32;
    auto work = [&](int count) {
      std::vector<SiteCandidate> candidates;
      for (int i = 0; i < count; ++i) candidates.push_back({Linear(2 + i, 8), std::to_string(i)});
      SiteData data{f.inputs.at(site.name), {}};
      EvaluationCosts costs;
      auto e = EvaluateSite(f.model, site, candidates, &data, {}, {}, &costs);
      for (const auto& x : e) EXPECT_TRUE(x.ok()) << x.error;
      EXPECT_GE(costs.total_seconds,
                costs.gemm_seconds + costs.activation_seconds + costs.weight_seconds);
      return costs.gemm_multiply_adds;
    };
    const double per_candidate = m * (n + 1) * (n + 1) + m * (n + 1) * n + m * n * n;
    EXPECT_DOUBLE_EQ(work(6) - work(1), 5 * per_candidate) << images;
  }
}

TEST(EvaluateTest, MaeOnlyWhenAskedAndAGramSuffices) {
  auto f = Make();
  const Site& site = *f.model.FindSite("blocks.0.mlp.fc1");
  SiteData data{f.inputs.at(site.name), {}};
  auto plain = EvaluateSite(f.model, site, {{Linear(4, 8), "a"}}, &data)[0];
  ASSERT_TRUE(plain.ok()) << plain.error;
  EXPECT_FALSE(plain.mae.has_value());
  ASSERT_TRUE(data.gram.defined());
  SiteEvaluationOptions with_mae;
  with_mae.measure_mae = true;
  auto measured = EvaluateSite(f.model, site, {{Linear(4, 8), "a"}}, &data, with_mae)[0];
  ASSERT_TRUE(measured.mae.has_value());
  EXPECT_GT(*measured.mae, 0);
  EXPECT_EQ(measured.sqnr_db, plain.sqnr_db);
  // Weight-only candidates need nothing but the kept Gram matrix.
  SiteData gram_only{{}, data.gram};
  auto weight_only = EvaluateSite(f.model, site, {{Linear(4, 0, WeightMethod::kGptq), "w"}},
                                  &gram_only)[0];
  EXPECT_TRUE(weight_only.ok()) << weight_only.error;
  SiteData nothing;
  auto missing = EvaluateSite(f.model, site, {{Linear(4, 8), "m"}}, &nothing)[0];
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.error.find("no captured inputs"), std::string::npos);
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
  // One bad config among good ones fails alone.
  SiteData data{f.inputs.at(fc1.name), {}};
  QuantConfig bad = Linear(4, 8);
  bad.weight.bits = 12;
  auto mixed = EvaluateSite(f.model, fc1, {{Linear(4, 8), "good"}, {bad, "bad"}}, &data);
  EXPECT_TRUE(mixed[0].ok()) << mixed[0].error;
  EXPECT_FALSE(mixed[1].ok());
}

}  // namespace
}  // namespace qs::core
