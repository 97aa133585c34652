#include "worker/model_session.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include <ATen/Context.h>

#include "common/file_util.h"
#include "core/safetensors.h"
#include "core/test_models.h"
#include "worker/session_testing.h"

namespace qs::worker {
namespace {

// A tiny random model with random calibration and validation images, written once.
class ModelSessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::WriteTinySessionFiles("qs_model_session_test"));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static JobSpec Spec() { return testing::TinySessionSpec(*dir_); }

  // Every site once in `order`, with a quantized candidate (and a weight-only one at linear
  // sites); the results by key.
  static std::map<std::string, Evaluation> EvaluateAll(const ModelSession& session,
                                                       const std::vector<std::string>& order) {
    std::map<std::string, Evaluation> out;
    for (const auto& name : order) {
      const core::Site* site = session.model().FindSite(name);
      QuantConfig a8;
      a8.activation.bits = 8;
      a8.activation_rhs.bits = 8;
      std::vector<core::SiteCandidate> candidates;
      if (site->kind == SiteKind::kLinear) {
        QuantConfig w4a8, w4;
        w4a8.weight.bits = 4;
        w4a8.activation.bits = 8;
        w4.weight.bits = 4;
        candidates = {{w4a8, name + "/w4a8"}, {w4, name + "/w4"}};
      } else if (site->kind == SiteKind::kNonlinear) {
        QuantConfig ibert;
        ibert.nonlinear = {NonlinearMethod::kIbert, 8};
        candidates = {{ibert, name + "/ibert8"}};
      } else {
        candidates = {{a8, name + "/a8"}};
      }
      auto evaluated = session.EvaluateTask(name, candidates, {});
      EXPECT_TRUE(evaluated.ok()) << evaluated.status().ToString();
      if (!evaluated.ok()) continue;
      for (const auto& e : *evaluated) {
        EXPECT_TRUE(e.ok()) << e.key << ": " << e.error;
        out[e.key] = e;
      }
    }
    return out;
  }

  // Inputs captured in the reference pass and captured again from checkpoints give the same
  // numbers, under `spec`.
  static void CheckBoundedCache(const JobSpec& spec);

  static std::string* dir_;
};

std::string* ModelSessionTest::dir_ = nullptr;

TEST_F(ModelSessionTest, BoundedActivationCacheRecapturesAndChangesNothing) {
  for (const char* dtype : {"float32", "float16"}) {
    SCOPED_TRACE(dtype);
    JobSpec spec = Spec();
    spec.capture_dtype = dtype;
    CheckBoundedCache(spec);
  }
}

void ModelSessionTest::CheckBoundedCache(const JobSpec& spec) {
  auto roomy = ModelSession::Open(spec);
  ASSERT_TRUE(roomy.ok()) << roomy.status().ToString();
  std::vector<std::string> order;
  for (const auto& s : (*roomy)->model().sites()) order.push_back(s.name);
  std::vector<std::string> back_and_forth = order;
  back_and_forth.insert(back_and_forth.end(), order.rbegin(), order.rend());
  const auto expected = EvaluateAll(**roomy, order);
  // Everything fitted the default cache during the reference pass: nothing captured again.
  EXPECT_EQ((*roomy)->segment_captures(), 0);

  SessionOptions tight;
  tight.activation_cache_bytes = 1;  // one segment at a time
  auto bounded = ModelSession::Open(spec, tight);
  ASSERT_TRUE(bounded.ok());
  const auto got = EvaluateAll(**bounded, back_and_forth);
  // Walking back over the segments needs each one again (the last visited stays cached).
  const int64_t segments = (*bounded)->model().num_segments();
  EXPECT_GE((*bounded)->segment_captures(), 2 * segments - 1);
  // Dropping the captured inputs costs a capture, not a result.
  (*roomy)->DropCapturedInputs();
  const auto again = EvaluateAll(**roomy, {"blocks.1.mlp.fc1"});
  EXPECT_EQ((*roomy)->segment_captures(), 1);
  EXPECT_EQ(again.at("blocks.1.mlp.fc1/w4a8").sqnr_db, expected.at("blocks.1.mlp.fc1/w4a8").sqnr_db);
  ASSERT_EQ(got.size(), expected.size());
  for (const auto& [key, e] : expected) {
    EXPECT_EQ(got.at(key).sqnr_db, e.sqnr_db) << key;
    EXPECT_EQ(got.at(key).mse, e.mse) << key;
  }
}

