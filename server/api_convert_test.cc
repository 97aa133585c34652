#include "server/api_convert.h"

#include <gtest/gtest.h>

namespace qs::server {
namespace {

using nlohmann::json;

TEST(ApiConvertTest, TypedSpecAndJsonSpecConvertBothWays) {
  const json full = json::parse(R"({
    "model": {"config": "blob:sha256:aa", "weights": "blob:sha256:bb"},
    "calibration": {"source": "fashion-mnist:train", "count": 64, "seed": 7, "sampling": "uniform"},
    "validation": {"source": "fashion-mnist:test", "limit": 500, "sampling": "balanced"},
    "test": {"source": "imagefolder:/data/test", "limit": 200, "sampling": "uniform"},
    "search": {"weight_methods": ["rtn", "erq"], "weight_bits": [3, 4],
               "weight_granularities": ["per_group"], "group_size": 32,
               "activation_bits": [0, 8], "reparam": [true, false], "skip": ["head"],
               "nonlinear_methods": ["float", "ibert", "ivit"], "nonlinear_bits": [6],
               "reconstruction": {"method": "mgrq", "recon_iterations": 50,
                                  "mgrq_local_distance": "mse"},
               "pin": {"blocks.0.mlp.fc1": {"weight": {"bits": 8}}}},
    "objective": {"bops": 1.5e9, "metric": "mse"},
    "accuracy": {"max_rel_top1_drop": 0.02, "max_validations": 5, "refine": false},
    "compute": {"device": "cpu", "capture_dtype": "float16"}
  })");
  auto spec = ParseJobSpec(full, "");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  const qsearch::v1::JobSpec typed = ProtoFromSpec(*spec);
  EXPECT_EQ(typed.calibration().count(), 64);
  EXPECT_EQ(typed.objective().budget_kind(), "bops");
  ASSERT_EQ(typed.search().reparam_size(), 2);
  EXPECT_TRUE(typed.search().reparam(0));
  ASSERT_EQ(typed.search().nonlinear_methods_size(), 3);
  EXPECT_EQ(typed.search().nonlinear_methods(2), "ivit");
  ASSERT_EQ(typed.search().nonlinear_bits_size(), 1);
  EXPECT_NE(typed.search().reconstruction().find("\"mgrq_local_distance\":\"mse\""),
            std::string::npos);
  auto back = SpecJsonFromProto(typed);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  auto again = ParseJobSpec(*back, "");
  ASSERT_TRUE(again.ok()) << again.status().ToString() << "\n" << back->dump(2);
  EXPECT_EQ(ToJson(*again).dump(), ToJson(*spec).dump());
}

TEST(ApiConvertTest, AReconstructionTierThatIsNoJsonIsRefused) {
  qsearch::v1::JobSpec typed;
  typed.mutable_search()->set_reconstruction("{method: mgrq");
  auto j = SpecJsonFromProto(typed);
  ASSERT_EQ(j.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(j.status().message().find("reconstruction"), std::string::npos);
}

TEST(ApiConvertTest, UnsetTypedFieldsKeepTheJsonDefaults) {
  qsearch::v1::JobSpec typed;
  typed.mutable_model()->set_config("blob:sha256:aa");
  typed.mutable_model()->set_weights("blob:sha256:bb");
  typed.mutable_objective()->set_budget_kind("avg_weight_bits");
  typed.mutable_objective()->set_budget(4);
  auto j = SpecJsonFromProto(typed);
  ASSERT_TRUE(j.ok());
  auto spec = ParseJobSpec(*j, "");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  const JobSpec defaults;
  EXPECT_EQ(spec->calibration_count, defaults.calibration_count);
  EXPECT_EQ(spec->space.weight_bits, defaults.space.weight_bits);
  EXPECT_EQ(spec->max_validations, defaults.max_validations);
  typed.mutable_search()->mutable_pin()->insert({"blocks.0.mlp.fc1", "{not json"});
  EXPECT_EQ(SpecJsonFromProto(typed).status().code(), StatusCode::kInvalidArgument);
}

TEST(ApiConvertTest, StatusCodesAndNames) {
  EXPECT_EQ(ToGrpc(NotFoundError("x")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(FromGrpc(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "t")).code(),
            StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace qs::server
