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

TEST(YamlSpecTest, AliasesCannotRecurseOrExplodeAndBigFilesAreRefused) {
  // Once: a self-referencing alias recursed until the stack ran out, and nine levels of
  // ten-fold aliases (a few hundred bytes) expanded until memory ran out.
  auto self = YamlToJson("weights: &w [*w]\n");
  ASSERT_FALSE(self.ok());
  EXPECT_EQ(self.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(self.status().message().find("deeper than"), std::string::npos) << self.status().ToString();
  std::string laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c) {
    const std::string prev(1, static_cast<char>(c - 1));
    laughs += std::string(1, c) + ": &" + c + " [*" + prev + ", *" + prev + ", *" + prev + ", *" +
              prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev +
              ", *" + prev + "]\n";
  }
  ASSERT_LT(laughs.size(), 1000u);
  auto exploded = YamlToJson(laughs);
  ASSERT_FALSE(exploded.ok());
  EXPECT_EQ(exploded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(exploded.status().message().find("nodes"), std::string::npos);
  // A few aliases are fine.
  auto shared = YamlToJson("a: &x [1, 2]\nb: *x\n");
  ASSERT_TRUE(shared.ok());
  EXPECT_EQ((*shared)["b"], nlohmann::json({1, 2}));
  // A spec file far over any spec's size is refused before it is read.
  const std::string big = (std::filesystem::temp_directory_path() / "qs_big_spec.yaml").string();
  ASSERT_TRUE(WriteFileAtomically(big, std::string(kMaxSpecBytes + 1, '#')).ok());
  auto refused = LoadSpecFile(big);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("over the limit"), std::string::npos);
  std::remove(big.c_str());
}

}  // namespace
}  // namespace qs::server