TEST_F(ModelSessionTest, WeightOnlyTasksNeedOnlyTheKeptGramMatrix) {
  SessionOptions tight;
  tight.activation_cache_bytes = 1;
  auto session = ModelSession::Open(Spec(), tight);
  ASSERT_TRUE(session.ok());
  QuantConfig w3;
  w3.weight.bits = 3;
  w3.weight.method = WeightMethod::kGptq;
  auto first = (*session)->EvaluateTask("blocks.0.mlp.fc1", {{w3, "a"}}, {});
  ASSERT_TRUE(first.ok() && (*first)[0].ok());
  QuantConfig a8;
  a8.activation.bits = 8;
  a8.activation_rhs.bits = 8;
  (void)(*session)->EvaluateTask("blocks.1.attn.qk_matmul", {{a8, "b"}}, {});  // evicts block 0
  const int64_t captures = (*session)->segment_captures();
  w3.weight.bits = 4;
  auto again = (*session)->EvaluateTask("blocks.0.mlp.fc1", {{w3, "c"}}, {});
  ASSERT_TRUE(again.ok() && (*again)[0].ok());
  EXPECT_EQ((*session)->segment_captures(), captures);
  // MAE needs the inputs again.
  core::SiteEvaluationOptions mae;
  mae.measure_mae = true;
  auto with_mae = (*session)->EvaluateTask("blocks.0.mlp.fc1", {{w3, "d"}}, mae);
  ASSERT_TRUE(with_mae.ok() && (*with_mae)[0].mae.has_value());
  EXPECT_EQ((*session)->segment_captures(), captures + 1);
}

TEST_F(ModelSessionTest, TaskWideFailuresAreStatusesNotCachedResults) {
  auto session = ModelSession::Open(Spec());
  ASSERT_TRUE(session.ok());
  QuantConfig a8;
  a8.activation.bits = 8;
  auto missing = (*session)->EvaluateTask("blocks.7.mlp.fc1", {{a8, "x"}}, {});
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("blocks.7.mlp.fc1"), std::string::npos);
}

TEST_F(ModelSessionTest, HalfPrecisionCaptureIsItsOwnCalibrationAndStaysClose) {
  auto full = ModelSession::Open(Spec());
  JobSpec half_spec = Spec();
  half_spec.capture_dtype = "float16";
  auto half = ModelSession::Open(half_spec);
  ASSERT_TRUE(full.ok() && half.ok()) << half.status().ToString();
  EXPECT_NE((*full)->calibration_digest(), (*half)->calibration_digest());
  const std::vector<std::string> sites = {"blocks.0.attn.qkv", "blocks.1.mlp.fc2",
                                          "blocks.0.attn.av_matmul"};
  const auto a = EvaluateAll(**full, sites), b = EvaluateAll(**half, sites);
  for (const auto& [key, e] : a) EXPECT_NEAR(b.at(key).sqnr_db, e.sqnr_db, 0.5) << key;
}

TEST_F(ModelSessionTest, ReferencePassesAreTimedAndDevicesChecked) {
  auto session = ModelSession::Open(Spec());
  ASSERT_TRUE(session.ok());
  EXPECT_GT((*session)->fp32_calibration_seconds(), 0);
  EXPECT_GT((*session)->fp32_validation_seconds(), 0);
  EXPECT_EQ((*session)->device(), "cpu");
  EXPECT_EQ((*session)->calibration_images(), 24);
  SessionOptions no_batch;
  no_batch.capture_batch = 0;  // would loop forever
  EXPECT_EQ(ModelSession::Open(Spec(), no_batch).status().code(), StatusCode::kInvalidArgument);
  if (!at::hasCUDA()) {
    JobSpec cuda = Spec();
    cuda.device = "cuda";
    auto s = ModelSession::Open(cuda);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(s.status().message().find("cuda"), std::string::npos);
  }
}

}  // namespace
}  // namespace qs::worker
