#include "server/spec_file.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "common/file_util.h"

namespace qs::server {
namespace {

TEST(YamlSpecTest, ConvertsScalarsByTheirLook) {
  auto j = YamlToJson(R"(
a: 4
b: 4.5
c: true
d: "4"
e: [2, 3, "x"]
f: ~
g: text
)");
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_TRUE((*j)["a"].is_number_integer());
  EXPECT_DOUBLE_EQ((*j)["b"].get<double>(), 4.5);
  EXPECT_EQ((*j)["c"], true);
  EXPECT_TRUE((*j)["d"].is_string());
  EXPECT_EQ((*j)["e"].size(), 3u);
  EXPECT_TRUE((*j)["f"].is_null());
  EXPECT_EQ((*j)["g"], "text");
  auto bad = YamlToJson("a: [1, 2\nb: 3");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(YamlSpecTest, YamlAndJsonSpecsParseAlike) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string yaml = (dir / "qs_spec.yaml").string();
  const std::string json = (dir / "qs_spec.json").string();
  ASSERT_TRUE(WriteFileAtomically(yaml, R"(
model: {config: m/config.json, weights: m/model.safetensors}
calibration: {source: "fashion-mnist:train", count: 128, seed: 3}
search:
  weight_methods: [rtn, erq]
  weight_bits: [3, 4, 8]
objective: {avg_weight_bits: 3.5}
accuracy: {max_abs_top1_drop: 0.01}
)").ok());
  ASSERT_TRUE(WriteFileAtomically(json, R"({
"model": {"config": "m/config.json", "weights": "m/model.safetensors"},
"calibration": {"source": "fashion-mnist:train", "count": 128, "seed": 3},
"search": {"weight_methods": ["rtn", "erq"], "weight_bits": [3, 4, 8]},
"objective": {"avg_weight_bits": 3.5},
"accuracy": {"max_abs_top1_drop": 0.01}})").ok());
  auto a = LoadSpecFile(yaml);
  auto b = LoadSpecFile(json);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(ToJson(*a).dump(), ToJson(*b).dump());
  ASSERT_TRUE(WriteFileAtomically(yaml, "objective: {avg_weight_bits: four}\nmodel: {}\n").ok());
  auto bad = LoadSpecFile(yaml);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  std::remove(yaml.c_str());
  std::remove(json.c_str());
}

}  // namespace
}  // namespace qs::server
